"""The values that travel between the pack's nodes (custom socket types), and the record an
edited MODEL carries so that it can be saved, re-edited and explained.

All are frozen; ``__deepcopy__`` returns the object itself because ComfyUI deep-copies model
options on every ``clone()`` and these hold tensors that must be shared, not duplicated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ...scapre_core.concepts import ConceptSet
from ...scapre_core.config import ScaPreConfig
from ...scapre_core.informax import InformaxResult
from ...scapre_core.prompts import PromptPlan
from ...scapre_core.report import EditReport

PACK_NAME = "comfyui-scapre"
#: Key under ``ModelPatcher.model_options`` holding the tuple of :class:`EditRecord`.
MODEL_OPTIONS_KEY = "scapre_edits"


class _Shared:
    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


@dataclass(frozen=True, eq=False)
class EncodedConcepts(_Shared):
    """``SCAPRE_CONCEPTS``: the encoded prompts of one encode node.

    ``erase`` drives the edit (erase prompts, guides, preserve prompts); ``probes`` and
    ``preserve`` are the watched prompts, aligned with the common guide, for the report only."""

    erase: ConceptSet
    plan: PromptPlan
    probes: ConceptSet | None
    preserve: ConceptSet | None
    width: int
    concept_type: str = ""
    focus: ConceptSet | None = None  # the focus variant's text side (look-alike guides, references); None: off
    look_alikes: Mapping[str, tuple[str, ...]] | None = None  # per concept, the look-alikes that guide it

    def concept_of(self) -> dict[str, str]:
        return {p: self.plan.concepts[j] for p, j in zip(self.plan.prompts, self.plan.concept_index, strict=True)}

    def describe(self) -> dict[str, Any]:
        return {
            "concepts": list(self.plan.concepts), "prompts": list(self.plan.prompts),
            "guides": sorted(set(self.plan.guides)), "preserve": list(self.plan.preserve),
            "probes": list(self.plan.probes), "concept_type": self.concept_type, "text_width": self.width,
            **({"look_alikes": {k: list(v) for k, v in self.look_alikes.items()}} if self.look_alikes else {}),
        }


@dataclass(frozen=True, eq=False)
class InformaxPayload(_Shared):
    """``SCAPRE_INFORMAX``: row weights and entropy factors for every key/value matrix of a model."""

    result: InformaxResult
    config: ScaPreConfig
    keys: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class EditRecord(_Shared):
    """One ScaPre edit applied to a MODEL: what was erased, how, and the exact weight differences
    (the same tensors as the model's patches; ``W_new - W_in`` per key, float32 on the CPU)."""

    diffs: Mapping[str, torch.Tensor]
    report: EditReport
    concepts: Mapping[str, Any]
    config: Mapping[str, Any]
    edit: str
    version: str

    def provenance(self) -> dict[str, Any]:
        return {**self.concepts, "config": dict(self.config), "edit": self.edit, "matrices": len(self.diffs),
                "summary": self.report.summary()}


def total_diffs(records: tuple[EditRecord, ...]) -> dict[str, torch.Tensor]:
    """The sum of every record's differences per key: successive edits compose by addition."""
    total: dict[str, torch.Tensor] = {}
    for record in records:
        for key, diff in record.diffs.items():
            total[key] = diff.clone() if key not in total else total[key] + diff
    return total


def provenance_metadata(records: tuple[EditRecord, ...], version: str) -> dict[str, str]:
    """Safetensors metadata (string values) recording concepts, guides, config and pack version."""
    edits = [r.provenance() for r in records]
    concepts = [c for e in edits for c in e.get("concepts", [])]
    return {
        "scapre.pack": PACK_NAME,
        "scapre.version": version,
        "scapre.concepts": json.dumps(concepts),
        "scapre.guides": json.dumps(sorted({g for e in edits for g in e.get("guides", [])})),
        "scapre.edits": json.dumps(edits, default=str),
    }


def report_bundle(records: tuple[EditRecord, ...], version: str, saved_as: str) -> str:
    """The JSON saved next to a LoRA or checkpoint: every edit's full report."""
    return json.dumps({
        "format": "scapre-report-bundle/1", "pack": PACK_NAME, "version": version, "file": saved_as,
        "edits": [{**r.provenance(), "report": r.report.to_dict()} for r in records],
    }, indent=1, default=str)
