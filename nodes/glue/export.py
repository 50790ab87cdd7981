"""Writing an edit: a LoRA file or a whole checkpoint, each with its ``.scapre.json`` report, through
ComfyUI's own savers (COMFY_NOTES (c)). Files are written under a temporary name in the target
folder and renamed at the end, so a cancelled or failed save leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import comfy.model_management
import comfy.utils
import torch

from ...scapre_core import __version__
from ...scapre_core.lora import pooled_error
from . import formats, stack
from .lora_file import lora_state_dict
from .payloads import EditRecord, provenance_metadata, report_bundle, total_diffs


def report_path(path: str | os.PathLike) -> Path:
    """``x.safetensors`` -> ``x.scapre.json`` (the report saved next to a LoRA or checkpoint)."""
    path = Path(path)
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    return path.with_name(stem + ".scapre.json")


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary names (same folder, hidden, ``.partial``) for ``paths``: renamed onto them when the
    block succeeds, deleted when it raises (including KeyboardInterrupt)."""
    finals = [Path(p) for p in paths]
    temps = [f.with_name(f".{f.name}.{os.getpid()}.partial") for f in finals]
    try:
        yield temps
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
    except BaseException:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        raise


def write_lora(path: str | os.PathLike, records: tuple[EditRecord, ...], rank: int = 0,
               step: Callable[[int, int], None] | None = None, diffs: Mapping | None = None,
               contents: str = stack.EDITS, model=None) -> tuple[int, float]:
    """Write the summed edits of ``records`` (or ``diffs``: ``stack.all_changes``) as a LoRA at ``path``
    (+ its report); returns ``(matrices, pooled relative truncation error)``. ``rank`` 0 is exact (``.diff``
    keys). ``contents`` names what the file holds, for its metadata (``stack.lora_metadata``). ``model`` (the
    edited MODEL) is needed when an edit is held in compact form (``stack.edit_changes``)."""
    if diffs is None:
        compact = any(not isinstance(d, torch.Tensor) for r in records for d in r.diffs.values())
        if compact and model is None:
            raise ValueError("these edits are held in compact form: give the edited MODEL to write them")
        diffs = stack.edit_changes(model, records) if compact else total_diffs(records)
    tensors, errors = lora_state_dict(diffs, rank, progress=step)
    error = pooled_error(diffs, errors)
    metadata = provenance_metadata(records, __version__, lora={"rank": rank, "rel_error": float(f"{error:.6g}"),
                                                               **stack.lora_metadata(records, contents)})
    path = Path(path)
    with atomic_paths(path, report_path(path)) as (tmp, tmp_report):
        comfy.utils.save_torch_file(tensors, str(tmp), metadata=metadata)
        write_report(tmp_report, records, path.name)
    return len(diffs), error


#: ``(key, tensor) -> dtype`` a saved tensor is written in (``nodes/cli/erase_command.py: saved_dtypes``).
DtypeOf = Callable[[str, torch.Tensor], torch.dtype]


def write_checkpoint(path: str | os.PathLike, model, clip, vae, records: tuple[EditRecord, ...],
                     dtype_of: DtypeOf | None = None) -> None:
    """Write MODEL (patches baked in) + CLIP + VAE as one checkpoint, as ComfyUI's ``comfy.sd.save_checkpoint``
    lays it out (``state_dict_for_saving``, ``save_torch_file``), each floating tensor in ``dtype_of(key,
    tensor)`` (default: as ComfyUI holds it), with the provenance metadata and the report next to it."""
    path = Path(path)
    metadata = provenance_metadata(records, __version__)
    model = formats.bake_compute_edits(model)  # compute-time (fp8) edits into the weights the saver writes
    comfy.model_management.load_models_gpu([model, *([clip.load_model()] if clip is not None else [])],
                                           force_patch_weights=True)
    state = model.model.state_dict_for_saving(None if clip is None else clip.get_sd(),
                                              None if vae is None else vae.get_sd(), None)
    for key, tensor in state.items():
        target = tensor.dtype if dtype_of is None else dtype_of(key, tensor)
        state[key] = tensor.to(dtype=target).contiguous()
    with atomic_paths(path, report_path(path)) as (tmp, tmp_report):
        comfy.utils.save_torch_file(state, str(tmp), metadata=metadata)
        write_report(tmp_report, records, path.name)


def write_report(path: str | os.PathLike, records: tuple[EditRecord, ...], saved_as: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(report_bundle(records, __version__, saved_as))
