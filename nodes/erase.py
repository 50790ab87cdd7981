"""ScaPreInformax and ScaPreErase: row weights, then the edit as patches on a clone of the MODEL."""

from __future__ import annotations

import dataclasses
import time

from comfy_api.latest import io

from ..scapre_core import INFORMAX_FIELDS, ScaPreConfig, __version__, erase_iter, informax_weights
from ..scapre_core.payloads import EditRecord, EncodedConcepts, InformaxPayload
from ..scapre_core.report import ReportBuilder
from .common import (
    CATEGORY,
    EDIT_MODES,
    Concepts,
    EffectiveWeights,
    Informax,
    Report,
    compute_device,
    config_input,
    kv_keys,
    log,
    patched_clone,
    progress,
)

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ScaPreConfig))


def _check_concepts(concepts) -> EncodedConcepts:
    if not isinstance(concepts, EncodedConcepts):
        raise ValueError("concepts must come from a ScaPre Concept Encode node")
    return concepts


def _build_config(values: dict) -> ScaPreConfig:
    try:
        return ScaPreConfig(**values)
    except ValueError as err:
        raise ValueError(f"invalid ScaPre setting: {err}") from None


class ScaPreInformax(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreInformax",
            display_name="ScaPre Informax",
            category=CATEGORY,
            description="Mutual-information row weights and entropy factors of every cross-attention key/value "
                        "matrix (the Informax decoupler). Optional: ScaPre Erase computes them itself when this "
                        "is not connected; computing them here lets you reuse them across several erase nodes.",
            inputs=[
                io.Model.Input("model", tooltip="The model you will edit (the same one ScaPre Erase gets)."),
                Concepts.Input("concepts", tooltip="From ScaPre Concept Encode."),
                *(config_input(name) for name in INFORMAX_FIELDS),
            ],
            outputs=[Informax.Output("row_weights", display_name="informax",
                                     tooltip="Row weights and entropy factors; connect to ScaPre Erase.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, concepts, **values) -> io.NodeOutput:
        concepts = _check_concepts(concepts)
        config = _build_config(values)
        keys = kv_keys(model, concepts.width)
        result = informax_weights(EffectiveWeights(model, keys), concepts.erase, config,
                                  progress(cls.hidden.unique_id, "informax"), device=compute_device(model))
        return io.NodeOutput(InformaxPayload(result=result, config=config, keys=tuple(keys)))


class ScaPreErase(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreErase",
            display_name="ScaPre Erase",
            category=CATEGORY,
            description="Erase the encoded concepts from the model by ScaPre's closed-form edit of the "
                        "cross-attention keys and values (no training data, no extra networks). Outputs an "
                        "edited clone; the input MODEL is unchanged. Defaults are the paper's; see the help page "
                        "for the published settings per concept type.",
            inputs=[
                io.Model.Input("model", tooltip="The model to edit (SD1.x, SD2.x or SDXL UNet)."),
                Concepts.Input("concepts", tooltip="From ScaPre Concept Encode (with this model's CLIP)."),
                Informax.Input("informax", optional=True,
                               tooltip="Optional precomputed row weights from ScaPre Informax. When connected, "
                                       "its settings replace this node's Informax settings."),
                io.Combo.Input("edit", options=list(EDIT_MODES), default="keys and values",
                               tooltip="Which projections to edit: both (published), only values, or only keys."),
                *(config_input(name) for name in CONFIG_FIELDS),
            ],
            outputs=[
                io.Model.Output("edited_model", display_name="MODEL",
                                tooltip="The edited model: chain it into KSampler, ScaPre Save LoRA or a "
                                        "checkpoint saver."),
                Report.Output("report", display_name="report",
                              tooltip="What the edit did per concept, probe, preserve prompt and matrix; "
                                      "connect to ScaPre Report."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, concepts, edit, informax=None, **values) -> io.NodeOutput:
        concepts = _check_concepts(concepts)
        config = _build_config(values)
        warnings = list(concepts.plan.warnings)
        given = None
        if informax is not None:
            if not isinstance(informax, InformaxPayload):
                raise ValueError("informax must come from a ScaPre Informax node")
            changed = {k: v for k, v in informax.config.informax_key().items() if getattr(config, k) != v}
            if changed:
                note = "using the Informax node's settings: " + ", ".join(f"{k}={v!r}" for k, v in changed.items())
                log.warning("ScaPreErase: %s", note)
                warnings.append(note)
                config = config.replace(**changed)
            given = informax.result
        keys = kv_keys(model, concepts.width, edit)
        weights = EffectiveWeights(model, keys)
        device = compute_device(model)
        builder = ReportBuilder({"erase": concepts.erase, "probe": concepts.probes, "preserve": concepts.preserve},
                                device=device)
        diffs = {}
        start = time.perf_counter()
        steps = progress(cls.hidden.unique_id, "erase")
        for name, edited in erase_iter(weights, concepts.erase, config, given, steps, device=device):
            original = weights[name]
            builder.add(name, original, edited)
            diffs[name] = edited - original
        seconds = time.perf_counter() - start
        report = builder.build(config=config.to_dict(), seconds=seconds, warnings=tuple(warnings),
                               concept_of=concepts.concept_of(),
                               info={**concepts.describe(), "edit": edit, "version": __version__,
                                     "informax": "precomputed" if given is not None else "computed"})
        record = EditRecord(diffs=diffs, report=report, concepts=concepts.describe(), config=config.to_dict(),
                            edit=edit, version=__version__)
        edited_model = patched_clone(model, diffs, record)
        summary = report.summary()
        log.info("ScaPreErase: %d concept(s), %d matrices in %.2f s, mean efficacy %s", summary["concepts"],
                 summary["matrices"], seconds, summary["mean_efficacy"])
        return io.NodeOutput(edited_model, report, ui={"scapre_summary": [summary]})
