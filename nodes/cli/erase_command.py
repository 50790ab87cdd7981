"""``python -m comfyui-scapre erase``: a checkpoint in, an edited checkpoint and/or a LoRA out, with the same
code path as the ScaPre nodes (encode with the model's CLIP, :func:`nodes.glue.edit.run_erase`,
ComfyUI's savers)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ...scapre_core.presets import EraseSettings, preset_config
from ...scapre_core.prompts import plan_prompts
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
    concept_type: str
    expand_templates: bool
    guide: str
    preserve: str
    look_alikes: str = "off"


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
    try:
        concepts = read_concepts(args.concepts, args.column)
        base = preset_config(args.preset, args.strength, args.seed)
        settings = EraseSettings(base, args.edit)
        if args.settings is not None:
            settings = EraseSettings.from_dict({"edit": args.edit, **_read_json(args.settings)}, base=base)
        plan_prompts(concepts, args.concept_type, args.expand_templates, "", args.guide, args.preserve or "", "")
    except ValueError as err:
        raise UsageError(str(err)) from None
    look_alikes = args.look_alikes or ("auto" if settings.config.variant == "focus" else "off")
    return EraseJob(checkpoint=checkpoint.resolve(), concepts=concepts, settings=settings, out=out, lora=lora,
                    rank=args.rank, concept_type=args.concept_type, expand_templates=args.expand_templates,
                    guide=args.guide, preserve=args.preserve or "", look_alikes=look_alikes)


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
        edited, record = run_erase(model, concepts, job.settings.config, job.settings.edit, None, bars.step("erase"))
        lines = []
        if job.lora is not None:
            matrices, error = write_lora(job.lora, (record,), job.rank, bars.step("lora"))
            mode = "exact" if job.rank == 0 else f"rank {job.rank}, relative error {error:.3g}"
            lines.append(f"wrote LoRA {job.lora} ({matrices} matrices, {mode}) and {report_path(job.lora).name}")
        if job.out is not None:
            write_checkpoint(job.out, edited, clip, vae, (record,))
            lines.append(f"wrote checkpoint {job.out} and {report_path(job.out).name}")
    finally:
        bars.close()  # before any message: a bar left open would be redrawn after it at exit
    summary = record.report.summary()
    efficacy = summary["mean_efficacy"]
    lines.insert(0, f"erased {summary['concepts']} concept(s) ({summary['prompts']} prompt(s)) in "
                    f"{summary['matrices']} matrices, mean efficacy "
                    + ("n/a" if efficacy is None else f"{efficacy:.3f}"))
    return lines
