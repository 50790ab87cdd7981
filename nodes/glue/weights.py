"""A MODEL's weights in (as it computes with them), an edited clone with patches out (COMFY_NOTES (a)).
Which weights an edit reads and changes is per architecture: ``glue.architectures``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import comfy.lora
import comfy.model_management
import torch

from .payloads import MODEL_OPTIONS_KEY, EditRecord


class EffectiveWeights(Mapping):
    """The weights a model computes with right now (original plus any patches already on it, such
    as a LoRA or an earlier ScaPre edit), as float32 CPU copies made one matrix at a time.

    Originals are read unpatched from the patcher (``get_key_patches``), never from the live module,
    which holds another clone's patched weights whenever that clone was loaded last."""

    def __init__(self, model, keys: list[str]) -> None:
        entries = model.get_key_patches("diffusion_model.")
        self._entries = {k: entries[k] for k in keys}
        self._last: tuple[str, torch.Tensor] | None = None

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        (weight, convert), *patches = self._entries[key]
        value = comfy.model_management.cast_to_device(weight, torch.device("cpu"), torch.float32, copy=True)
        value = convert(value, inplace=True)
        if patches:
            value = comfy.lora.calculate_weight(patches, value, key, intermediate_dtype=torch.float32)
        value = value.to(torch.float32)
        self._last = (key, value)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def patched_clone(model, diffs: Mapping[str, torch.Tensor], record: EditRecord):
    """A clone of ``model`` whose listed weights get ``+ diff``; the input model is untouched."""
    clone = model.clone()
    added = clone.add_patches({k: (d,) for k, d in diffs.items()}, 1.0, 1.0)
    missing = set(diffs) - set(added)
    if missing:
        raise RuntimeError(f"ComfyUI did not accept patches for {len(missing)} keys, e.g. {sorted(missing)[0]!r}")
    clone.model_options[MODEL_OPTIONS_KEY] = (*edit_records(model), record)
    return clone


def edit_records(model) -> tuple[EditRecord, ...]:
    return tuple(model.model_options.get(MODEL_OPTIONS_KEY, ()))


def compute_device(model) -> torch.device:
    """The device ComfyUI runs this model on (the GPU when there is one)."""
    device = getattr(model, "load_device", None)
    return torch.device(device) if device is not None else comfy.model_management.get_torch_device()

