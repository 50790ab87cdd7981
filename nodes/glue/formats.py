"""How a MODEL stores the weights ScaPre edits, how to read them as numbers, and how an edit reaches the
weights the model samples with (docs/model-formats.md; the measure is ``scapre_core/survival.py``).

Formats, per weight (:func:`weight_format`):

* ``float32`` / ``float16`` / ``bfloat16``: plain weights.
* ``float8_e4m3fn`` / ``float8_e5m2``: Load Diffusion Model's ``weight_dtype`` fp8 options; ComfyUI casts
  them to the compute dtype when a layer runs.
* ``scaled float8_e4m3fn``: ComfyUI's scaled fp8 checkpoints. ComfyUI 0.3.64 stores ``weight / scale``
  in fp8 and multiplies by ``scale_weight`` in the layer (after its weight functions); 0.8.0 loads them as
  "mixed precision ops" whose weight is a ``QuantizedTensor`` (``dequantize()``), as it does nvfp4.
* ``GGUF <type>``: ComfyUI-GGUF's ``GGMLTensor`` (Q8_0, Q4_K, ...), dequantized by that pack's own
  ``dequantize_tensor`` (found through the tensor's class, so nothing here imports the pack).

How the edit is applied (:func:`choose_method`), picked by measuring each way ComfyUI can apply a patch
(``benchmarks/bench_formats.py``):

* ``patch``: a ComfyUI weight patch (``add_patches``); ComfyUI adds it to the stored weight when it loads
  the model and rounds the sum into the storage dtype. Exact enough for float16/bfloat16/float32, and the
  way every ComfyUI saver and merge node sees an edit.
* ``compute``: a ComfyUI weight function (``add_weight_wrapper``, as ComfyUI's own LoRA training uses);
  the layer adds it to its weight after casting (and dequantizing) it to the compute dtype, like ComfyUI's
  lowvram patches. Used for fp8 and scaled fp8, where rounding the edit into fp8 loses a large part of it.
* ``gguf``: a ComfyUI weight patch, which ComfyUI-GGUF applies itself when it dequantizes a weight, in
  the compute dtype.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ...scapre_core.lowrank import LowRankChange
from ...scapre_core.survival import WARN_ERROR, SurvivalMeter

log = logging.getLogger("comfyui-scapre")

FLOAT8 = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))
PATCH, COMPUTE, GGUF = "patch", "compute", "gguf"
METHODS = {
    PATCH: "as a weight patch (ComfyUI adds it to the stored weights when it loads the model)",
    COMPUTE: "at compute time (a ComfyUI weight function adds it to the weights cast to the compute dtype)",
    GGUF: "as a weight patch that ComfyUI-GGUF applies when it dequantizes, in the compute dtype",
}
#: Weight functions this pack adds carry this attribute (their ``diff`` is the edit, float32 on the CPU).
EDIT_MARK = "scapre_edit"


@dataclass(frozen=True)
class Entry:
    """One weight of a MODEL as its patcher holds it: the stored original (unpatched) tensor, the
    function ComfyUI uses to read it as numbers, the patches and weight functions on it, its layer."""

    key: str
    weight: torch.Tensor
    convert: Callable | None
    patches: tuple
    wrappers: tuple
    layer: torch.nn.Module | None


def weight_names(model, prefix: str = "diffusion_model.") -> list[str]:
    """Names of the model's parameters under ``prefix`` (the state-dict names ``add_patches`` accepts),
    listed without building a state dict (which detaches every tensor)."""
    with model.use_ejected():
        return [name for name, _ in model.model.named_parameters() if name.startswith(prefix)]


def key_entries(model, keys: Iterable[str]) -> dict[str, Entry]:
    """The :class:`Entry` of each of ``keys``, read like ``ModelPatcher.get_key_patches`` reads them (the
    original from the patcher's backup while a patched clone is loaded), one key at a time.

    ``get_key_patches`` itself cannot be used on every model: it visits every state-dict name, and ComfyUI
    0.8.0 scaled fp8 layers list ``weight_scale`` / ``comfy_quant`` there, which are no attributes of the
    layer (AttributeError). Names that are not attributes are skipped here."""
    hook_backup = getattr(model, "hook_backup", {})
    out = {}
    for key in keys:
        try:
            weight, _, convert = comfy.model_patcher.get_key_weight(model.model, key)
        except AttributeError:
            continue
        backup = model.backup.get(key)
        if backup is not None:
            weight = backup.weight
        if key in hook_backup:
            weight = hook_backup[key][0]
        layer = comfy.utils.get_attr(model.model, key.rsplit(".", 1)[0]) if "." in key else None
        out[key] = Entry(key, weight, convert, tuple(model.patches.get(key, ())),
                         tuple(model.weight_wrapper_patches.get(key, ())), layer)
    return out


# ------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightFormat:
    """How one weight is stored. ``kind``: "float", "fp8", "scaled fp8" (ComfyUI 0.3.64), "quantized"
    (ComfyUI 0.8.0 mixed precision ops) or "gguf". ``storage``: the dtype of the stored numbers (None for
    GGUF blocks). ``scale``: for 0.3.64 scaled fp8, the factor the layer applies after its weight functions."""

    name: str
    kind: str
    storage: torch.dtype | None = None
    scale: float | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gguf_type(weight: torch.Tensor) -> str | None:
    """ComfyUI-GGUF's block type name (``Q8_0``, ``Q4_K``, ...) of a weight it must dequantize, else None
    (plain tensors, and its F16/F32 tensors, which torch reads as they are)."""
    qtype = getattr(weight, "tensor_type", None)
    if qtype is None or not hasattr(weight, "tensor_shape"):
        return None
    name = getattr(qtype, "name", str(qtype))
    return None if name in ("F32", "F16") else name


def is_quantized_tensor(weight: torch.Tensor) -> bool:
    """ComfyUI 0.8.0's ``QuantizedTensor`` (mixed precision ops: scaled fp8, nvfp4)."""
    return any(cls.__name__ == "QuantizedTensor" for cls in type(weight).__mro__)


def weight_format(entry: Entry) -> WeightFormat:
    weight = entry.weight
    qtype = gguf_type(weight)
    if qtype is not None:
        return WeightFormat(f"GGUF {qtype}", "gguf")
    if is_quantized_tensor(weight):
        fmt = str(getattr(entry.layer, "quant_format", None) or "quantized")
        name = f"scaled {fmt}" if fmt.startswith("float8") else fmt
        return WeightFormat(name, "quantized", getattr(torch, fmt, None) if fmt.startswith("float8") else None)
    scale = getattr(entry.layer, "scale_weight", None)
    if weight.dtype in FLOAT8 and isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return WeightFormat(f"scaled {dtype_name(weight.dtype)}", "scaled fp8", weight.dtype, float(scale))
    return WeightFormat(dtype_name(weight.dtype), "fp8" if weight.dtype in FLOAT8 else "float", weight.dtype)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor (tensor subclasses such as GGMLTensor dropped) with the same values."""
    return tensor if type(tensor) is torch.Tensor else tensor.as_subclass(torch.Tensor)


def gguf_dequantize(weight: torch.Tensor, layer, dtype: torch.dtype) -> torch.Tensor:
    """A GGUF weight as numbers, dequantized by ComfyUI-GGUF's own ``dequantize_tensor`` (the function its
    layers call, with the layer's ``dequant_dtype``), looked up beside the tensor's class. The tensor's
    ``patches`` (set while a patched clone is loaded) are not applied: these are the original values."""
    module = sys.modules.get(type(weight).__module__)
    dequantize = getattr(module, "dequantize_tensor", None)
    if dequantize is None:
        raise RuntimeError(f"cannot read a {type(weight).__name__} ({gguf_type(weight)}): ComfyUI-GGUF's "
                           f"dequantize_tensor was not found in {type(weight).__module__}; update ComfyUI-GGUF")
    with torch.no_grad():
        return _plain(dequantize(weight, dtype, getattr(layer, "dequant_dtype", None)))


def read_original(entry: Entry) -> torch.Tensor:
    """The stored original weight as numbers: float32 on the CPU (fp8 scaled, GGUF dequantized), as ComfyUI
    reads it before it applies patches."""
    if gguf_type(entry.weight) is not None:
        value = gguf_dequantize(entry.weight, entry.layer, torch.float32)
    else:
        value = comfy.model_management.cast_to_device(entry.weight, torch.device("cpu"), torch.float32, copy=True)
        if entry.convert is not None:
            value = entry.convert(value, inplace=True)
        if is_quantized_tensor(value):
            value = value.dequantize()
    return _plain(value).to(device="cpu", dtype=torch.float32)


def compute_dtype(model) -> torch.dtype:
    """The dtype the model's layers compute in when it samples (what ComfyUI casts the inputs to:
    ``manual_cast_dtype``, possibly set by a compute-dtype node, else the weights' dtype)."""
    cast = model.object_patches.get("manual_cast_dtype", getattr(model.model, "manual_cast_dtype", None))
    return cast if cast is not None else model.model.get_dtype()


def choose_method(fmt: WeightFormat, entry: Entry) -> str:
    """How to apply an edit to a weight of format ``fmt`` (see the module docstring)."""
    if fmt.kind == "gguf":
        return GGUF
    if fmt.kind in ("fp8", "scaled fp8", "quantized") and hasattr(entry.layer, "weight_function"):
        return COMPUTE
    return PATCH


@dataclass(frozen=True)
class Application:
    """How one matrix of an edit reaches the sampled weights."""

    key: str
    format: WeightFormat
    method: str
    compute: torch.dtype
    stored: torch.Tensor  # the stored original (for exact predictions)
    untouched: bool  # no patches or weight functions on it before this edit


def plan(model, entries: Mapping[str, Entry]) -> dict[str, Application]:
    """The :class:`Application` of every entry."""
    compute = compute_dtype(model)
    out = {}
    for key, entry in entries.items():
        fmt = weight_format(entry)
        out[key] = Application(key, fmt, choose_method(fmt, entry), compute, entry.weight,
                               not entry.patches and not entry.wrappers)
    return out


# ------------------------------------------------------------------------------------------------
# Applying an edit
# ------------------------------------------------------------------------------------------------

class ComputeTimeEdit:
    """A ComfyUI weight function (``ModelPatcher.add_weight_wrapper``) adding an edit to a weight when its
    layer computes, after ComfyUI cast (and dequantized) the stored weight to the compute dtype.

    ``diff`` is the edit (float32, CPU; the record's tensor). ``scale``: a ComfyUI 0.3.64 scaled-fp8 layer
    multiplies its weight by it after the weight functions, so ``diff / scale`` is added. ``move_to`` lets
    ComfyUI keep the addend on the compute device with the model and count its memory, as it does for its
    own training adapters."""

    scapre_edit = True

    def __init__(self, diff: torch.Tensor, dtype: torch.dtype, scale: float | None = None) -> None:
        self.diff = diff
        self.scale = scale
        self._addend = (diff if scale is None else diff / scale).to(dtype)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        addend = self._addend
        if addend.device != weight.device or addend.dtype != weight.dtype:
            addend = addend.to(device=weight.device, dtype=weight.dtype)
        return weight + addend

    def move_to(self, device=None) -> int:
        if device is None:
            return 0
        self._addend = self._addend.to(device)
        return self._addend.numel() * self._addend.element_size()

    def __deepcopy__(self, memo: dict) -> ComputeTimeEdit:
        return self


class CompactEdit(WeightAdapterBase):
    """A ComfyUI weight patch holding a compact change (``scapre_core.lowrank.LowRankChange``: a per-row
    rescaling of the weight plus a low-rank factor) instead of a dense ``[o, d]`` matrix: ComfyUI's
    ``calculate_weight`` calls it with the weight it applies to (the original plus the patches before it, as
    the edit read it), and it adds ``diag(row_scale) W + left @ right`` in float32, also where ComfyUI patches
    in a lower precision (low-VRAM patching, ComfyUI-GGUF), then returns the weight's own dtype. Only for
    whole weights (no ``offset``) applied as patches (``PATCH``, ``GGUF``)."""

    name = "scapre"

    def __init__(self, change: LowRankChange) -> None:
        self.change = change
        self.loaded_keys: set[str] = set()
        self.weights = [t for t in (change.row_scale, change.left, change.right) if t is not None]

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        if strength == 0.0:
            return weight
        if offset is not None or tuple(weight.shape) != tuple(self.change.shape):
            log.warning("ScaPre: the compact edit of %s is %s, the weight %s: not applied", key,
                        tuple(self.change.shape), tuple(weight.shape))
            return weight
        value = weight.to(torch.float32)
        diff = self.change.dense(value)
        if strength != 1.0:
            diff = diff * strength
        return (value + function(diff)).to(weight.dtype)

    def __deepcopy__(self, memo: dict) -> CompactEdit:
        return self


def patch_value(diff: torch.Tensor | LowRankChange):
    """The value of ComfyUI's ``add_patches`` for one of this pack's changes: ``(diff,)`` or a :class:`CompactEdit`."""
    return CompactEdit(diff) if isinstance(diff, LowRankChange) else (diff,)


def is_ours(value, ours: set[int]) -> bool:
    """Whether the patch ``value`` holds one of the changes whose ``id`` is in ``ours``."""
    if isinstance(value, CompactEdit):
        return id(value.change) in ours
    return isinstance(value, tuple) and len(value) == 1 and id(value[0]) in ours


def apply_edit(clone, diffs: Mapping[str, torch.Tensor | LowRankChange], applications: Mapping[str, Application]
               ) -> None:
    """Put ``diffs`` on ``clone`` (a fresh clone: the caller's input model stays untouched), each key by
    its application's method. A compact change (:class:`LowRankChange`) must be for a whole weight applied as
    a patch (``PATCH`` or ``GGUF``)."""
    compute = [k for k, d in diffs.items() if isinstance(d, LowRankChange) and applications[k].method == COMPUTE]
    if compute:
        raise AssertionError(f"a compact change cannot be applied at compute time ({compute[0]})")
    patches = {k: patch_value(d) for k, d in diffs.items() if applications[k].method != COMPUTE}
    added = set(clone.add_patches(patches, 1.0, 1.0)) if patches else set()
    missing = set(patches) - added
    if missing:
        raise RuntimeError(f"ComfyUI did not accept patches for {len(missing)} keys, e.g. {sorted(missing)[0]!r}")
    for key, diff in diffs.items():
        app = applications[key]
        if app.method == COMPUTE:
            scale = app.format.scale if app.format.kind == "scaled fp8" else None
            clone.add_weight_wrapper(key, ComputeTimeEdit(diff, app.compute, scale))


def is_edit_function(function) -> bool:
    return bool(getattr(function, EDIT_MARK, False))


def bake_compute_edits(model):
    """``model``, or a clone of it whose compute-time edits are weight patches instead, for savers that
    write the stored weights (checkpoint savers): they do not run the layers, so they would miss the
    edits. The saved fp8 weights then hold the edits as fp8 can (stochastically rounded). Raises for GGUF
    models, which ComfyUI cannot write as a checkpoint."""
    names = [k for k in weight_names(model) if k.endswith(".weight")]
    for entry in key_entries(model, [k for k in names if k in model.patches or k in model.weight_wrapper_patches]
                             ).values():
        if gguf_type(entry.weight) is not None:
            raise ValueError("this MODEL is a GGUF model (ComfyUI-GGUF): ComfyUI cannot write it as a checkpoint. "
                             "Save the edit with ScaPre Save LoRA instead; it loads on the GGUF model and on the "
                             "full-precision one")
    ours = {k: [f for f in fs if is_edit_function(f)] for k, fs in model.weight_wrapper_patches.items()}
    ours = {k: fs for k, fs in ours.items() if fs}
    if not ours:
        return model
    clone = model.clone()
    for key in ours:
        rest = [f for f in clone.weight_wrapper_patches[key] if not is_edit_function(f)]
        if rest:
            clone.weight_wrapper_patches[key] = rest
        else:
            del clone.weight_wrapper_patches[key]
    clone.patches_uuid = uuid.uuid4()
    clone.add_patches({k: (sum(f.diff for f in fs),) for k, fs in ours.items()}, 1.0, 1.0)
    log.info("ScaPre: %d compute-time edits written into the weights for saving", len(ours))
    return clone


# ------------------------------------------------------------------------------------------------
# What the model will sample with
# ------------------------------------------------------------------------------------------------

def sampled_pair(app: Application, weight: torch.Tensor, change: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights the unedited and the edited model sample with for one matrix, predicted as ComfyUI
    computes them (same casts and additions): ``weight`` is the effective weight the edit was computed on
    (float32), ``change`` the edit. Exact when the matrix carried nothing before (``app.untouched``);
    otherwise the earlier patches are taken as read in float32 (their own rounding into the storage format
    is left out)."""
    c = app.compute
    weight = weight.detach().to("cpu", torch.float32)
    change = change.detach().to("cpu", torch.float32)
    if app.method == PATCH:
        storage = app.format.storage or torch.float32
        if storage in FLOAT8:  # a layer without weight functions: ComfyUI's stochastic rounding into fp8
            seed = comfy.model_patcher.string_to_seed(app.key)
            return (weight.to(storage).to(c) if app.untouched else _round8(weight, storage, seed).to(c),
                    _round8(weight + change, storage, seed).to(c))
        return weight.to(storage).to(c), (weight + change).to(storage).to(c)
    if app.method == COMPUTE and app.format.kind == "scaled fp8":
        scale = app.format.scale
        stored = (app.stored.to("cpu").to(c) if app.untouched else (weight / scale).to(c))
        addend = (change / scale).to(c)
        scale_c = torch.tensor(scale, dtype=torch.float32).to(c)
        return stored * scale_c, (stored + addend) * scale_c
    base = weight.to(c)  # COMPUTE (fp8, mixed ops) and GGUF: the dequantized weight in the compute dtype
    return base, base + change.to(c)


def _round8(value: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    import comfy.float

    return comfy.float.stochastic_rounding(value, dtype, seed=seed)


def describe(applications: Mapping[str, Application]) -> dict[str, str]:
    """Format, compute dtype and method in words (one entry each; counts when the matrices differ)."""

    def words(values: list[str]) -> str:
        counts: dict[str, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{v} ({n} matrices)" for v, n in counts.items())

    apps = list(applications.values())
    return {"format": words([a.format.name for a in apps]),
            "compute_dtype": words([dtype_name(a.compute) for a in apps]),
            "applied": words([METHODS[a.method] for a in apps]),
            "methods": words([a.method for a in apps])}


def notes(applications: Mapping[str, Application]) -> list[str]:
    """Warnings a user needs about how the edit was applied."""
    out = []
    compute = [a for a in applications.values() if a.method == COMPUTE]
    if compute:
        out.append(f"{len(compute)} matrices are stored as {compute[0].format.name}: the edit is applied at compute "
                   "time (rounding it into the stored weights would lose much of it). ComfyUI's own Save Checkpoint "
                   "and model-merge nodes do not see edits applied this way: save with ScaPre Save Checkpoint or "
                   "ScaPre Save LoRA")
    return out


# ------------------------------------------------------------------------------------------------
# What an edit is computed on
# ------------------------------------------------------------------------------------------------

def patch_kind(value: Any) -> str:
    """A ComfyUI patch value in words: "LoRA", "LoHa", ... (weight adapters), "model merge" (another
    model's weights, as ModelMergeSimple adds them), or the patch type ("diff", "set", ...)."""
    if isinstance(value, list):
        return "model merge"
    if isinstance(value, tuple):
        return "diff" if len(value) == 1 else str(value[0])
    name = type(value).__name__
    return name.removesuffix("Adapter") or name


def describe_base(entries: Mapping[str, Entry], records) -> dict[str, Any]:
    """What an edit of ``entries`` (the matrices it edits) is computed on: the earlier ScaPre edits
    (``records``, the model's edit records) on them, other patches grouped by kind and strength, and
    weight functions of other nodes. ``text`` says it in one line."""
    ours = {id(d) for r in records for d in r.diffs.values()}
    groups: dict[tuple[str, float, float], set[str]] = {}
    functions = set()
    for key, entry in entries.items():
        for patch in entry.patches:
            strength, value, strength_model = patch[0], patch[1], patch[2]
            if is_ours(value, ours):
                continue
            groups.setdefault((patch_kind(value), float(strength), float(strength_model)), set()).add(key)
        if any(not is_edit_function(f) for f in entry.wrappers):
            functions.add(key)
    earlier = sum(1 for r in records if set(r.diffs) & set(entries))
    others = [{"kind": kind, "strength": s, "strength_model": sm, "matrices": len(keys)}
              for (kind, s, sm), keys in sorted(groups.items())]
    total = len(entries)
    parts = ["the original weights"]
    for o in others:
        model_part = "" if o["strength_model"] == 1.0 else f", model strength {o['strength_model']:g}"
        parts.append(f"{o['kind']} (strength {o['strength']:g}{model_part}) on {o['matrices']} of {total} matrices")
    if functions:
        parts.append(f"weight functions of other nodes on {len(functions)} of {total} matrices")
    if earlier:
        parts.append(f"{earlier} earlier ScaPre edit{'s' if earlier > 1 else ''}")
    return {"earlier_scapre_edits": earlier, "other_patches": others, "other_weight_functions": len(functions),
            "matrices": total, "text": " + ".join(parts)}


# ------------------------------------------------------------------------------------------------
# One edit, start to end
# ------------------------------------------------------------------------------------------------

class EditTracker:
    """What an edit needs to know about the model's weights, gathered while it runs: how each matrix will be
    applied (:func:`plan`), what it is computed on (:func:`describe_base`), and how much of each matrix's
    change the sampled weights will carry (``scapre_core.survival``). ``weights`` is the edit's
    ``EffectiveWeights`` (its ``entries`` and ``foreign_functions``); ``records`` the model's earlier edits."""

    def __init__(self, model, weights, records) -> None:
        self.applications = plan(model, weights.entries)
        self.computed_on = describe_base(weights.entries, records)
        self.foreign_functions = list(weights.foreign_functions)
        self.meter = SurvivalMeter()

    def add(self, key: str, weight: torch.Tensor, change: torch.Tensor) -> None:
        """One edited matrix: ``weight`` as the edit read it (float32), ``change`` the edit."""
        self.meter.add(key, change, *sampled_pair(self.applications[key], weight, change))

    def info(self) -> dict[str, Any]:
        """The report's ``weights`` (format, compute dtype, method, surviving fraction) and ``computed_on``."""
        applied = {k: a for k, a in self.applications.items() if k in self.meter.matrices}
        return {"weights": {**describe(applied), **self.meter.summary()}, "computed_on": self.computed_on}

    def warnings(self) -> list[str]:
        """Compute-time application, a sampled edit off by more than ``WARN_ERROR``, unreadable weight
        functions of other nodes."""
        applied = {k: a for k, a in self.applications.items() if k in self.meter.matrices}
        out = notes(applied)
        w = self.info()["weights"]
        error = w.get("error")
        if error is None or error > WARN_ERROR:
            surviving = w.get("surviving")
            out.append(f"the weights this model samples with differ from the computed edit by "
                       f"{'an unbounded amount' if error is None else f'{100 * error:.3g} %'} of the edit (surviving "
                       f"fraction {surviving if surviving is None else round(surviving, 4)}; weights {w['format']}, "
                       f"edit applied {w['applied']}, compute dtype {w['compute_dtype']}): their rounding is coarse "
                       f"next to this edit. For a faithful edit load the weights in a finer format (float32, or "
                       f"float16 rather than bfloat16 or fp8) and compute in float32 (ModelComputeDtype)")
        if self.foreign_functions:
            out.append(f"{len(self.foreign_functions)} matrices carry weight functions of other nodes, which "
                       "cannot be read: the edit was computed without them")
        return out
