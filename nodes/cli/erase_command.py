"""``python -m comfyui-scapre erase``: a checkpoint in, an edited checkpoint and/or a LoRA out, with the same
code path as the ScaPre nodes (encode with the model's CLIP, :func:`nodes.glue.edit.run_erase`,
ComfyUI's savers)."""

from __future__ import annotations

import json
import logging
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ...scapre_core.presets import AUTO, EraseSettings, preset_config
from ...scapre_core.prompts import plan_prompts
from ...scapre_core.report import verdict_line
from .inputs import read_concepts
from .progress import Bars

log = logging.getLogger("scapre")


class UsageError(ValueError):
    """A bad argument (exit code 2)."""


@dataclass(frozen=True)
class EraseJob:
    checkpoint: Path
    concepts: str
    settings: EraseSettings
    out: Path | None
    lora: Path | None
    rank: int
    dtype: str
    origin: dict
    concept_type: str
    expand_templates: bool
    guide: str
    preserve: str
    report_tokens: str = "key"
    look_alikes: str = "off"
    # preset auto chooses when the model is loaded: the preset's strength and seed, and --settings' values over it
    strength: float = 1.0
    seed: int = 0
    overrides: dict | None = None

    def settings_for(self, model, concepts) -> tuple[EraseSettings, dict, tuple[str, ...]]:
        """``(settings, origin, notes)`` of the edit of ``model`` with ``concepts``: for preset auto, those of the
        preset it chooses (``auto_choice``), with the ``--settings`` values over them."""
        if self.origin.get("preset") != AUTO:
            return self.settings, self.origin, ()
        from ..glue.edit import auto_choice

        name, note = auto_choice(model, concepts, self.settings.edit)
        base = preset_config(name, self.strength, self.seed)
        settings = EraseSettings.from_dict({"edit": self.settings.edit, **(self.overrides or {})}, base=base)
        return settings, {**self.origin, "ran": name}, () if name == "precise" else (note,)


def _output(value: str | None, what: str) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.suffix != ".safetensors":
        raise UsageError(f"{what} {value!r} must end in .safetensors")
    if not path.parent.resolve().is_dir():
        raise UsageError(f"{what} folder {str(path.parent)!r} does not exist")
    return path.resolve()


def prepare(args) -> EraseJob:
    """Check every argument before anything heavy runs; raise :class:`UsageError` naming the problem."""
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise UsageError(f"checkpoint {args.checkpoint!r} is not a file")
    if args.out is None and args.lora is None:
        raise UsageError("nothing to write: give --out FILE.safetensors (checkpoint) and/or --lora FILE.safetensors")
    out, lora = _output(args.out, "--out"), _output(args.lora, "--lora")
    if out is not None and lora is not None and out == lora:
        raise UsageError("--out and --lora name the same file")
    if args.rank < 0:
        raise UsageError(f"--rank must be 0 (exact) or positive, got {args.rank}")
    if args.rank and lora is None:
        raise UsageError("--rank applies to --lora only")
    dtype = getattr(args, "dtype", "same")
    if dtype != "same" and out is None:
        raise UsageError("--dtype applies to --out only (a LoRA holds the edit in float32, or float16 at rank > 0)")
    try:
        concepts = read_concepts(args.concepts, args.column)
        base = preset_config(args.preset, args.strength, args.seed)
        settings = EraseSettings(base, args.edit)
        overrides = None
        if args.settings is not None:
            overrides = _read_json(args.settings)
            settings = EraseSettings.from_dict({"edit": args.edit, **overrides}, base=base)
        plan_prompts(concepts, args.concept_type, args.expand_templates, "", args.guide, args.preserve or "", "")
    except ValueError as err:
        raise UsageError(str(err)) from None
    origin = {"source": "command line", "preset": args.preset, "strength": float(args.strength)}
    if args.settings is not None:
        origin["settings_file"] = str(Path(args.settings).name)
    # the focus variant needs look-alikes; strength above 1 moves the published guides towards them
    wanted = settings.config.variant == "focus" or settings.config.to_look_alike > 0
    look_alikes = getattr(args, "look_alikes", None) or ("auto" if wanted else "off")
    return EraseJob(checkpoint=checkpoint.resolve(), concepts=concepts, settings=settings, out=out, lora=lora,
                    rank=args.rank, dtype=dtype, origin=origin, concept_type=args.concept_type,
                    expand_templates=args.expand_templates, guide=args.guide, preserve=args.preserve or "",
                    report_tokens=getattr(args, "report_tokens", "key"), look_alikes=look_alikes,
                    strength=float(args.strength), seed=int(args.seed), overrides=overrides)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            values = json.load(fh)
    except OSError as err:
        raise UsageError(f"cannot read --settings {path!r}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"--settings {path!r} is not JSON: {err}") from None
    if not isinstance(values, dict):
        raise UsageError(f"--settings {path!r} must hold a JSON object of config field names and values")
    return values


#: ``--dtype`` names and the safetensors dtype names a checkpoint's header uses.
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_HEADER_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}

def _header(path: Path) -> dict:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(size))


def _part(key: str) -> str:
    """The part of a checkpoint a key belongs to (``model``, ``first_stage_model``, ``cond_stage_model``...)."""
    return key.split(".", 1)[0]


def saved_dtypes(source: str | Path, dtype: str = "same") -> Callable[[str, torch.Tensor], torch.dtype]:
    """``(key, tensor) -> dtype`` to save each floating tensor of an edited checkpoint in: ``fp16``,
    ``bf16`` or ``fp32`` for all, or ``same``: the dtype the key has in ``source`` (the checkpoint that was
    loaded), or for a key it does not hold the dtype most floating tensors of the same part have there.
    ComfyUI computes on the CPU in float32, so without this a float16 checkpoint is saved at twice its size.
    Tensors stored in other dtypes (integers, float8) are saved as ComfyUI gives them."""
    if dtype != "same":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'same' or one of {sorted(DTYPES)}, got {dtype!r}")
        chosen = DTYPES[dtype]
        return lambda key, tensor: chosen if tensor.is_floating_point() and tensor.element_size() >= 2 else tensor.dtype
    header = _header(Path(source))
    known = {k: _HEADER_DTYPES[v["dtype"]] for k, v in header.items()
             if k != "__metadata__" and v.get("dtype") in _HEADER_DTYPES}
    by_part: dict[str, Counter] = {}
    for key, value in known.items():
        by_part.setdefault(_part(key), Counter())[value] += 1
    overall = Counter(known.values())

    def pick(key: str, tensor: torch.Tensor) -> torch.dtype:
        if not tensor.is_floating_point() or tensor.element_size() < 2:
            return tensor.dtype
        if key in known:
            return known[key]
        counts = by_part.get(_part(key)) or overall
        return counts.most_common(1)[0][0] if counts else tensor.dtype

    return pick


def run(job: EraseJob, comfyui: Path, cpu: bool = False, bars: Bars | None = None) -> list[str]:
    """Do the edit and write the files; returns the lines to print."""
    from . import host

    bars = bars or Bars()
    host.import_comfyui(comfyui, cpu=cpu)
    from ..glue.edit import run_erase
    from ..glue.encode import encode_concepts
    from ..glue.export import report_path, write_checkpoint, write_lora

    try:
        model, clip, vae = host.load_checkpoint(job.checkpoint)
        plan = plan_prompts(job.concepts, job.concept_type, job.expand_templates, "", job.guide, job.preserve, "")
        for warning in plan.warnings:
            log.warning("%s", warning)
        concepts = encode_concepts(clip, plan, job.concept_type, bars.step("encode"), job.look_alikes)
        settings, origin, notes = job.settings_for(model, concepts)
        for note in notes:
            log.warning("%s", note)
        edited, record = run_erase(model, concepts, settings.config, settings.edit, None, bars.step("erase"),
                                   warnings=notes, origin=origin, report_tokens=job.report_tokens)
        lines = []
        if job.lora is not None:
            matrices, error = write_lora(job.lora, (record,), job.rank, bars.step("lora"), model=edited)
            mode = "exact" if job.rank == 0 else f"rank {job.rank}, relative error {error:.3g}"
            lines.append(f"wrote LoRA {job.lora} ({matrices} matrices, {mode}) and {report_path(job.lora).name}")
        if job.out is not None:
            write_checkpoint(job.out, edited, clip, vae, (record,), saved_dtypes(job.checkpoint, job.dtype))
            size = job.out.stat().st_size / 2**30
            lines.append(f"wrote checkpoint {job.out} ({size:.1f} GiB, dtype {job.dtype}) and "
                         f"{report_path(job.out).name}")
    finally:
        bars.close()  # before any message: a bar left open would be redrawn after it at exit
    summary = record.report.summary()
    efficacy = summary["mean_efficacy"]
    lines.insert(0, f"erased {summary['concepts']} concept(s) ({summary['prompts']} prompt(s)) in "
                    f"{summary['matrices']} matrices, mean efficacy "
                    + ("n/a" if efficacy is None else f"{efficacy:.3f}"))
    lines.insert(1, verdict_line(summary["verdict"]))
    return lines
