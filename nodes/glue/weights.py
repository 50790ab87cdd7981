"""A MODEL's weights in (as it computes with them), an edited clone with patches out (COMFY_NOTES (a)).
Which weights an edit reads and changes is per architecture: ``glue.architectures``; weight formats (fp8,
scaled fp8, GGUF) and how an edit is applied to them: ``formats.py``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import comfy.lora
import comfy.model_management
import torch

from . import formats
from .payloads import MODEL_OPTIONS_KEY, EditRecord


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
