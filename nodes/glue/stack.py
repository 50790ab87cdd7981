"""Saving edits that sit on top of other changes: what a saved ScaPre LoRA applies to (from what each edit
was computed on: ``formats.describe_base``), and the whole change a MODEL carries relative to its original
weights (docs/model-formats.md, "Edits on top of LoRAs and other edits").

A ScaPre edit is computed on the weights the model has when it is erased. With a LoRA loaded first, the
edit is the right change for checkpoint + LoRA, not for the checkpoint alone: a LoRA file holding only the
edit reproduces the edited model when it is loaded after the same LoRA. "All changes" holds the LoRA's part
too, and turns the original checkpoint into the edited model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import comfy.lora
import torch

from ...scapre_core.lowrank import LowRankChange
from . import formats
from .payloads import total_diffs
from .weights import EffectiveWeights

#: ScaPre Save LoRA's ``contents`` choices.
EDITS, ALL_CHANGES = "ScaPre edits", "all changes"
CONTENTS = (EDITS, ALL_CHANGES)
UNET_PREFIX = "diffusion_model."


def foreign_base(record) -> bool:
    """Whether ``record``'s edit was computed on changes other than ScaPre edits (LoRAs, merges, ...)."""
    base = record.report.info.get("computed_on") or {}
    return bool(base.get("other_patches") or base.get("other_weight_functions"))


def applies_to(records, contents: str) -> str:
    """The model a LoRA saved with ``contents`` reproduces the edited model on, in words."""
    if contents == ALL_CHANGES:
        return "the original model (the file holds every change the MODEL carries relative to its original weights)"
    bases = [r.report.info["computed_on"]["text"] for r in records if foreign_base(r)]
    if not bases:
        return "the original model"
    return ("the model the edits were computed on: " + "; ".join(dict.fromkeys(bases))
            + " (load the same LoRAs first, at the same strengths)")


def base_warning(records, contents: str) -> str | None:
    """A warning when a LoRA of the edits alone will likely be loaded on a model other than the one
    they were computed on (users load LoRAs on the original checkpoint)."""
    if contents == ALL_CHANGES or not any(foreign_base(r) for r in records):
        return None
    return (f"this LoRA holds only the ScaPre edits, which were computed on {applies_to(records, contents)}: it "
            "reproduces the edited model only there, not on the original checkpoint. Save with contents "
            f"'{ALL_CHANGES}' for one file that turns the original checkpoint into the edited model")


def lora_metadata(records, contents: str) -> dict[str, str]:
    """What a LoRA file holds and what it applies to, for its metadata's ``lora`` entry (each edit's entry
    records what it was computed on and the model's weight format: ``EditRecord.provenance``)."""
    return {"contents": contents, "applies_to": applies_to(records, contents)}


def all_changes(model) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every change the MODEL's UNet carries relative to its original weights (patches of any kind and
    this pack's compute-time edits), ``{key: W_now - W_original}`` in float32 on the CPU, and warnings
    (weight functions of other nodes cannot be read and are left out)."""
    names = formats.weight_names(model, UNET_PREFIX)
    keys = [k for k in names if k in model.patches
            or any(formats.is_edit_function(f) for f in model.weight_wrapper_patches.get(k, ()))]
    weights = EffectiveWeights(model, keys)
    out = {}
    for key in weights:
        change = weights[key] - formats.read_original(weights.entries[key])
        if bool(change.any()):
            out[key] = change
    warnings = []
    if weights.foreign_functions:
        warnings.append(f"{len(weights.foreign_functions)} weights carry weight functions of other nodes, which a "
                        "LoRA cannot hold: they are not in this file")
    return out, warnings


class EditChanges(Mapping):
    """The summed change of the ScaPre edits ``records`` per weight, ``W - W_in`` in float32 on the CPU, one
    weight at a time (nothing held but the last): a dense change as it is stored; a compact one
    (``scapre_core.lowrank``) made dense on the weight it applies to, the key's original with every patch
    before it in the model's patch list, as ComfyUI applies them (``formats.CompactEdit``)."""

    def __init__(self, model, records) -> None:
        self._records = tuple(records)
        self._keys = sorted({k for r in self._records for k in r.diffs})
        self._compact = {id(d) for r in self._records for d in r.diffs.values() if isinstance(d, LowRankChange)}
        self._entries = formats.key_entries(model, [k for k in self._keys if any(
            isinstance(r.diffs.get(k), LowRankChange) for r in self._records)])
        self._last: tuple[str, torch.Tensor] | None = None

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        with torch.no_grad():
            total = self._change(key)
        self._last = (key, total)
        return total

    def _change(self, key: str) -> torch.Tensor:
        if key not in self._entries:
            total = None
            for record in self._records:
                d = record.diffs.get(key)
                if d is not None:
                    total = d.to(torch.float32).clone() if total is None else total + d
            if total is None:
                raise KeyError(key)
            return total
        entry = self._entries[key]
        weight = formats.read_original(entry).to(torch.float32)
        total = torch.zeros_like(weight)
        found = 0
        for patch in entry.patches:
            value = patch[1]
            if isinstance(value, formats.CompactEdit) and id(value.change) in self._compact:
                change = value.change.dense(weight)
                if patch[0] != 1.0:
                    change = change * patch[0]
                total += change
                weight = weight + change
                found += 1
                continue
            weight = comfy.lora.calculate_weight([patch], weight, key, intermediate_dtype=torch.float32)
        if found != sum(1 for r in self._records if isinstance(r.diffs.get(key), LowRankChange)):
            raise RuntimeError(f"the model does not carry every ScaPre edit of {key} as a patch: save the edit from "
                               "the MODEL that ScaPre Erase output")
        dense = [r.diffs[key] for r in self._records if isinstance(r.diffs.get(key), torch.Tensor)]
        for d in dense:
            total += d.to(torch.float32)
        return total

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def edit_changes(model, records) -> Mapping[str, torch.Tensor]:
    """The summed change of the ScaPre edits ``records`` of ``model`` per weight (float32, CPU): the records'
    own dense changes added up when every change is dense, else :class:`EditChanges` (made dense from the
    model, one weight at a time)."""
    if all(isinstance(d, torch.Tensor) for r in records for d in r.diffs.values()):
        return total_diffs(tuple(records))
    return EditChanges(model, records)
