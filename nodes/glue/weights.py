"""A MODEL's cross-attention key/value weights in, an edited clone with patches out (COMFY_NOTES (a)).
Weight formats (fp8, scaled fp8, GGUF) and how an edit is applied to them: ``formats.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import comfy.lora
import comfy.model_management
import torch

from ...scapre_core.presets import EDIT_MODES
from . import formats
from .payloads import MODEL_OPTIONS_KEY, EditRecord

KV_KEY = re.compile(r"^diffusion_model\..*\.attn2\.to_([kv])\.weight$")


def kv_keys(model, width: int, edit: str = "keys and values") -> list[str]:
    """The UNet's cross-attention key/value weights that read a ``width``-wide text embedding."""
    if edit not in EDIT_MODES:
        raise ValueError(f"edit must be one of {list(EDIT_MODES)}, got {edit!r}")
    kinds = EDIT_MODES[edit]
    entries = formats.key_entries(model, [k for k in formats.weight_names(model) if KV_KEY.match(k)])
    found = [(k, KV_KEY.match(k).group(1)) for k in entries]
    if not found:
        raise ValueError("this model has no cross-attention key/value projections (attn2.to_k / attn2.to_v): "
                         "ScaPre edits UNet models that read text through cross-attention (SD1.x, SD2.x, SDXL)")
    widths = sorted({int(entries[k].weight.shape[-1]) for k, _ in found})
    keys = [k for k, kind in found if kind in kinds and int(entries[k].weight.shape[-1]) == width]
    if not keys:
        raise ValueError(f"the concepts were encoded {width} wide but this model's cross-attention reads "
                         f"{widths}: encode the concepts with the CLIP that belongs to this model")
    return keys


class EffectiveWeights(Mapping):
    """The weights a model computes with right now (original plus any patches already on it, such
    as a LoRA or an earlier ScaPre edit), as float32 CPU copies made one matrix at a time.

    Originals are read unpatched from the patcher, never from the live module, which holds another
    clone's patched weights whenever that clone was loaded last; fp8, scaled fp8 and GGUF weights are
    read as numbers (``formats.read_original``). Earlier ScaPre edits applied at compute time (weight
    functions) are added; weight functions of other nodes cannot be read and are listed in
    ``foreign_functions``."""

    def __init__(self, model, keys: list[str]) -> None:
        self.entries = formats.key_entries(model, keys)
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise ValueError(f"this model has no weight {missing[0]!r}")
        self.foreign_functions = sorted(k for k, e in self.entries.items()
                                        if any(not formats.is_edit_function(f) for f in e.wrappers))
        self._last: tuple[str, torch.Tensor] | None = None

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        entry = self.entries[key]
        value = formats.read_original(entry)
        if entry.patches:
            value = comfy.lora.calculate_weight(list(entry.patches), value, key, intermediate_dtype=torch.float32)
        for function in entry.wrappers:
            if formats.is_edit_function(function):
                value = value + function.diff.to(value)
        value = value.to(torch.float32)
        self._last = (key, value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def patched_clone(model, diffs: Mapping[str, torch.Tensor], record: EditRecord,
                  applications: Mapping[str, formats.Application] | None = None):
    """A clone of ``model`` whose listed weights get ``+ diff`` (as weight patches, or at compute time
    for fp8 weights: ``formats``); the input model is untouched."""
    if applications is None:
        applications = formats.plan(model, formats.key_entries(model, diffs))
    clone = model.clone()
    formats.apply_edit(clone, diffs, applications)
    clone.model_options[MODEL_OPTIONS_KEY] = (*edit_records(model), record)
    return clone


def edit_records(model) -> tuple[EditRecord, ...]:
    return tuple(model.model_options.get(MODEL_OPTIONS_KEY, ()))


def compute_device(model) -> torch.device:
    """The device ComfyUI runs this model on (the GPU when there is one)."""
    device = getattr(model, "load_device", None)
    return torch.device(device) if device is not None else comfy.model_management.get_torch_device()
