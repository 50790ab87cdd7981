"""``python -m comfyui-scapre evaluate``: render a prompt CSV with the original and the edited model on running
ComfyUI servers and measure, per prompt, per class and pooled, how much the edit changed the images.

One job per prompt row renders both images (the original and the edited model in one workflow, so a
server keeps both models loaded). Finished rows are written as they arrive (``images/<row>_original.png``,
``images/<row>_edited.png``, ``records/<row>.json``); a rerun of the same command skips them. The
measures are :mod:`scapre_core.measures` (the same as ScaPre Compare's)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...scapre_core.prompts import normalize, split_items
from ..glue.payloads import read_provenance
from .inputs import InputError, PromptRow, read_prompts
from .runner import Job, PromptRejected, Runner, Server, ServerDown

log = logging.getLogger("scapre")

RUN_FILE = "run.json"
ORIGINAL, EDITED = "original", "edited"


class UsageError(ValueError):
    """A bad argument (exit code 2)."""


class EvaluateError(RuntimeError):
    """The evaluation could not run or finish (exit code 1)."""


@dataclass(frozen=True)
class EvalPlan:
    servers: list[Server]
    base: str
    edit_name: str
    edit_kind: str | None  # "lora" / "checkpoint" from the local file, or None (decided by the servers)
    erased: tuple[str, ...]
    rows: list[PromptRow]
    prompts_file: Path
    out: Path
    sampling: dict[str, Any]
    depth: int
    timeout: float


# ------------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------------

def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > 100_000_000:
            raise ValueError("header too large")
        return json.loads(fh.read(size))


def _edit_info(value: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(name the servers know it by, kind from the file when it is local, erased concepts from its metadata)."""
    path = Path(value).expanduser()
    if not path.is_file():
        return Path(value).name if "/" in value or os.sep in value else value, None, ()
    try:
        header = _safetensors_header(path)
    except (OSError, ValueError, struct.error) as err:
        raise UsageError(f"--edit {value!r} is not a safetensors file: {err}") from None
    keys = [k for k in header if k != "__metadata__"]
    lora = any(k.startswith(("lora_", "lycoris_")) or k.endswith((".diff", ".lora_up.weight")) for k in keys)
    found = read_provenance(header.get("__metadata__")) or _report_next_to(path)
    erased = tuple(str(c) for c in (found or {}).get("concepts", []))
    return path.name, "lora" if lora else "checkpoint", erased


def _report_next_to(path: Path) -> dict[str, Any] | None:
    """The concepts of the ``.scapre.json`` report saved next to ``path``, for a file without the pack's
    metadata entry (ComfyUI's ``--disable-metadata`` drops it from checkpoints)."""
    report = path.with_name(path.name.removesuffix(".safetensors") + ".scapre.json")
    try:
        bundle = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    edits = bundle.get("edits", []) if isinstance(bundle, dict) else []
    return {"concepts": [c for e in edits if isinstance(e, dict) for c in e.get("concepts", [])]}


def prepare(args) -> EvalPlan:
    """Check the arguments (nothing contacted yet); raise :class:`UsageError` naming the problem."""
    servers = []
    for url in args.server:
        try:
            servers.append(Server(url))
        except ValueError as err:
            raise UsageError(str(err)) from None
    if len({s.url for s in servers}) != len(servers):
        raise UsageError("the same --server is given twice")
    for name, low in (("steps", 1), ("width", 16), ("height", 16), ("depth", 1)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.width % 8 or args.height % 8:
        raise UsageError(f"--width and --height must be multiples of 8, got {args.width}x{args.height}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    try:
        rows = read_prompts(args.prompts)
    except InputError as err:
        raise UsageError(str(err)) from None
    if args.limit is not None:
        rows = rows[: args.limit]
    out = Path(args.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file, not a folder")
    if not out.parent.is_dir():
        raise UsageError(f"--out folder's parent {str(out.parent)!r} does not exist")
    edit_name, kind, erased = _edit_info(args.edit)
    if args.erased is not None:
        erased = tuple(split_items(args.erased))
    sampling = {"steps": args.steps, "cfg": args.cfg, "sampler_name": args.sampler, "scheduler": args.scheduler,
                "width": args.width, "height": args.height, "negative": args.negative}
    return EvalPlan(servers=servers, base=args.base, edit_name=edit_name, edit_kind=kind, erased=erased,
                    rows=rows, prompts_file=Path(args.prompts).resolve(), out=out, sampling=sampling,
                    depth=args.depth, timeout=args.timeout)


# ------------------------------------------------------------------------------------------------------
# workflows
# ------------------------------------------------------------------------------------------------------

def build_prompt(row: PromptRow, base: str, edit_name: str, edit_kind: str, sampling: dict[str, Any],
                 tag: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The API workflow rendering ``row`` with the original (nodes 1-7) and the edited model (11-17),
    and ``{image name: SaveImage node id}``. ``tag`` makes the saved file names unique to this run."""
    s = sampling

    def branch(offset: int, model: list, clip: list, vae: list, name: str) -> dict[str, Any]:
        n = lambda i: str(offset + i)  # noqa: E731
        return {
            n(2): {"class_type": "CLIPTextEncode", "inputs": {"text": row.prompt, "clip": clip}},
            n(3): {"class_type": "CLIPTextEncode", "inputs": {"text": s["negative"], "clip": clip}},
            n(4): {"class_type": "EmptyLatentImage", "inputs": {"width": s["width"], "height": s["height"],
                                                              "batch_size": 1}},
            n(5): {"class_type": "KSampler", "inputs": {
                "model": model, "seed": row.seed, "steps": s["steps"], "cfg": s["cfg"],
                "sampler_name": s["sampler_name"], "scheduler": s["scheduler"], "positive": [n(2), 0],
                "negative": [n(3), 0], "latent_image": [n(4), 0], "denoise": 1.0}},
            n(6): {"class_type": "VAEDecode", "inputs": {"samples": [n(5), 0], "vae": vae}},
            n(7): {"class_type": "SaveImage", "inputs": {
                "images": [n(6), 0], "filename_prefix": f"scapre_eval/{tag}/{row.index:05d}_{name}"}},
        }

    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": base}}}
    prompt.update(branch(0, ["1", 0], ["1", 1], ["1", 2], ORIGINAL))
    if edit_kind == "lora":
        prompt["11"] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"model": ["1", 0], "lora_name": edit_name, "strength_model": 1.0}}
        prompt.update(branch(10, ["11", 0], ["1", 1], ["1", 2], EDITED))
    else:
        prompt["11"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": edit_name}}
        prompt.update(branch(10, ["11", 0], ["11", 1], ["11", 2], EDITED))
    return prompt, {ORIGINAL: "7", EDITED: "17"}


# ------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _key(row: PromptRow) -> str:
    return f"{row.index:05d}"


def image_path(out: Path, row_key: str, name: str) -> Path:
    return out / "images" / f"{row_key}_{name}.png"


def record_path(out: Path, row_key: str) -> Path:
    return out / "records" / f"{row_key}.json"


def load_record(out: Path, row_key: str) -> dict[str, Any] | None:
    """The record of a finished row, or None when it is missing, unreadable or its images are gone."""
    try:
        record = json.loads(record_path(out, row_key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not all(image_path(out, row_key, n).is_file() for n in (ORIGINAL, EDITED)):
        return None
    return record


def _fingerprint(plan: EvalPlan, kind: str) -> dict[str, Any]:
    digest = hashlib.sha256(plan.prompts_file.read_bytes()).hexdigest()
    return {"format": "scapre-evaluate/1", "base": plan.base, "edit": plan.edit_name, "edit_kind": kind,
            "prompts_sha256": digest, "sampling": plan.sampling}


def _check_run_file(plan: EvalPlan, kind: str) -> str:
    """Write ``run.json`` on a new run; on a rerun insist it describes the same run. Returns a tag for the
    servers' file names: the run's hash plus a per-invocation suffix, so that SaveImage always runs (ComfyUI
    would otherwise serve an identical earlier prompt from its cache and report no images for it)."""
    fingerprint = _fingerprint(plan, kind)
    tag = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12] + "-" + uuid.uuid4().hex[:8]
    path = plan.out / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        differs = sorted(k for k in fingerprint if old.get(k) != fingerprint[k])
        if differs:
            raise EvaluateError(f"{plan.out} holds a run with other settings (differs in {differs}); "
                                "use another --out, or delete the folder to start over")
    else:
        _write_atomic(path, json.dumps({**fingerprint, "prompts": str(plan.prompts_file)}, indent=1).encode())
    return tag


# ------------------------------------------------------------------------------------------------------
# measures
# ------------------------------------------------------------------------------------------------------

def _decode(png: bytes):
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)


def image_change(original_png: bytes, edited_png: bytes) -> float:
    """ScaPre Compare's per-image change between two PNGs (0 identical .. 1 unrelated)."""
    from ...scapre_core.evaluation.measures import image_change as change

    return float(change(_decode(original_png), _decode(edited_png))[0])


def kind_of(row: PromptRow, erased: tuple[str, ...]) -> str:
    """``erased`` when the row's class (or, without a class, its prompt) names an erased concept."""
    from ...scapre_core.evaluation.measures import ERASED, KEPT

    names = {normalize(c) for c in erased}
    if row.cls:
        return ERASED if normalize(row.cls) in names else KEPT
    text = normalize(row.prompt)
    return ERASED if any(n and n in text for n in names) else KEPT


# ------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------

def _server_lists(server: Server) -> tuple[list[str], list[str]]:
    def options(node: str, name: str) -> list[str]:
        info = server.object_info(node)
        spec = (info.get("input", {}).get("required", {}) or {}).get(name)
        if not spec:
            return []
        first = spec[0]
        return list(first) if isinstance(first, list) else list((spec[1] or {}).get("options", []))

    return options("CheckpointLoaderSimple", "ckpt_name"), options("LoraLoaderModelOnly", "lora_name")


def _resolve(plan: EvalPlan) -> tuple[list[Server], str]:
    """The servers that answer and list the models, and the edit's kind (lora or checkpoint)."""
    alive, kinds = [], set()
    for server in plan.servers:
        try:
            checkpoints, loras = _server_lists(server)
        except ServerDown as err:
            log.warning("server %s does not answer (%s); going on without it", server.url, err)
            continue
        if plan.base not in checkpoints:
            raise EvaluateError(f"{server.url} does not list the checkpoint {plan.base!r} (--base): give its name as "
                                "the server's Load Checkpoint lists it")
        found = [k for k, names in (("lora", loras), ("checkpoint", checkpoints)) if plan.edit_name in names]
        if plan.edit_kind in found:
            found = [plan.edit_kind]
        if not found:
            raise EvaluateError(f"{server.url} lists no checkpoint or LoRA named {plan.edit_name!r} (--edit): put the "
                                "file in that ComfyUI's models/loras or models/checkpoints folder (or output/loras, "
                                "output/checkpoints)")
        kinds.add(found[0])
        alive.append(server)
    if not alive:
        raise EvaluateError("no --server answers: start ComfyUI (python main.py --listen ...) or check the URLs")
    if len(kinds) > 1:
        raise EvaluateError(f"the servers disagree on what {plan.edit_name!r} is ({sorted(kinds)})")
    return alive, kinds.pop()


def run(plan: EvalPlan, quiet: bool = False) -> list[str]:
    """Render what is not done yet, then write results and the HTML page; returns lines to print."""
    servers, kind = _resolve(plan)
    for sub in ("images", "records"):
        (plan.out / sub).mkdir(parents=True, exist_ok=True)
    tag = _check_run_file(plan, kind)
    if not plan.erased:
        log.warning("no erased concepts known (give --edit as a path to a ScaPre file, or --erased): every prompt "
                    "counts as kept")
    todo = [row for row in plan.rows if load_record(plan.out, _key(row)) is None]
    log.info("%d of %d prompt(s) to render on %d server(s)%s", len(todo), len(plan.rows), len(servers),
             f" ({len(plan.rows) - len(todo)} done before)" if len(todo) < len(plan.rows) else "")
    failures: dict[str, str] = {}
    bar = None
    if not quiet and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="images", unit="prompt", dynamic_ncols=True)

    def on_done(job: Job, images: dict[str, list[bytes]], server_url: str) -> None:
        row: PromptRow = job.meta["row"]
        key = _key(row)
        original, edited = images[ORIGINAL][0], images[EDITED][0]
        for name, data in ((ORIGINAL, original), (EDITED, edited)):
            _write_atomic(image_path(plan.out, key, name), data)
        record = {"row": row.index, "prompt": row.prompt, "evaluation_seed": row.seed, "class": row.cls,
                  "kind": kind_of(row, plan.erased), "change": image_change(original, edited),
                  "server": server_url,
                  "images": {n: os.path.relpath(image_path(plan.out, key, n), plan.out) for n in (ORIGINAL, EDITED)}}
        _write_atomic(record_path(plan.out, key), json.dumps(record, indent=1).encode())
        if bar is not None:
            bar.update(1)

    def on_failed(job: Job, message: str) -> None:
        failures[_key(job.meta["row"])] = message
        log.warning("prompt %s failed: %s", _key(job.meta["row"]), message)
        if bar is not None:
            bar.update(1)

    jobs = []
    for row in todo:
        prompt, outputs = build_prompt(row, plan.base, plan.edit_name, kind, plan.sampling, tag)
        jobs.append(Job(key=_key(row), prompt=prompt, outputs=outputs, meta={"row": row}))
    runner = Runner(servers, on_done, on_failed, depth=plan.depth, stuck_after=plan.timeout)
    try:
        runner.run(jobs)
    except (RuntimeError, PromptRejected) as err:
        raise EvaluateError(str(err)) from None
    finally:
        if bar is not None:
            bar.close()

    records = [r for row in plan.rows if (r := load_record(plan.out, _key(row))) is not None]
    results = write_results(plan, kind, records, failures)
    from .html_page import write_page

    page = write_page(plan.out, results)
    lines = [f"{len(records)} of {len(plan.rows)} prompt(s) rendered (original and edited) in {plan.out}"]
    if runner.done_by:
        lines.append("this run: " + ", ".join(f"{u} {n}" for u, n in sorted(runner.done_by.items())))
    for url, why in runner.gone.items():
        lines.append(f"server {url} dropped out: {why}")
    summary = results["summary"]
    lines.append(_figures(summary))
    lines.append(f"results: {plan.out / 'results.json'}, {plan.out / 'results.csv'}; page: {page}")
    if failures:
        lines.append(f"{len(failures)} prompt(s) failed (rerun to retry): "
                     + "; ".join(f"{k}: {m}" for k, m in list(failures.items())[:3]))
        raise EvaluateError("\n".join(lines))
    return lines


def _figures(summary: dict[str, Any]) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    return f"erasure {f(summary['erasure'])}, retention {f(summary['retention'])}, gap {f(summary['gap'])}"


def write_results(plan: EvalPlan, kind: str, records: list[dict[str, Any]],
                  failures: dict[str, str]) -> dict[str, Any]:
    """``results.json`` (run, summary per kind/class/pooled, every record) and ``results.csv`` (one row per prompt)."""
    from ...scapre_core.evaluation.measures import summarize

    summary = summarize([{"prompt": r["prompt"], "kind": r["kind"], "change": r["change"], "concept": r["class"]}
                         for r in records])
    results = {"format": "scapre-evaluate-results/1", "base": plan.base, "edit": plan.edit_name, "edit_kind": kind,
               "erased": list(plan.erased), "sampling": plan.sampling, "prompts": len(plan.rows),
               "rendered": len(records), "failed": failures, "summary": summary, "records": records}
    _write_atomic(plan.out / "results.json", json.dumps(results, indent=1).encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "prompt", "evaluation_seed", "class", "kind", "change", "original", "edited"])
    for r in records:
        writer.writerow([r["row"], r["prompt"], r["evaluation_seed"], r["class"], r["kind"], f"{r['change']:.6f}",
                         r["images"][ORIGINAL], r["images"][EDITED]])
    _write_atomic(plan.out / "results.csv", buffer.getvalue().encode())
    return results
