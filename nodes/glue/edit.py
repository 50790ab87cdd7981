"""The edit itself, once for every caller: encoded concepts and a config in, an edited clone of the
MODEL (patches on the cross-attention keys/values) and its :class:`EditRecord` out (SPEC "The
closed-form solve"; COMFY_NOTES (a))."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import comfy.model_management
import torch

from ...scapre_core import ScaPreConfig, __version__, erase_iter
from ...scapre_core.concepts import ConceptSet
from ...scapre_core.report import REPORT_TOKENS, ReportBuilder
from ...scapre_core.solve import CONCEPT_BLOCK
from .payloads import EditRecord, EncodedConcepts, InformaxPayload
from .weights import EffectiveWeights, compute_device, kv_keys, patched_clone

log = logging.getLogger("comfyui-scapre")


def check_concepts(concepts) -> EncodedConcepts:
    if not isinstance(concepts, EncodedConcepts):
        raise ValueError("concepts must come from a ScaPre Concept Encode node")
    return concepts


def _tokens(cs: ConceptSet | None) -> int:
    return 0 if cs is None else sum(int(c.shape[0]) for c in cs.contexts) + sum(int(g.shape[0]) for g in cs.guides)


def working_memory(concepts: EncodedConcepts, shapes: Mapping[str, tuple[int, ...]], config: ScaPreConfig) -> int:
    """Bytes the edit and its report hold on the compute device at once (an estimate on the high side):
    the text side (contexts twice, a few ``d x d`` bases), the largest matrix's working copies, the
    Informax draws and activations, one block of the data term and a few blocks of the report."""
    d = concepts.width
    rows = max((int(s[0]) for s in shapes.values()), default=0)
    erase = concepts.erase
    draws = erase.num_concepts * max(config.entropy_samples, 2 * config.mi_samples)
    floats = (
        3 * _tokens(erase) * d + _tokens(concepts.probes) * d + _tokens(concepts.preserve) * d  # text, both sides
        + 4 * d * d  # eigenbasis, preserve Gram, SVD factors
        + 10 * rows * d  # W0, its change, right-hand side, solved rows, products in the eigenbasis
        + draws * (d + rows)  # Informax/entropy: noisy concept vectors and their activations
        + 2 * rows * CONCEPT_BLOCK * 77  # one block of the data term
        + 6 * rows * REPORT_TOKENS  # one block of the report
    )
    return 4 * floats * (2 if config.precision == "float64" else 1)


def make_room(device: torch.device, memory_required: int) -> None:
    """Ask ComfyUI to unload models from ``device`` until ``memory_required`` bytes are free, as its own
    nodes do before GPU work (``comfy.model_management.free_memory``); nothing to do on the CPU."""
    if device.type == "cpu":
        return
    comfy.model_management.free_memory(memory_required, device)


def run_erase(model, concepts: EncodedConcepts, config: ScaPreConfig, edit: str = "keys and values",
              informax: InformaxPayload | None = None, step: Callable[[int, int], None] | None = None,
              warnings: tuple[str, ...] = (), origin: Mapping[str, Any] | None = None):
    """``(edited_model, record)``: ``model`` erased of ``concepts`` with ``config``; ``model`` is untouched.

    ``informax`` (optional) supplies precomputed row weights; its settings (seed and precision included)
    then win over ``config``'s Informax fields. ``origin`` says where ``config`` came from (e.g.
    ``{"source": "preset", "preset": "artists", "strength": 1.0}``). What was used, and every setting the
    Informax node replaced, is recorded as ``report.info["used"]`` (shown on the node, saved with the
    edit). ``step(done, total)`` runs after each matrix and may raise to cancel."""
    concepts = check_concepts(concepts)
    warnings = [*concepts.plan.warnings, *warnings]
    given, replaced = None, {}
    if informax is not None:
        if not isinstance(informax, InformaxPayload):
            raise ValueError("informax must come from a ScaPre Informax node")
        replaced = {k: v for k, v in informax.config.informax_key().items() if getattr(config, k) != v}
        if replaced:
            log.info("ScaPre Erase: using ScaPre Informax's settings: %s",
                     ", ".join(f"{k}={v!r}" for k, v in replaced.items()))
            config = config.replace(**replaced)
        given = informax.result
    used = {**dict(origin or {}), "seed": config.seed, "precision": config.precision, "edit": edit,
            "informax": "from ScaPre Informax" if given is not None else "computed here",
            "replaced_by_informax": replaced}
    keys = kv_keys(model, concepts.width, edit)
    weights = EffectiveWeights(model, keys)
    device = compute_device(model)
    entries = model.get_key_patches("diffusion_model.")
    make_room(device, working_memory(concepts, {k: tuple(entries[k][0][0].shape) for k in keys}, config))
    builder = ReportBuilder({"erase": concepts.erase, "probe": concepts.probes, "preserve": concepts.preserve},
                            device=device)
    diffs = {}
    start = time.perf_counter()
    for name, change in erase_iter(weights, concepts.erase, config, given, step, device=device, changes=True):
        original = weights[name]
        change = change.to(original.dtype)  # the patch: the change as computed, not edited - original
        builder.add(name, original, original + change)
        diffs[name] = change
    seconds = time.perf_counter() - start
    report = builder.build(config=config.to_dict(), seconds=seconds, warnings=tuple(warnings),
                           concept_of=concepts.concept_of(),
                           info={**concepts.describe(), "edit": edit, "version": __version__,
                                 "informax": "precomputed" if given is not None else "computed", "used": used})
    record = EditRecord(diffs=diffs, report=report, concepts=concepts.describe(), config=config.to_dict(),
                        edit=edit, version=__version__)
    edited_model = patched_clone(model, diffs, record)
    summary = report.summary()
    log.info("ScaPre Erase: %d concept(s), %d matrices in %.2f s, mean efficacy %s", summary["concepts"],
             summary["matrices"], seconds, summary["mean_efficacy"])
    return edited_model, record
