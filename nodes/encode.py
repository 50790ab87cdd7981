"""ScaPreConceptEncode: text in, encoded erase/guide/preserve/probe prompts out."""

from __future__ import annotations

from comfy_api.latest import io

from ..scapre_core.prompts import CONCEPT_TYPES, plan_prompts
from .common import CATEGORY, Concepts, log, progress
from .glue.encode import LOOK_ALIKES, encode_concepts

CLIP_TIP = ("The text encoder of the model you will edit: the checkpoint's CLIP, or the CLIPLoader / DualCLIPLoader "
            "/ TripleCLIPLoader / QuadrupleCLIPLoader output of a DiT (umT5 for Wan, T5 for LTX-Video/PixArt/Chroma, "
            "CLIP-L + T5 for Flux, CLIP-L + CLIP-G + T5 for SD3, Qwen2.5-VL for Qwen-Image, CLIP-L + CLIP-G + T5 + "
            "Llama-3.1 for HiDream).")


class ScaPreConceptEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreConceptEncode",
            display_name="ScaPre Concept Encode",
            category=CATEGORY,
            description="Encode the concepts to erase (and optional guides, preserve prompts and probes) with "
                        "the model's own text encoder (any of them: CLIP, T5, umT5, Qwen2.5-VL, or several). "
                        "Feed the output to ScaPre Informax and ScaPre Erase.",
            inputs=[
                io.Clip.Input("clip", tooltip=CLIP_TIP),
                io.String.Input("concepts", multiline=True, default="",
                                placeholder="one concept per line (commas also separate)\ne.g. Van Gogh",
                                tooltip="What to erase: objects, artists' styles, explicit terms, people, "
                                        "brands. One per line; commas also separate."),
                io.Combo.Input("concept_type", options=list(CONCEPT_TYPES), default="object",
                               tooltip="Selects the prompt templates used when expand_templates is on: object "
                                       "('photo of {c}', ...), style ('painting by {c}', ...), explicit (none), "
                                       "custom (the templates field)."),
                io.Boolean.Input("expand_templates", default=False,
                                 tooltip="Also erase each concept inside its type's templates. Off in the "
                                         "paper's runs; on erases more phrasings at a little more collateral."),
                io.String.Input("templates", multiline=True, default="",
                                placeholder="custom templates, one per line, with {c}",
                                tooltip="For concept_type custom: one template per line, {c} marks the concept."),
                io.String.Input("guide", multiline=True, default="",
                                tooltip="What erased prompts should look like instead. Empty: the unconditional "
                                        "(paper default). One line for all concepts, or one line per concept "
                                        "(e.g. 'art' for artists, 'a person' for people)."),
                io.String.Input("preserve", multiline=True, default="", optional=True,
                                tooltip="Prompts to protect (kept at their original projections, weight "
                                        "preserve_scale), e.g. look-alikes of what you erase."),
                io.String.Input("probes", multiline=True, default="", optional=True,
                                tooltip="Prompts to watch in the report without protecting them, e.g. 'dog, "
                                        "tiger' when erasing 'cat'."),
                io.Combo.Input("look_alikes", options=list(LOOK_ALIKES), default="auto", optional=True,
                               tooltip="For the precise preset and preset auto (beyond the paper): auto (default) "
                                       "finds each concept's two nearest look-alikes in this CLIP's own text space "
                                       "among about 200 everyday concepts (plus your preserve prompts), guides it to "
                                       "the nearest and keeps them all (a concept of several words near one of its "
                                       "own, such as 'green triangle' near 'triangle', is guided to itself with its "
                                       "last word replaced: 'green bar'); SD1.x, SD2.x and SDXL only, skipped with a "
                                       "note for other text encoders. 'preserve prompts' uses only yours; off skips "
                                       "this (the published presets use it only above strength 1, where their "
                                       "guides move towards the nearest look-alike; auto costs one encoding of the "
                                       "candidates per CLIP). The look-alikes found are shown below."),
            ],
            outputs=[Concepts.Output("encoded_concepts", display_name="concepts",
                                     tooltip="The encoded prompts; connect to ScaPre Informax and ScaPre Erase.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, clip, concepts, concept_type, expand_templates, templates, guide, preserve="",
                probes="", look_alikes="off") -> io.NodeOutput:
        # absent from prompts made before the input existed: off, as they ran then (the widget's default is auto)
        if clip is None:
            raise ValueError("clip is not connected: connect the CLIP output of your checkpoint loader")
        plan = plan_prompts(concepts, concept_type, expand_templates, templates, guide, preserve or "",
                            probes or "")
        for warning in plan.warnings:
            log.warning("ScaPreConceptEncode: %s", warning)
        payload = encode_concepts(clip, plan, concept_type, progress(cls.hidden.unique_id, "encode"), look_alikes)
        log.info("ScaPreConceptEncode: %d concept(s), %d prompt(s), width %d", len(plan.concepts),
                 len(plan.prompts), payload.width)
        return io.NodeOutput(payload, ui={"text": [_summary(plan, payload.look_alikes, payload.notes)]})


def _summary(plan, look_alikes=None, notes=()) -> str:
    parts = [f"{len(plan.concepts)} concept(s) -> {len(plan.prompts)} prompt(s)"]
    if plan.preserve:
        parts.append(f"{len(plan.preserve)} preserved")
    if plan.probes:
        parts.append(f"{len(plan.probes)} probe(s)")
    found = "".join(f"\nlook-alikes of {c}: {', '.join(n)}" for c, n in (look_alikes or {}).items())
    return ", ".join(parts) + found + "".join(f"\n{n}" for n in notes) \
        + "".join(f"\nwarning: {w}" for w in plan.warnings)
