"""The edit itself, once for every caller: encoded concepts and a config in, an edited clone of the
MODEL (patches on the cross-attention keys/values) and its :class:`EditRecord` out (SPEC "The
closed-form solve"; COMFY_NOTES (a))."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ...scapre_core import ScaPreConfig, __version__, erase_iter
from ...scapre_core.report import ReportBuilder
from . import formats
from .payloads import EditRecord, EncodedConcepts, InformaxPayload
from .weights import EffectiveWeights, compute_device, edit_records, kv_keys, patched_clone

log = logging.getLogger("comfyui-scapre")


def check_concepts(concepts) -> EncodedConcepts:
    if not isinstance(concepts, EncodedConcepts):
        raise ValueError("concepts must come from a ScaPre Concept Encode node")
    return concepts


def run_erase(model, concepts: EncodedConcepts, config: ScaPreConfig, edit: str = "keys and values",
              informax: InformaxPayload | None = None, step: Callable[[int, int], None] | None = None,
              warnings: tuple[str, ...] = ()):
    """``(edited_model, record)``: ``model`` erased of ``concepts`` with ``config``; ``model`` is untouched.

    ``informax`` (optional) supplies precomputed row weights; its settings then win over ``config``'s
    Informax fields (noted in the report's warnings). ``step(done, total)`` runs after each matrix and
    may raise to cancel."""
    concepts = check_concepts(concepts)
    warnings = [*concepts.plan.warnings, *warnings]
    given = None
    if informax is not None:
        if not isinstance(informax, InformaxPayload):
            raise ValueError("informax must come from a ScaPre Informax node")
        changed = {k: v for k, v in informax.config.informax_key().items() if getattr(config, k) != v}
        if changed:
            note = "using the Informax node's settings: " + ", ".join(f"{k}={v!r}" for k, v in changed.items())
            log.warning("ScaPre Erase: %s", note)
            warnings.append(note)
            config = config.replace(**changed)
        given = informax.result
    keys = kv_keys(model, concepts.width, edit)
    weights = EffectiveWeights(model, keys)
    tracker = formats.EditTracker(model, weights, edit_records(model))  # how the edit reaches the sampled weights
    device = compute_device(model)
    builder = ReportBuilder({"erase": concepts.erase, "probe": concepts.probes, "preserve": concepts.preserve},
                            device=device)
    diffs = {}
    start = time.perf_counter()
    for name, change in erase_iter(weights, concepts.erase, config, given, step, device=device, changes=True):
        original = weights[name]
        change = change.to(original.dtype)  # the patch: the change as computed, not edited - original
        builder.add(name, original, original + change)
        tracker.add(name, original, change)
        diffs[name] = change
    seconds = time.perf_counter() - start
    warnings += tracker.warnings()
    report = builder.build(config=config.to_dict(), seconds=seconds, warnings=tuple(warnings),
                           concept_of=concepts.concept_of(),
                           info={**concepts.describe(), "edit": edit, "version": __version__,
                                 "informax": "precomputed" if given is not None else "computed",
                                 **tracker.info()})
    record = EditRecord(diffs=diffs, report=report, concepts=concepts.describe(), config=config.to_dict(),
                        edit=edit, version=__version__)
    edited_model = patched_clone(model, diffs, record, tracker.applications)
    summary = report.summary()
    log.info("ScaPre Erase: %d concept(s), %d matrices in %.2f s, mean efficacy %s", summary["concepts"],
             summary["matrices"], seconds, summary["mean_efficacy"])
    return edited_model, record
