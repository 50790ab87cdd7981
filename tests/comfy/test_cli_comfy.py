"""``python -m comfyui-scapre`` against a real ComfyUI: ``erase`` on the random SD1.5 and SDXL-family checkpoints (the
saved edit equals the nodes' edit; Ctrl-C leaves nothing), ``evaluate`` on two ComfyUI servers started here
(same images on one or two servers, a server killed mid-run, stop and resume, the page in Chromium)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import browser_support
import comfy_support
import pytest

log = logging.getLogger("scapre.comfy_tests")

#: Every test here runs the command line, which loads a checkpoint in a process of its own: tests/run_all.sh runs
#: them apart from the in-process SD1.5 model (with the servers' tests; the SDXL-family one with the sdxl tests), and
#: a test that needs the model in-process too loads it after the command (``sd15_own``), not beside it.
pytestmark = pytest.mark.cli

CONCEPTS = "cat\ngolden retriever\n"


def _custom_nodes() -> Path:
    """A ``custom_nodes`` folder holding the pack (a link named as ComfyUI users clone it): the command's cwd."""
    folder = Path(tempfile.gettempdir()) / f"scapre-cli-custom-nodes-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    comfy_support.make_pack_link(folder)
    return folder


CUSTOM_NODES = _custom_nodes()
MODULE = comfy_support.PACK_LINK_NAME  # python -m <the pack's folder name>


def _env(comfy_path: Path) -> dict:
    return dict(os.environ, COMFYUI_PATH=str(comfy_path), PYTHONUNBUFFERED="1")


def _cli(comfy_path: Path, python: str, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    result = subprocess.run([python, "-m", MODULE, *args], cwd=CUSTOM_NODES, env=_env(comfy_path),
                            capture_output=True, text=True, timeout=timeout)
    log.info("python -m comfyui-scapre %s: exit %d in %.1f s", args[0], result.returncode, time.perf_counter() - t0)
    return result


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child: SIGINT raises KeyboardInterrupt, as at a terminal. A test suite started in the background
    by a shell (``cmd &``) inherits SIGINT ignored, and a Ctrl-C test would then see the command run on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _core(c):
    import sys

    return sys.modules[c.pack_module().__name__ + ".scapre_core"]


def _node_edit(c, model, clip, preset="custom", settings=None, **encode):
    """The nodes' edit: ScaPre Concept Encode + ScaPre Erase (preset, or ScaPre Settings), as a workflow does."""
    args = dict(concept_type="object", expand_templates=False, templates="", guide="", preserve="", probes="")
    args.update(encode)
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts=CONCEPTS, **args)
    extra = {}
    if settings is not None:
        (extra["settings"],) = c.run_node("ScaPreSettings", **settings)
    edited = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset=preset, strength=1.0, seed=0,
                        **extra)[0]
    return edited, edited.model_options["scapre_edits"][-1].diffs


def _lora_diffs(c, path: Path) -> dict:
    from safetensors.torch import load_file

    lora = sys.modules[c.pack_module().__name__ + ".nodes.glue.lora_file"]
    tensors = load_file(str(path))
    names = {}
    for key in tensors:
        assert key.endswith(".diff"), key
        names[key[: -len(".diff")]] = tensors[key]
    return names, lora.lora_name


def _assert_same_as_lora(c, diffs: dict, lora_path: Path) -> None:
    import torch

    tensors, lora_name = _lora_diffs(c, lora_path)
    assert set(tensors) == {lora_name(k) for k in diffs}
    for key, diff in diffs.items():
        assert torch.equal(tensors[lora_name(key)], diff.float()), key


# ------------------------------------------------------------------------------------------------
# erase
# ------------------------------------------------------------------------------------------------

def test_erase_lora_equals_the_node_edit_sd15(request, scapre_nodes, sd15_ckpt_path, comfy_path, comfy_python,
                                              tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text(CONCEPTS)
    lora = tmp_path / "no_cats.safetensors"
    result = _cli(comfy_path, comfy_python, "erase", str(sd15_ckpt_path), "--concepts", str(concepts),
                  "--lora", str(lora), "--preset", "artists", "--cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote LoRA {lora} (32 matrices, exact)" in result.stdout
    assert "erase" in result.stderr  # the progress bar
    model, clip, _ = request.getfixturevalue("sd15_own")  # after the command: one SD1.5 in RAM at a time
    _, diffs = _node_edit(scapre_nodes, model, clip, preset="artists")
    _assert_same_as_lora(scapre_nodes, diffs, lora)
    report = json.loads(lora.with_name("no_cats.scapre.json").read_text())
    assert report["edits"][0]["concepts"] == ["cat", "golden retriever"]
    assert report["edits"][0]["config"] == _core(scapre_nodes).presets.preset_config("artists").to_dict()
    weights = report["edits"][0]["report"]["info"]["weights"]  # the model's format and the surviving fraction
    assert (weights["format"], weights["methods"]) == ("float32", "patch")
    assert weights["surviving"] == pytest.approx(1.0, abs=1e-6) and weights["error"] < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["concepts.txt", "no_cats.safetensors", "no_cats.scapre.json"]


def test_erase_checkpoint_from_a_csv_with_settings_equals_the_node_edit(request, scapre_nodes, sd15_ckpt_path,
                                                                        comfy_path, comfy_python, tmp_path):
    """A paper CSV's class column as the concepts and a settings JSON over a preset; the checkpoint holds
    original + edit on exactly the K/V weights and the original everywhere else."""
    import torch
    from safetensors import safe_open

    csv_path = tmp_path / "classes.csv"
    csv_path.write_text("case_number,prompt,class,evaluation_seed\n0,an image of a cat,cat,1\n"
                        "1,a photo of a cat,cat,2\n2,an image of a golden retriever,golden retriever,3\n")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"p": 6.0, "ased": True, "edit": "values only"}))
    out = tmp_path / "edited.safetensors"
    # no --cpu: on this machine without a GPU the command picks the CPU itself and says so
    result = _cli(comfy_path, comfy_python, "erase", str(sd15_ckpt_path), "--concepts", str(csv_path),
                  "--out", str(out), "--preset", "many-objects", "--settings", str(settings), "--seed", "4", "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU found: running on the CPU" in result.stderr
    assert "erase:" not in result.stderr and "%|" not in result.stderr  # -q: no progress bars
    assert "ScaPre Erase:" not in result.stderr  # nor our info lines (ComfyUI's own warnings may remain)
    model, clip, _ = request.getfixturevalue("sd15_own")  # after the command: one SD1.5 in RAM at a time
    values = {**_core(scapre_nodes).presets.preset_config("many-objects", 1.0, 4).to_dict(), "p": 6.0, "ased": True}
    _, diffs = _node_edit(scapre_nodes, model, clip, settings={"edit": "values only", **values})
    assert len(diffs) == 16 and all(k.endswith("to_v.weight") for k in diffs)
    entries = model.get_key_patches("diffusion_model.")
    with safe_open(str(sd15_ckpt_path), "pt") as src:
        source_dtypes = {k: src.get_slice(k).get_dtype() for k in src.keys()}
    with safe_open(str(out), "pt") as fh:
        recorded = json.loads(fh.metadata()["scapre"])
        assert recorded["format"] == "scapre-metadata/1" and recorded["concepts"] == ["cat", "golden retriever"]
        assert recorded["edits"][0]["used"]["source"] == "command line"
        saved_dtypes = {k: fh.get_slice(k).get_dtype() for k in fh.keys()}
        for key, diff in diffs.items():
            original = entries[key][0][0].float()
            saved = fh.get_tensor("model." + key)
            assert saved.dtype == torch.float16, key  # the checkpoint's own dtype, not ComfyUI's CPU float32
            assert torch.equal(saved, (original + diff).half()), key
        for key in [k.replace("to_v", "to_k") for k in list(diffs)[:2]] + [next(iter(diffs)).replace("to_v", "to_q")]:
            assert torch.equal(fh.get_tensor("model." + key).float(), entries[key][0][0].float()), key
    shared = set(source_dtypes) & set(saved_dtypes)
    assert len(shared) > 0.9 * len(source_dtypes)
    assert [k for k in shared if source_dtypes[k] != saved_dtypes[k]] == []
    assert out.stat().st_size < 1.1 * sd15_ckpt_path.stat().st_size  # 2.0 GiB in, not 4 GiB of float32 out
    out.unlink()


def test_erase_lora_on_the_sdxl_family(request, scapre_nodes, vega_ckpt_path, comfy_path, comfy_python, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text(CONCEPTS)
    lora = tmp_path / "vega.safetensors"
    result = _cli(comfy_path, comfy_python, "erase", str(vega_ckpt_path), "--concepts", str(concepts),
                  "--lora", str(lora), "--preset", "explicit", "-q", "--cpu")  # the CLI first: one SDXL in RAM
    assert result.returncode == 0, result.stderr[-3000:]
    model, clip, _ = request.getfixturevalue("vega_loaded")
    _, diffs = _node_edit(scapre_nodes, model, clip, preset="explicit")
    assert len(diffs) == 30
    _assert_same_as_lora(scapre_nodes, diffs, lora)


def test_ctrl_c_leaves_no_file(sd15_ckpt_path, comfy_path, comfy_python, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text(CONCEPTS)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([comfy_python, "-m", MODULE, "erase", str(sd15_ckpt_path), "--concepts", str(concepts),
                             "--out", str(out_dir / "c.safetensors"), "--lora", str(out_dir / "l.safetensors"),
                             "--cpu"], cwd=CUSTOM_NODES, env=_env(comfy_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_at_a_terminal)
    seen = bytearray()
    started = threading.Event()

    def read() -> None:
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            seen.extend(chunk)
            if b"erase:" in seen:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(900), seen.decode(errors="replace")[-3000:]
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends; the edit is under way, nothing is written yet
    code = proc.wait(600)
    reader.join(10)
    text = seen.decode(errors="replace")
    assert code == 130, text[-3000:]
    assert text.strip().splitlines()[-1].endswith("interrupted; no partial file was left")
    assert list(out_dir.iterdir()) == []


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
