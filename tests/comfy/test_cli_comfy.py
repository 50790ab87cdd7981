"""``python -m comfyui-scapre evaluate`` on two ComfyUI servers started here (same images on one or two servers, a
server killed mid-run, stop and resume, the page in Chromium)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import browser_support
import comfy_support
import pytest
from cli_support import CUSTOM_NODES, MODULE, _cli, _ctrl_c_as_at_a_terminal, _env

log = logging.getLogger("scapre.comfy_tests")

#: Every test here runs the command line, which loads a checkpoint in a process of its own: tests/run_all.sh runs
#: them apart from the in-process SD1.5 model, with the servers' tests. The erase commands are in
#: ``test_cli_erase_comfy.py``, which runs after this module: its tests load SD1.5 in-process after each command,
#: and the memory that leaves in the test process stays out of the two evaluate servers' way.
pytestmark = pytest.mark.cli


# ------------------------------------------------------------------------------------------------
# evaluate on two servers
# ------------------------------------------------------------------------------------------------

ROWS = [("an image of a cat", 11, "cat"), ("a photo of a dog", 12, "dog"), ("a cat on a sofa", 13, "cat"),
        ("a dog in a park", 14, "dog"), ("a cat in the snow", 15, "cat"), ("a dog on a beach", 16, "dog"),
        ("a sleeping cat", 17, "cat"), ("a running dog", 18, "dog")]
EVAL_ARGS = ("--steps", "1", "--cfg", "2.0", "--width", "64", "--height", "64", "-q")
#: The two servers keep the UNet's weights in float16 (ComfyUI casts them to float32 per layer on the CPU): about
#: 1.6 GB less each. The tests compare the servers' images with each other, never with a float32 run.
SERVER_ARGS = ("--fp16-unet",)


@pytest.fixture(scope="module")
def eval_world(sd15_ckpt_path, comfy_path, comfy_python, tmp_path_factory):
    """A LoRA erasing "cat" (made by the CLI) in a loras folder, a prompt CSV, and two ComfyUI servers that list
    the random SD1.5 checkpoint and the LoRA. ``world["start"](i)`` (re)starts server ``i``."""
    root = tmp_path_factory.mktemp("evaluate")
    loras = root / "loras"
    loras.mkdir()
    concepts = root / "concepts.txt"
    concepts.write_text("cat\n")
    lora = loras / "no_cat.safetensors"
    result = _cli(comfy_path, comfy_python, "erase", str(sd15_ckpt_path), "--concepts", str(concepts),
                  "--lora", str(lora), "-q", "--cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    prompts = root / "prompts.csv"
    prompts.write_text("case_number,prompt,class,evaluation_seed\n"
                       + "".join(f"{i},{p},{c},{s}\n" for i, (p, s, c) in enumerate(ROWS)))
    servers: list = [None, None]
    generation = [0]

    def start(i: int):
        generation[0] += 1
        server = comfy_support.ComfyServer(comfy_path, root / f"server{i}-{generation[0]}", python=comfy_python,
                                           model_dirs={"checkpoints": [sd15_ckpt_path.parent], "loras": [loras]},
                                           extra_args=SERVER_ARGS)
        servers[i] = server.start(timeout=300)
        return servers[i]

    world = {"root": root, "lora": lora, "prompts": prompts, "ckpt": sd15_ckpt_path.name, "servers": servers,
             "start": start}
    try:
        start(0), start(1)
        yield world
    finally:
        for server in servers:
            if server is not None:
                server.stop()


def _evaluate_args(world, out: Path, servers) -> list[str]:
    args = ["evaluate", "--base", world["ckpt"], "--edit", str(world["lora"]), "--prompts", str(world["prompts"]),
            "--out", str(out), *EVAL_ARGS]
    for server in servers:
        args += ["--server", server.base_url]
    return args


def _pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _records(out: Path) -> dict[int, dict]:
    return {json.loads(p.read_text())["row"]: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


@pytest.fixture(scope="module")
def two_server_run(eval_world, comfy_path, comfy_python):
    out = eval_world["root"] / "two"
    t0 = time.perf_counter()
    result = _cli(comfy_path, comfy_python, *_evaluate_args(eval_world, out, eval_world["servers"]))
    seconds = time.perf_counter() - t0
    log.info("evaluate, 2 servers: %d images in %.1f s (%.1f images/min)", 2 * len(ROWS), seconds,
             2 * len(ROWS) / seconds * 60)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout
    return out, result


def test_evaluate_same_images_on_one_or_two_servers(eval_world, two_server_run, comfy_path, comfy_python):
    two, result = two_server_run
    assert f"{len(ROWS)} of {len(ROWS)} prompt(s) rendered" in result.stdout
    one = eval_world["root"] / "one"
    t0 = time.perf_counter()
    single = _cli(comfy_path, comfy_python, *_evaluate_args(eval_world, one, eval_world["servers"][:1]))
    log.info("evaluate, 1 server: %d images in %.1f s", 2 * len(ROWS), time.perf_counter() - t0)
    assert single.returncode == 0, single.stderr[-3000:] + single.stdout
    records_two, records_one = _records(two), _records(one)
    assert sorted(records_two) == sorted(records_one) == list(range(len(ROWS)))
    assert {r["server"] for r in records_two.values()} == {s.base_url for s in eval_world["servers"]}
    for row in records_two:
        for name in ("original", "edited"):
            a, b = _pixels(two / records_two[row]["images"][name]), _pixels(one / records_one[row]["images"][name])
            assert a.shape == (64, 64, 3) and (a == b).all(), (row, name)
        assert records_two[row]["change"] == records_one[row]["change"]
        assert records_two[row]["kind"] == ("erased" if ROWS[row][2] == "cat" else "kept")
    results = json.loads((two / "results.json").read_text())
    assert results["erased"] == ["cat"] and results["rendered"] == len(ROWS)
    assert set(results["summary"]["per_concept"]) == {"cat", "dog"}
    assert results["summary"]["erasure"] is not None and results["summary"]["retention"] is not None
    assert (two / "results.csv").read_text().count("\n") == len(ROWS) + 1


def _finished(out: Path) -> int:
    return len(list((out / "records").glob("*.json"))) if (out / "records").is_dir() else 0


def test_evaluate_survives_a_server_dying_mid_run(eval_world, two_server_run, comfy_path, comfy_python):
    out = eval_world["root"] / "dying"
    servers = eval_world["servers"]
    proc = subprocess.Popen([comfy_python, "-m", MODULE, *_evaluate_args(eval_world, out, servers)],
                            cwd=CUSTOM_NODES, env=_env(comfy_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        while _finished(out) < 1:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        victim = servers[1]
        os.killpg(victim.process.pid, signal.SIGKILL)  # dies without a word, jobs queued on it
        stdout, stderr = proc.communicate(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
        servers[1].stop()
        eval_world["start"](1)  # a fresh second server for the tests after this one
    assert proc.returncode == 0, stderr[-3000:] + stdout
    assert f"server {victim.base_url} dropped out" in stdout
    records = _records(out)
    assert sorted(records) == list(range(len(ROWS)))  # every prompt once
    this_run = stdout.split("this run: ", 1)[1].splitlines()[0]
    assert sum(int(part.rsplit(" ", 1)[1]) for part in this_run.split(", ")) == len(ROWS)  # none done twice
    assert all((out / r["images"][n]).is_file() for r in records.values() for n in ("original", "edited"))
    reference = two_server_run[0]
    for record in records.values():
        assert (_pixels(out / record["images"]["edited"]) == _pixels(reference / record["images"]["edited"])).all()


def test_evaluate_stops_and_resumes_without_redoing(eval_world, comfy_path, comfy_python):
    out = eval_world["root"] / "resume"
    args = _evaluate_args(eval_world, out, eval_world["servers"][:1])
    proc = subprocess.Popen([comfy_python, "-m", MODULE, *args], cwd=CUSTOM_NODES, env=_env(comfy_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_at_a_terminal)
    while _finished(out) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr.strip().splitlines()[-1]
    assert not list(out.rglob("*.partial"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent.name in ("records",
                                                                                                    "images")}
    done = len(list((out / "records").glob("*.json")))
    assert 2 <= done < len(ROWS)

    rerun = _cli(comfy_path, comfy_python, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:] + rerun.stdout
    assert f"{len(ROWS)} of {len(ROWS)} prompt(s) rendered" in rerun.stdout
    this_run = rerun.stdout.split("this run: ", 1)[1].splitlines()[0]
    assert int(this_run.rsplit(" ", 1)[1]) == len(ROWS) - done  # only what was missing
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())  # finished work untouched
    assert sorted(_records(out)) == list(range(len(ROWS)))

    # a third run has nothing to do; other settings in the same folder are refused
    again = _cli(comfy_path, comfy_python, *args)
    assert again.returncode == 0 and "this run:" not in again.stdout
    other = _cli(comfy_path, comfy_python, *[a if a != "1" else "2" for a in args])
    assert other.returncode == 1 and "holds a run with other settings" in other.stderr


def test_evaluate_page_opens_in_chromium(two_server_run):
    problem = browser_support.browser_problem()
    if problem:
        pytest.skip(problem)
    out, _ = two_server_run
    with browser_support.open_page((out / "index.html").as_uri()) as (page, console):
        page.wait_for_function("() => [...document.images].every((i) => i.complete)", timeout=60000)
        images = page.evaluate("() => [...document.images].map((i) => [i.getAttribute('src'), i.naturalWidth])")
        assert len(images) == 2 * len(ROWS) and all(width == 64 for _, width in images), images
        assert page.evaluate("() => document.querySelectorAll('#per-class tr').length") == 3  # header + cat + dog
        assert page.evaluate("() => document.querySelectorAll('#summary td').length") == 6
        assert page.evaluate("() => document.querySelectorAll('svg.plot').length") == 2
        assert "cat" in page.inner_text("#per-class") and "erased" in page.inner_text("#per-class")
        assert not [line for line in console if "error" in line.lower() or "failed" in line.lower()], console
