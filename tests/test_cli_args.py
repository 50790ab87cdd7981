"""The command line (``python -m comfyui-scapre``) without ComfyUI: arguments, input files, the distributed runner
against small fake ComfyUI servers, and the results page. With ComfyUI: ``tests/comfy/test_cli_comfy.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from comfyui_scapre.nodes.cli import cli, html_page, inputs, runner
from comfyui_scapre.nodes.cli import evaluate_command as evaluate
from comfyui_scapre.scapre_core.evaluation import measures

ROOT = Path(__file__).resolve().parents[1]
#: The paper's evaluation CSVs (from the authors' repository), in the project's shared folder beside the checkout.
DATASETS = next((p for p in (ROOT.parent / "shared" / "datasets", Path("/work/shared/datasets")) if p.is_dir()),
                ROOT.parent / "shared" / "datasets")


def _dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.skip(f"the paper's {name} is not at {path} (the project's shared/datasets beside the checkout)")
    return path

#: ``python -m <folder>`` runs the pack as ComfyUI users do from ``custom_nodes``: a folder holding a link to it.
LINK_NAME = "comfyui-scapre"


@pytest.fixture(scope="session")
def custom_nodes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("custom_nodes")
    (folder / LINK_NAME).symlink_to(ROOT, target_is_directory=True)
    return folder


@pytest.fixture
def run_cli(custom_nodes):
    def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", LINK_NAME, *args], cwd=custom_nodes, capture_output=True,
                              text=True, env=env, timeout=120)
    return _cli


# ------------------------------------------------------------------------------------------------
# arguments: one line, exit code 2, before anything heavy
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def ckpt(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not really")
    return path


@pytest.fixture
def concepts(tmp_path) -> Path:
    path = tmp_path / "concepts.txt"
    path.write_text("cat\n# a comment\n\ngolden retriever\n")
    return path


def _bad_erase_cases(ckpt: Path, concepts: Path, tmp: Path) -> list[tuple[list[str], str]]:
    settings = tmp / "s.json"
    settings.write_text('{"pp": 1}')
    no_class = tmp / "p.csv"
    no_class.write_text("prompt,evaluation_seed\na cat,1\n")
    broken = tmp / "b.json"
    broken.write_text("{")
    out = str(tmp / "o.safetensors")
    return [
        (["erase", str(ckpt), "--out", out], "the following arguments are required: --concepts"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", out, "--preset", "huge"],
         "argument --preset: invalid choice: 'huge'"),
        (["erase", str(ckpt), "--concepts", str(concepts)], "nothing to write"),
        (["erase", str(tmp / "missing.safetensors"), "--concepts", str(concepts), "--out", out], "is not a file"),
        (["erase", str(ckpt), "--concepts", str(tmp / "none.txt"), "--out", out], "cannot read"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", str(tmp / "o.ckpt")], "must end in .safetensors"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", str(tmp / "no" / "o.safetensors")],
         "does not exist"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--lora", out, "--rank", "-1"], "--rank must be"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", out, "--rank", "4"], "--rank applies to --lora"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", out, "--strength", "-1"], "strength"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", out, "--settings", str(settings)],
         "unknown setting(s) ['pp']"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", out, "--settings", str(broken)], "is not JSON"),
        (["erase", str(ckpt), "--concepts", str(no_class), "--out", out], "no 'class' column"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--lora", out, "--dtype", "fp16"],
         "--dtype applies to --out"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", out, "--dtype", "fp8"],
         "argument --dtype: invalid choice: 'fp8'"),
        (["erase", str(ckpt), "--concepts", str(concepts), "--out", out, "--comfyui", str(tmp)],
         "is not a ComfyUI folder"),
        (["evaluate", "--base", "a", "--edit", "b", "--prompts", "p.csv", "--out", "o"],
         "the following arguments are required: --server"),
        (["evaluate", "--server", "ftp://x", "--base", "a", "--edit", "b", "--prompts", "p.csv", "--out", "o"],
         "not a server URL"),
        (["evaluate", "--server", "http://127.0.0.1:1", "--base", "a", "--edit", "b",
          "--prompts", str(concepts), "--out", str(tmp / "o")], "lacks column(s) ['prompt', 'evaluation_seed']"),
        (["evaluate", "--server", "http://127.0.0.1:1", "--base", "a", "--edit", "b", "--width", "60",
          "--prompts", str(no_class), "--out", str(tmp / "o")], "multiples of 8"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]


def _main(capsys, args) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_arguments_give_one_line_and_exit_code_2(ckpt, concepts, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    for args, message in _bad_erase_cases(ckpt, concepts, tmp_path):
        code, out, err = _main(capsys, args)
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and message in lines[0], (args, err)
        assert lines[0].startswith("python -m comfyui_scapre"), lines[0]  # the package name
        assert not out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "concepts.txt", "model.safetensors", "p.csv",
                                                          "s.json"]


def test_without_a_comfyui_the_message_says_how_to_give_one(ckpt, concepts, tmp_path, run_cli):
    """Through the real entry point (``python -m comfyui-scapre`` from a custom_nodes folder outside ComfyUI)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "COMFYUI_PATH"}
    result = run_cli("erase", str(ckpt), "--concepts", str(concepts), "--out", str(tmp_path / "o.safetensors"), env=env)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.strip() == ("python -m comfyui-scapre erase: error: no ComfyUI install given: pass "
                                     "--comfyui PATH or set COMFYUI_PATH (the folder with ComfyUI's main.py)")


def test_help_lists_the_presets(capsys):
    code, out, _ = _main(capsys, ["erase", "--help"])
    assert code == 0
    for name in ("few-objects", "many-objects", "artists", "explicit", "uce", "custom"):
        assert name in out


def test_saved_dtypes_follow_the_loaded_checkpoint_unless_told(tmp_path):
    """--out keeps each tensor's dtype in the input file (keys it lacks: its part's usual dtype)."""
    import torch
    from comfyui_scapre.nodes.cli import erase_command
    from safetensors.torch import save_file

    source = tmp_path / "in.safetensors"
    save_file({"model.diffusion_model.a": torch.zeros(2, dtype=torch.float16),
               "model.diffusion_model.b": torch.zeros(2, dtype=torch.float16),
               "model.diffusion_model.c": torch.zeros(2, dtype=torch.float32),
               "first_stage_model.x": torch.zeros(2, dtype=torch.float32),
               "alphas_cumprod": torch.zeros(2, dtype=torch.float64)}, str(source))
    f32 = torch.zeros(2)
    same = erase_command.saved_dtypes(source)
    assert same("model.diffusion_model.a", f32) == torch.float16
    assert same("model.diffusion_model.c", f32) == torch.float32
    assert same("model.diffusion_model.new", f32) == torch.float16  # the UNet's usual dtype
    assert same("first_stage_model.y", f32) == torch.float32
    assert same("alphas_cumprod", f32) == torch.float64
    assert same("model.diffusion_model.a", torch.zeros(2, dtype=torch.int64)) == torch.int64  # not floating
    bf16 = erase_command.saved_dtypes(source, "bf16")
    assert bf16("first_stage_model.x", f32) == torch.bfloat16
    assert bf16("k", torch.zeros(1, dtype=torch.int32)) == torch.int32


def test_without_an_accelerator_the_cpu_is_chosen(monkeypatch):
    import importlib.util

    import torch
    from comfyui_scapre.nodes.cli import host

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch_npu", "torch_mlu") else real_find_spec(name, *a))
    assert host.accelerator_available() is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert host.accelerator_available() is True


# ------------------------------------------------------------------------------------------------
# input files
# ------------------------------------------------------------------------------------------------

def test_concepts_from_the_papers_csvs_are_the_distinct_classes_in_order():
    text = inputs.read_concepts(_dataset("imagenette.csv"))
    assert text.splitlines() == ["tench", "English springer", "cassette player", "chain saw", "church",
                                 "French horn", "garbage truck", "gas pump", "golf ball", "parachute"]
    assert len(inputs.read_concepts(_dataset("art_50.csv")).splitlines()) == 50
    assert len(inputs.read_concepts(_dataset("imagenet-50.csv")).splitlines()) == 50


def test_concepts_from_text_and_csv_columns(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\ufeff# erase these\nVan Gogh\n\n  Claude Monet  \n")
    assert inputs.read_concepts(path) == "Van Gogh\nClaude Monet"
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("name,other\ncat,1\ndog,2\ncat,3\n")
    assert inputs.read_concepts(csv_path, "name") == "cat\ndog"
    with pytest.raises(inputs.InputError, match="no column 'x'"):
        inputs.read_concepts(csv_path, "x")
    (tmp_path / "comma.csv").write_text("class\n\"a, b\"\n")
    with pytest.raises(inputs.InputError, match="contains a comma"):
        inputs.read_concepts(tmp_path / "comma.csv")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(inputs.InputError, match="names no concepts"):
        inputs.read_concepts(tmp_path / "empty.txt")


def test_prompts_csv(tmp_path):
    rows = inputs.read_prompts(_dataset("art_5.csv"))
    assert len(rows) == 100 and rows[0].prompt == "Image in the style of Van Gogh" and rows[0].seed == 1089
    assert rows[0].cls == "Van Gogh" and rows[5].index == 5
    coco = inputs.read_prompts(_dataset("coco_30k.csv"))
    assert coco[0].cls == "" and coco[0].seed == 41337
    (tmp_path / "bad.csv").write_text("prompt,evaluation_seed\na cat,x\n")
    with pytest.raises(inputs.InputError, match="row 2: evaluation_seed 'x' is not an integer"):
        inputs.read_prompts(tmp_path / "bad.csv")


# ------------------------------------------------------------------------------------------------
# workflows
# ------------------------------------------------------------------------------------------------

SAMPLING = {"steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "width": 64, "height": 64,
            "negative": ""}


def test_workflow_renders_original_and_edited_with_the_same_seed():
    row = inputs.PromptRow(index=3, prompt="a cat", seed=42, cls="cat")
    prompt, outputs = evaluate.build_prompt(row, "base.safetensors", "edit.safetensors", "lora", SAMPLING, "t")
    assert outputs == {"original": "7", "edited": "17"}
    assert prompt["11"] == {"class_type": "LoraLoaderModelOnly",
                            "inputs": {"model": ["1", 0], "lora_name": "edit.safetensors", "strength_model": 1.0}}
    for ks, model in (("5", ["1", 0]), ("15", ["11", 0])):
        assert prompt[ks]["inputs"]["seed"] == 42 and prompt[ks]["inputs"]["model"] == model
    assert prompt["7"]["inputs"]["filename_prefix"] == "scapre_eval/t/00003_original"
    ckpt, _ = evaluate.build_prompt(row, "base.safetensors", "edit.safetensors", "checkpoint", SAMPLING, "t")
    assert ckpt["11"]["class_type"] == "CheckpointLoaderSimple" and ckpt["12"]["inputs"]["clip"] == ["11", 1]


def test_kind_of_a_row():
    row = inputs.PromptRow(index=0, prompt="an image of a tench", seed=1, cls="tench")
    assert evaluate.kind_of(row, ("Tench",)) == "erased"
    assert evaluate.kind_of(row, ("church",)) == "kept"
    assert evaluate.kind_of(inputs.PromptRow(0, "a photo of Van  Gogh's room", 1, ""), ("van gogh",)) == "erased"


def _safetensors_with(path: Path, metadata: dict[str, str] | None) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_x.diff": torch.zeros(1)}, str(path), metadata=metadata)
    return path


def test_evaluate_reads_every_metadata_layout_the_pack_has_written(tmp_path):
    """0.3.0's one ``scapre`` entry; 0.2.0's ScaPre Save Checkpoint entry (no ``format``, concepts per edit) and
    its ``scapre.*`` keys (LoRA and command line); a file without any: the ``.scapre.json`` next to it."""
    from comfyui_scapre.nodes.glue import payloads

    now = {"scapre": json.dumps({"format": "scapre-metadata/1", "pack": "comfyui-scapre", "version": "0.3.0",
                                 "concepts": ["cat", "dog"], "guides": [""], "edits": []})}
    node_020 = {"scapre": json.dumps({"pack": "comfyui-scapre", "version": "0.2.0",
                                      "edits": [{"concepts": ["cat"]}, {"concepts": ["dog"]}]})}
    keys_020 = {"scapre.pack": "comfyui-scapre", "scapre.version": "0.2.0", "scapre.concepts": '["cat", "dog"]',
                "scapre.rank": "0"}
    for name, metadata in (("now", now), ("node_020", node_020), ("keys_020", keys_020)):
        assert payloads.read_provenance(metadata)["concepts"] == ["cat", "dog"], name
        path = _safetensors_with(tmp_path / f"{name}.safetensors", metadata)
        assert evaluate._edit_info(str(path)) == (path.name, "lora", ("cat", "dog")), name
    assert payloads.read_provenance({"modelspec.title": "x"}) is None
    bare = _safetensors_with(tmp_path / "bare.safetensors", None)  # e.g. saved with --disable-metadata
    assert evaluate._edit_info(str(bare))[2] == ()
    (tmp_path / "bare.scapre.json").write_text(json.dumps({"format": "scapre-report-bundle/1",
                                                           "edits": [{"concepts": ["tench"]}]}))
    assert evaluate._edit_info(str(bare))[2] == ("tench",)


# ------------------------------------------------------------------------------------------------
# the runner against fake ComfyUI servers
# ------------------------------------------------------------------------------------------------

class FakeComfy:
    """Enough of ComfyUI's HTTP API for the runner: /prompt, /history/<id>, /view, /queue. Prompts run one at a
    time, in order, when ``gate`` allows; the image of node N is ``<text of the prompt's "key">:N``.
    ``die_after`` queued prompts, the server stops answering with those prompts unfinished."""

    def __init__(self, die_after: int | None = None, real_images: bool = False) -> None:
        self.real_images = real_images
        self.queue: list[tuple[str, dict]] = []
        self.history: dict[str, dict] = {}
        self.ran: list[str] = []
        self.accepted = 0
        self.die_after = die_after
        self.lock = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, kind="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/prompt":
                    if "bad" in body["prompt"]:
                        return self._send(400, {"error": {"message": "Prompt outputs failed validation"},
                                                "node_errors": {"1": {"class_type": "X", "errors": [
                                                    {"message": "bad value", "details": "nope"}]}}})
                    pid = uuid.uuid4().hex
                    with fake.lock:
                        fake.queue.append((pid, body["prompt"]))
                        fake.accepted += 1
                        fake.lock.notify_all()
                        if fake.die_after is not None and fake.accepted >= fake.die_after:
                            threading.Thread(target=fake.kill).start()
                    return self._send(200, {"prompt_id": pid, "number": fake.accepted, "node_errors": {}})
                if self.path == "/queue":
                    with fake.lock:
                        fake.queue = [(p, q) for p, q in fake.queue if p not in body.get("delete", [])]
                    return self._send(200, {})
                return self._send(404, {})

            def do_GET(self):
                url = urlparse(self.path)
                if url.path.startswith("/history/"):
                    pid = url.path.rsplit("/", 1)[1]
                    with fake.lock:
                        entry = fake.history.get(pid)
                    return self._send(200, {pid: entry} if entry else {})
                if url.path == "/view":
                    name = parse_qs(url.query)["filename"][0]
                    return self._send(200, fake.png(name) if fake.real_images else name.encode(), "image/png")
                if url.path.startswith("/object_info/"):
                    node = url.path.rsplit("/", 1)[1]
                    names = {"CheckpointLoaderSimple": ("ckpt_name", ["base.safetensors"]),
                             "LoraLoaderModelOnly": ("lora_name", ["edit.safetensors"])}
                    if node not in names:
                        return self._send(200, {})
                    field, options = names[node]
                    return self._send(200, {node: {"input": {"required": {field: [options, {}]}}}})
                return self._send(404, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.gate = threading.Event()
        self.gate.set()
        self.alive = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._execute, daemon=True).start()

    def _execute(self):
        while self.alive:
            with self.lock:
                while self.alive and not self.queue:
                    self.lock.wait(0.05)
                if not self.alive:
                    return
            self.gate.wait()
            with self.lock:
                if not self.alive or not self.queue:
                    continue
                pid, prompt = self.queue.pop(0)
                key = prompt["key"]["text"] if "key" in prompt else prompt["2"]["inputs"]["text"]
                self.ran.append(key)
                outputs = {node: {"images": [{"filename": f"{key}:{node}", "subfolder": "", "type": "output"}]}
                           for node in ("7", "17")}
                if key == "fails":
                    self.history[pid] = {"status": {"status_str": "error", "completed": False, "messages": [
                        ["execution_error", {"node_type": "KSampler", "exception_message": "boom"}]]}, "outputs": {}}
                else:
                    self.history[pid] = {"status": {"status_str": "success", "completed": True, "messages": []},
                                         "outputs": outputs}

    @staticmethod
    def png(name: str) -> bytes:
        """A 16x16 PNG determined by ``name``: the "edited" image differs from the "original" one only when the
        prompt mentions a cat."""
        import hashlib
        import io

        from PIL import Image

        prompt, node = name.rsplit(":", 1)
        seed = hashlib.sha256((prompt + (":edited" if node == "17" and "cat" in prompt else "")).encode()).digest()
        image = Image.frombytes("RGB", (16, 16), (seed * 25)[: 16 * 16 * 3])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def kill(self):
        with self.lock:
            self.alive = False
            self.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


def _jobs(keys):
    return [runner.Job(key=k, prompt={"key": {"text": k}}, outputs={"original": "7", "edited": "17"}) for k in keys]


def _run(servers, keys, **kw):
    done, failed = {}, {}

    def on_done(job, images, url):
        assert job.key not in done, "on_done called twice for one job"
        done[job.key] = (images, url)

    r = runner.Runner([runner.Server(s.url) for s in servers], on_done, lambda job, msg: failed.update({job.key: msg}),
                      poll=0.01, retry_wait=0.05, **kw)
    r.run(_jobs(keys))
    return r, done, failed


def test_runner_spreads_jobs_and_keeps_queues_short():
    a, b = FakeComfy(), FakeComfy()
    try:
        keys = [f"job{i}" for i in range(12)]
        r, done, failed = _run([a, b], keys, depth=2)
        assert sorted(done) == sorted(keys) and not failed
        for key, (images, _) in done.items():
            assert images == {"original": [f"{key}:7".encode()], "edited": [f"{key}:17".encode()]}
        assert sorted(a.ran + b.ran) == sorted(keys)  # each ran once
        assert a.ran and b.ran and sum(r.done_by.values()) == 12
    finally:
        a.kill(), b.kill()


def test_runner_hands_a_dead_servers_jobs_to_the_others():
    dying, healthy = FakeComfy(die_after=3), FakeComfy()
    dying.gate.clear()  # it accepts prompts but never finishes one before it dies
    try:
        keys = [f"job{i}" for i in range(10)]
        r, done, failed = _run([dying, healthy], keys, depth=3, retries=2)
        assert sorted(done) == sorted(keys) and not failed
        assert all(url == healthy.url for _, url in done.values())
        assert sorted(healthy.ran) == sorted(keys) and dying.ran == []
        assert list(r.gone) == [runner.Server(dying.url).url]
    finally:
        healthy.kill()


def test_runner_reports_failed_and_rejected_jobs_once():
    a = FakeComfy()
    try:
        jobs = [*_jobs(["ok", "fails"]), runner.Job(key="bad", prompt={"bad": {}}, outputs={"original": "7"})]
        done, failed = {}, {}
        r = runner.Runner([runner.Server(a.url)], lambda j, i, u: done.update({j.key: i}),
                          lambda j, m: failed.update({j.key: m}), poll=0.01)
        r.run(jobs)
        assert set(done) == {"ok"}
        assert failed["fails"] == "KSampler: boom"
        assert "bad value" in failed["bad"]
    finally:
        a.kill()


def test_runner_gives_up_when_every_server_is_gone():
    dead = FakeComfy()
    dead.kill()
    with pytest.raises(RuntimeError, match=r"every server is gone.*rerun the same command to resume"):
        _run([dead], ["a", "b"], retries=2)


# ------------------------------------------------------------------------------------------------
# results page
# ------------------------------------------------------------------------------------------------

def test_page_has_tables_plots_and_relative_images():
    records = [{"row": i, "prompt": f"p{i} <b>", "evaluation_seed": i, "class": c, "kind": k, "change": ch,
                "server": "s", "images": {"original": f"images/{i:05d}_original.png",
                                          "edited": f"images/{i:05d}_edited.png"}}
               for i, (c, k, ch) in enumerate([("cat", "erased", 0.8), ("cat", "erased", 0.6), ("dog", "kept", 0.1)])]
    summary = measures.summarize(
        [{"prompt": r["prompt"], "kind": r["kind"], "change": r["change"], "concept": r["class"]} for r in records])
    page = html_page.render({"edit": "e.safetensors", "base": "b.safetensors", "edit_kind": "lora", "rendered": 3,
                             "prompts": 3, "erased": ["cat"], "sampling": SAMPLING, "summary": summary,
                             "records": records, "failed": {}})
    assert "<table id='summary'>" in page and "<table id='per-class'>" in page and page.count("<svg") == 2
    assert "images/00002_edited.png" in page and "p0 &lt;b&gt;" in page and "<b>0.700</b>" not in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from the network


# ------------------------------------------------------------------------------------------------
# evaluate end to end against fake servers (the real ones: tests/comfy/test_cli_comfy.py)
# ------------------------------------------------------------------------------------------------

def test_evaluate_end_to_end_with_resume(tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,evaluation_seed,class\na cat,1,cat\na dog,2,dog\nanother cat,3,cat\na car,4,car\n")
    a, b = FakeComfy(real_images=True), FakeComfy(real_images=True)
    out = tmp_path / "out"
    args = ["evaluate", "--server", a.url, "--server", b.url, "--base", "base.safetensors", "--edit",
            "edit.safetensors", "--erased", "cat", "--prompts", str(prompts), "--out", str(out), "-q"]
    try:
        code, stdout, err = _main(capsys, args)
        assert code == 0, err
        assert "4 of 4 prompt(s) rendered" in stdout and "this run: " in stdout
        results = json.loads((out / "results.json").read_text())
        changes = {r["class"]: r["change"] for r in results["records"]}
        assert changes["dog"] == 0.0 and changes["car"] == 0.0 and changes["cat"] > 0.1
        assert results["summary"]["erasure"] > 0.1 and results["summary"]["retention"] == 1.0
        assert {r["kind"] for r in results["records"] if r["class"] == "cat"} == {"erased"}
        assert (out / "index.html").is_file() and len(list((out / "images").glob("*.png"))) == 8
        # a rerun renders nothing; removing one record renders exactly that row again
        mtimes = {p: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
        (out / "records" / "00001.json").unlink()
        code, stdout, _ = _main(capsys, args)
        assert code == 0 and "this run: " in stdout
        assert sum(int(x.rsplit(" ", 1)[1]) for x in stdout.split("this run: ")[1].splitlines()[0].split(", ")) == 1
        assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items() if p.name != "00001.json")
        # other settings in the same folder are refused
        code, _, err = _main(capsys, [*args, "--steps", "3"])
        assert code == 1 and "holds a run with other settings (differs in ['sampling'])" in err
        # an edit no server lists
        code, _, err = _main(capsys, [*args[:8], "missing.safetensors", *args[9:]])
        assert code == 1 and "lists no checkpoint or LoRA named 'missing.safetensors'" in err
    finally:
        a.kill(), b.kill()
