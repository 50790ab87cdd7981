"""Saving edits that sit on top of other changes: what a saved ScaPre LoRA applies to (from what each edit
was computed on: ``formats.describe_base``), and the whole change a MODEL carries relative to its original
weights (docs/model-formats.md, "Edits on top of LoRAs and other edits").

A ScaPre edit is computed on the weights the model has when it is erased. With a LoRA loaded first, the
edit is the right change for checkpoint + LoRA, not for the checkpoint alone: a LoRA file holding only the
edit reproduces the edited model when it is loaded after the same LoRA. "All changes" holds the LoRA's part
too, and turns the original checkpoint into the edited model.
"""

from __future__ import annotations

import torch

from . import formats
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
