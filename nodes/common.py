"""Glue between ComfyUI objects and ``scapre_core``: weights in, patches out, progress, sockets."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping

import comfy.lora
import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from ..scapre_core import FIELD_HELP, ScaPreConfig
from ..scapre_core.payloads import MODEL_OPTIONS_KEY, EditRecord

log = logging.getLogger("comfyui-scapre")

CATEGORY = "ScaPre"

Concepts = io.Custom("SCAPRE_CONCEPTS")
Informax = io.Custom("SCAPRE_INFORMAX")
Report = io.Custom("SCAPRE_REPORT")

KV_KEY = re.compile(r"^diffusion_model\..*\.attn2\.to_([kv])\.weight$")
EDIT_MODES = {"keys and values": ("k", "v"), "values only": ("v",), "keys only": ("k",)}

# Widget ranges for ScaPreConfig fields (tooltips come from FIELD_HELP).
_FLOAT = {
    "lam": (0.001, 100.0, 0.01), "erase_scale": (0.0, 100.0, 0.05), "preserve_scale": (0.0, 100.0, 0.05),
    "p": (0.0, 32.0, 0.1), "mi_temperature": (0.01, 10.0, 0.01), "noise_sigma": (0.0, 10.0, 0.001),
    "mu": (0.0, 100.0, 0.01), "t_sigma": (0.01, 100.0, 0.01), "p_sigma": (0.0, 32.0, 0.1),
    "alpha_min": (0.0, 1.0, 0.01),
}
_INT = {"mi_samples": (1, 1000), "entropy_samples": (1, 1000), "entropy_bins": (2, 1000), "bures_iters": (0, 100),
        "seed": (0, 0xFFFFFFFFFFFFFFFF)}
_COMBO = {"variant": ["scale", "small", "uce"], "technique": ["replace", "tensor"],
          "mi_estimator": ["sampled", "expected"], "precision": ["float32", "float64"]}


def config_input(name: str) -> io.Input:
    """The widget for one ScaPreConfig field, with the paper's default and its meaning as tooltip."""
    default = getattr(ScaPreConfig(), name)
    tip = FIELD_HELP[name]
    if name in _COMBO:
        return io.Combo.Input(name, options=_COMBO[name], default=default, tooltip=tip)
    if name in _FLOAT:
        low, high, step = _FLOAT[name]
        return io.Float.Input(name, default=default, min=low, max=high, step=step, tooltip=tip)
    if name in _INT:
        low, high = _INT[name]
        # The frontend adds a "control after generate: randomize" widget to any INT named seed unless told
        # not to; an edit should stay reproducible until the user changes the seed.
        extra = {"control_after_generate": False} if name == "seed" else {}
        return io.Int.Input(name, default=default, min=low, max=high, tooltip=tip, **extra)
    return io.Boolean.Input(name, default=default, tooltip=tip)


def kv_keys(model, width: int, edit: str = "keys and values") -> list[str]:
    """The UNet's cross-attention key/value weights that read a ``width``-wide text embedding."""
    if edit not in EDIT_MODES:
        raise ValueError(f"edit must be one of {list(EDIT_MODES)}, got {edit!r}")
    kinds = EDIT_MODES[edit]
    entries = model.get_key_patches("diffusion_model.")
    found = [(k, m.group(1)) for k in entries if (m := KV_KEY.match(k))]
    if not found:
        raise ValueError("this model has no cross-attention key/value projections (attn2.to_k / attn2.to_v): "
                         "ScaPre edits UNet models that read text through cross-attention (SD1.x, SD2.x, SDXL)")
    widths = sorted({int(entries[k][0][0].shape[-1]) for k, _ in found})
    keys = [k for k, kind in found if kind in kinds and int(entries[k][0][0].shape[-1]) == width]
    if not keys:
        raise ValueError(f"the concepts were encoded {width} wide but this model's cross-attention reads "
                         f"{widths}: encode the concepts with the CLIP that belongs to this model")
    return keys


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


def progress(node_id: str | None, label: str) -> Callable[[int, int], None]:
    """A per-matrix progress callback that drives the node's progress bar and stops at Cancel."""
    bar: list[comfy.utils.ProgressBar] = []

    def update(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not bar:
            bar.append(comfy.utils.ProgressBar(total, node_id=node_id))
        bar[0].update_absolute(done, total)
        log.debug("%s %d/%d", label, done, total)

    comfy.model_management.throw_exception_if_processing_interrupted()
    return update
