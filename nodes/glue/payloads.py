"""The values that travel between the pack's nodes (custom socket types), and the record an
edited MODEL carries so that it can be saved, re-edited and explained.

All are frozen; ``__deepcopy__`` returns the object itself because ComfyUI deep-copies model
options on every ``clone()`` and these hold tensors that must be shared, not duplicated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ...scapre_core.concepts import ConceptSet
from ...scapre_core.config import ScaPreConfig
from ...scapre_core.informax import InformaxResult
from ...scapre_core.lowrank import LowRankChange
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
    #: Every prompt as the text encoder gave it (text -> :class:`glue.encode.Encoding`), from which the edit
    #: builds each model's own contexts; and the text encoder's layout name (``glue.architectures``).
    encodings: Mapping[str, Any] = field(default_factory=dict)
    text_encoder: str = ""
    focus: ConceptSet | None = None  # the focus variant's text side (look-alike guides, references); None: off
    #: The erase prompts with their own guides on ``focus``'s tokens, which strength above 1 moves towards ``focus``'s
    #: guides (beyond the paper); None where ``focus`` is.
    own_guides: ConceptSet | None = None
    look_alikes: Mapping[str, tuple[str, ...]] | None = None  # per concept, the look-alikes that guide it
    notes: tuple[str, ...] = ()  # what the encode node's summary says besides the plan's warnings

    def concept_of(self) -> dict[str, str]:
        return {p: self.plan.concepts[j] for p, j in zip(self.plan.prompts, self.plan.concept_index, strict=True)}

    def describe(self) -> dict[str, Any]:
        return {
            "concepts": list(self.plan.concepts), "prompts": list(self.plan.prompts),
            "guides": sorted(set(self.plan.guides)), "preserve": list(self.plan.preserve),
            "probes": list(self.plan.probes), "concept_type": self.concept_type, "text_width": self.width,
            **({"text_encoder": self.text_encoder} if self.text_encoder else {}),
            **({"look_alikes": {k: list(v) for k, v in self.look_alikes.items()}} if self.look_alikes else {}),
        }


@dataclass(frozen=True, eq=False)
class InformaxPayload(_Shared):
    """``SCAPRE_INFORMAX``: row weights and entropy factors for every key/value matrix of a model."""

    result: InformaxResult
    config: ScaPreConfig
    keys: tuple[str, ...]
    #: One result per text stream the model's edited weights read (``glue.architectures``); ``result`` is
    #: the ``"text"`` stream's.
    streams: Mapping[str, InformaxResult] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class EditRecord(_Shared):
    """One ScaPre edit applied to a MODEL: what was erased, how, and the exact weight differences
    (the same tensors as the model's patches; ``W_new - W_in`` per key, float32 on the CPU). A difference with
    a compact form (``scapre_core.lowrank.LowRankChange``: a row rescaling of ``W_in`` plus a low-rank factor)
    is held in it; ``stack.edit_changes`` gives every difference as a matrix."""

    diffs: Mapping[str, torch.Tensor | LowRankChange]
    report: EditReport
    concepts: Mapping[str, Any]
    config: Mapping[str, Any]
    edit: str
    version: str

    def provenance(self) -> dict[str, Any]:
        return {**self.concepts, "config": dict(self.config), "edit": self.edit, "matrices": len(self.diffs),
                "summary": self.report.summary(), "used": dict(self.report.info.get("used", {})),
                **self.base()}

    def base(self) -> dict[str, Any]:
        """What the edit was computed on and the weights it reached (``nodes/glue/formats.py``): the model's
        weight format, how the edit was applied, its surviving fraction (per-matrix figures left out)."""
        weights = {k: v for k, v in (self.report.info.get("weights") or {}).items() if k != "per_matrix"}
        return {"computed_on": self.report.info.get("computed_on"), "weights": weights}


def total_diffs(records: tuple[EditRecord, ...]) -> dict[str, torch.Tensor]:
    """The sum of every record's differences per key: successive edits compose by addition."""
    total: dict[str, torch.Tensor] = {}
    for record in records:
        for key, diff in record.diffs.items():
            total[key] = diff.clone() if key not in total else total[key] + diff
    return total


#: The one safetensors metadata entry the pack writes (README "What a saved file records").
METADATA_KEY = "scapre"
METADATA_FORMAT = "scapre-metadata/1"


def provenance(records: tuple[EditRecord, ...], version: str, **extra: Any) -> dict[str, Any]:
    """What a saved file records: ``format``, ``pack``, ``version``, every erased ``concepts`` and
    ``guides``, one entry per edit in ``edits``, and ``extra`` (e.g. ``lora={"rank": 0, ...}``)."""
    edits = [r.provenance() for r in records]
    return _plain({
        "format": METADATA_FORMAT, "pack": PACK_NAME, "version": version,
        "concepts": [c for e in edits for c in e.get("concepts", [])],
        "guides": sorted({g for e in edits for g in e.get("guides", [])}),
        "edits": edits, **extra,
    })


def provenance_metadata(records: tuple[EditRecord, ...], version: str, **extra: Any) -> dict[str, str]:
    """Safetensors metadata (string values): the single ``scapre`` entry, a JSON object."""
    return {METADATA_KEY: json.dumps(provenance(records, version, **extra))}


def read_provenance(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    """What a file saved by the pack records, from its safetensors metadata, or None when it records
    nothing. Reads this version's ``scapre`` entry and the two layouts of 0.2.0: a ``scapre`` object
    without ``format`` (ScaPre Save Checkpoint) and ``scapre.*`` keys (ScaPre Save LoRA, the command line).
    The result always has ``concepts`` (a list) and ``version``."""
    metadata = metadata or {}
    if METADATA_KEY in metadata:
        try:
            found = json.loads(metadata[METADATA_KEY])
        except (TypeError, ValueError):
            return None
        if not isinstance(found, dict):
            return None
        if "concepts" not in found:  # 0.2.0's ScaPre Save Checkpoint: the concepts are in each edit
            found["concepts"] = [c for e in found.get("edits", []) if isinstance(e, dict)
                                 for c in e.get("concepts", [])]
        found.setdefault("version", "unknown")
        return found
    if "scapre.pack" not in metadata and "scapre.concepts" not in metadata:
        return None
    found: dict[str, Any] = {"format": "scapre.* keys (0.2.0)", "pack": metadata.get("scapre.pack", PACK_NAME),
                             "version": metadata.get("scapre.version", "unknown")}
    for key in ("concepts", "guides", "edits"):
        try:
            found[key] = json.loads(metadata.get(f"scapre.{key}", "[]"))
        except ValueError:
            found[key] = []
    if "scapre.rank" in metadata:
        found["lora"] = {"rank": metadata["scapre.rank"], "rel_error": metadata.get("scapre.rel_error")}
    return found


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (tuples as lists, anything else as its string)."""
    return json.loads(json.dumps(value, default=str))


def report_bundle(records: tuple[EditRecord, ...], version: str, saved_as: str) -> str:
    """The JSON saved next to a LoRA or checkpoint: every edit's full report."""
    return json.dumps({
        "format": "scapre-report-bundle/1", "pack": PACK_NAME, "version": version, "file": saved_as,
        "edits": [{**r.provenance(), "report": r.report.to_dict()} for r in records],
    }, indent=1, default=str)
