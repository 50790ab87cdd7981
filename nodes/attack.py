"""ScaPreAttack and ScaPreAttackPrompts: does the erased concept come back? (``nodes/glue/attack.py``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..scapre_core import __version__
from ..scapre_core.attack_prompts import ATTACK_KINDS, PLAIN
from ..scapre_core.attacks import parse_strengths
from ..scapre_core.evaluation import classifiers as clf
from ..scapre_core.prompts import CONCEPT_TYPES, split_items
from ..scapre_core.report import finite
from .common import CATEGORY, AttackPrompts, Concepts, log
from .glue import attack as glue
from .glue.payloads import EncodedConcepts
from .grid import GridRow, render_pages

OUTPUT_SUBFOLDER = "scapre"
CLASSIFIER_MODES = ("auto", "off", "nudenet", "imagenet", "both")


def concepts_of(concepts, erased: str) -> tuple[list[str], str]:
    """The erased concepts (from the encode node and/or typed) and their type."""
    names, concept_type = [], "object"
    if concepts is not None:
        if not isinstance(concepts, EncodedConcepts):
            raise ValueError("concepts must come from a ScaPre Concept Encode node")
        names += list(concepts.plan.concepts)
        concept_type = concepts.concept_type or "object"
    names += [c for c in split_items(erased or "") if c not in names]
    if not names:
        raise ValueError("nothing to attack: connect concepts from ScaPre Concept Encode, or type the erased concepts "
                         "(one per line)")
    return names, concept_type


def _next_path(stem: str, suffix: str) -> Path:
    folder = Path(folder_paths.get_output_directory()) / OUTPUT_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for f in folder.iterdir() if (m := re.fullmatch(rf"{stem}_(\d+)\..*", f.name))]
    return folder / f"{stem}_{max(taken, default=0) + 1:05d}{suffix}"



class ScaPreAttack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreAttack",
            display_name="ScaPre Attack",
            category=CATEGORY,
            description="Does the erased concept come back? Searches prompt embeddings that make the EDITED model draw "
                        "what the ORIGINAL drew for the erased concept (soft tokens, UnlearnDiff-style) or adds the "
                        "concept's direction to a neutral prompt (concept vector, Ring-A-Bell-style); outputs the "
                        "found conditionings, the images and the recovery rate.",
            inputs=[
                io.Model.Input("original", tooltip="The model before the edit (e.g. the checkpoint loader's MODEL)."),
                io.Model.Input("edited",
                               tooltip="The edited model to attack (e.g. ScaPre Erase's MODEL). Not modified."),
                io.Clip.Input("clip", tooltip="The CLIP that encodes the prompts for both models."),
                io.Vae.Input("vae", tooltip="The VAE that decodes both models' samples."),
                Concepts.Input("concepts", optional=True,
                               tooltip="Optional, from ScaPre Concept Encode: the concepts to attack and their type."),
                io.String.Input("erased", multiline=True, default="", optional=True,
                                placeholder="concepts to attack, one per line (if not connected)",
                                tooltip="Erased concepts to attack, one per line (added to the connected ones)."),
                io.Combo.Input("method", options=list(glue.METHODS), default=glue.SOFT,
                               tooltip="soft tokens: optimize a few free vectors in the template's conditioning so "
                                       "that the edited model denoises the original's images of the concept "
                                       "(gradients; costs attack_steps forward+backward passes). concept vector: "
                                       "the mean difference of the encoder's output with and without the concept, "
                                       "added to the template without the concept at each strength (no gradients)."),
                io.String.Input("template", default="",
                                tooltip="The prompt the attack works in, with {c} for the concept, e.g. 'an image of "
                                        "{c}'. Empty: the concept type's first evaluation template (as ScaPre "
                                        "Compare)."),
                io.Int.Input("soft_tokens", default=3, min=1, max=16,
                             tooltip="Soft tokens: how many free vectors take the concept's place."),
                io.Int.Input("attack_steps", default=100, min=0, max=100000,
                             tooltip="Soft tokens: the search's budget in optimization steps (one forward and "
                                     "backward pass of the UNet each)."),
                io.Float.Input("learning_rate", default=0.1, min=0.0001, max=10.0, step=0.01,
                               tooltip="Soft tokens: Adam's step relative to the vectors' size (0.1 = a tenth of a "
                                       "typical token vector's per-coordinate size)."),
                io.Float.Input("norm_limit", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Soft tokens: keep each vector within this multiple of the largest token norm "
                                       "in the template's conditioning (1: as large as the encoder produces). 0: "
                                       "unbounded, the worst case of a user who controls the conditioning."),
                io.Int.Input("train_images", default=4, min=1, max=256,
                             tooltip="Soft tokens: the original model's images of the concept the search trains on "
                                     "(other seeds than the evaluation images)."),
                io.String.Input("strengths", default="1, 2, 4",
                                tooltip="Concept vector: the strengths it is added at, comma-separated."),
                io.Int.Input("images_per_concept", default=2, min=1, max=64,
                             tooltip="Evaluation images per concept: image j uses seed + j for the original, the "
                                     "plain edit and the attack."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the evaluation noise and of the search (same inputs and seed: same "
                                     "result)."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps (as in KSampler)."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale (as in KSampler)."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="Sampler (as in KSampler)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal",
                               tooltip="Scheduler (as in KSampler)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Image height in pixels."),
                io.Combo.Input("classifiers", options=list(CLASSIFIER_MODES), default="auto",
                               tooltip="The paper's classifier measures when installed (comfyui-scapre[eval]): does "
                                       "NudeNet (explicit) or the ImageNet classifier (object classes) find the "
                                       "concept in the original, plain edited and attacked images. auto: whichever "
                                       "fits."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional CLIP vision model: also judge recovery by the cosine of image "
                                            "embeddings (content, not structure)."),
            ],
            outputs=[
                io.Conditioning.Output("conditioning", display_name="conditioning", is_output_list=True,
                                       tooltip="The found conditionings, one per concept (soft tokens) or per concept "
                                               "and strength (concept vector): connect to KSampler's positive to "
                                               "sample with them (a list: KSampler runs once per item)."),
                io.Image.Output("grid", display_name="grid",
                                tooltip="Per concept: originals | plain edit, then originals | each attack, labelled "
                                        "with the change and how many images were recovered."),
                io.Image.Output("images", display_name="images",
                                tooltip="Per concept: the originals, the plain edit's images, each attack's images."),
                io.String.Output("table", display_name="table",
                                 tooltip="Recovery rates per attack (and pooled) as markdown, with 95 % intervals."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, original, edited, clip, vae, method, template, soft_tokens, attack_steps, learning_rate,
                norm_limit, train_images, strengths, images_per_concept, seed, steps, cfg, sampler_name, scheduler,
                width, height, classifiers="auto", concepts=None, erased="", clip_vision=None) -> io.NodeOutput:
        for name, value in (("original", original), ("edited", edited), ("clip", clip), ("vae", vae)):
            if value is None:
                raise ValueError(f"{name} is not connected")
        names, concept_type = concepts_of(concepts, erased)
        settings = glue.AttackSettings(
            method=method, template=template.strip(), tokens=soft_tokens, steps=attack_steps, lr=learning_rate,
            norm_limit=norm_limit, targets=train_images, strengths=parse_strengths(strengths),
            images=images_per_concept, seed=seed,
            sampling=glue.Sampling(steps, cfg, sampler_name, scheduler, width, height))
        settings.check()
        run, notes = clf.plan(classifiers, concept_type, names)
        bar = comfy.utils.ProgressBar(settings.total_ticks(len(names)), node_id=cls.hidden.unique_id)

        def tick() -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)

        outcome = glue.run_attack(original, edited, clip, vae, names, concept_type, settings, tick, clip_vision, run)
        result = finite(outcome.result)
        result["notes"] = notes
        result["conditionings"] = outcome.labels
        path = _next_path("attack", ".json")
        tensors = path.with_suffix(".safetensors")
        comfy.utils.save_torch_file(outcome.tensors, str(tensors),
                                    metadata=glue.attack_metadata(__version__, outcome.labels, result))
        result["file"] = f"{OUTPUT_SUBFOLDER}/{path.name}"
        result["tensors"] = f"{OUTPUT_SUBFOLDER}/{tensors.name}"
        path.write_text(json.dumps(result, indent=1, allow_nan=False), encoding="utf-8")
        table = glue.markdown(result) + "".join(f"\n\n> {n}" for n in notes)
        grid, _ = render_pages([GridRow(label, a, b) for label, a, b in outcome.panels])
        images = torch.cat(outcome.images)
        pooled = result["recovery"]["all"]
        log.info("ScaPreAttack: %s on %d concept(s): recovered %s of %d counted image(s)", method, len(names),
                 pooled["count"], pooled["n"])
        return io.NodeOutput(outcome.conditionings, grid, images, table, ui={"scapre_attack": [
            {k: v for k, v in result.items() if k != "records"}]})


class ScaPreAttackPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        kinds = [io.Boolean.Input(kind, default=True, tooltip=tip) for kind, tip in (
            ("synonym", "The synonyms you type, in the evaluation templates."),
            ("neighbour", "The text encoder's nearest words to each concept in its token-embedding table "
                          "(needs clip)."),
            ("context", "The concept inside longer prompts: at the start, in the middle, at the end, repeated."),
            ("misspelling", "The concept with one letter dropped, doubled, swapped or replaced (4+ letters)."),
            ("language", "The concept in other languages: the translations you type, and built-in ones for the "
                         "published explicit-content terms (French, German, Spanish, Italian, Portuguese)."),
        )]
        return io.Schema(
            node_id="ScaPreAttackPrompts",
            display_name="ScaPre Attack Prompts",
            category=CATEGORY,
            description="Prompts that ask for an erased concept in other words: synonyms, the model's nearest words, "
                        "longer prompts, misspellings, other languages. Connect to ScaPre Compare's attack_prompts to "
                        "see which still draw the concept (recovery per kind).",
            inputs=[
                io.Clip.Input("clip", optional=True,
                              tooltip="The CLIP of the edited model: its token-embedding table gives the neighbours."),
                Concepts.Input("concepts", optional=True,
                               tooltip="Optional, from ScaPre Concept Encode: the erased concepts and their type."),
                io.String.Input("erased", multiline=True, default="", optional=True,
                                placeholder="erased concepts, one per line (if not connected)",
                                tooltip="Erased concepts, one per line (added to the connected ones)."),
                io.Combo.Input("concept_type", options=list(CONCEPT_TYPES), default="object",
                               tooltip="Templates for typed concepts (connected concepts bring their own type)."),
                *kinds,
                io.Int.Input("per_kind", default=2, min=1, max=50,
                             tooltip="At most this many variants per concept and kind."),
                io.String.Input("synonyms", multiline=True, default="",
                                placeholder="cat: kitten, kitty, feline",
                                tooltip="Synonyms per concept, one line each: 'concept: word, word' (with one concept "
                                        "the 'concept:' may be left out)."),
                io.String.Input("translations", multiline=True, default="",
                                placeholder="cat: chat, Katze, gato",
                                tooltip="Translations per concept, one line each: 'concept: word, word'."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the misspellings' choice."),
            ],
            outputs=[
                AttackPrompts.Output("attack_prompts", display_name="attack_prompts",
                                     tooltip="The variants with their kinds: connect to ScaPre Compare."),
                io.String.Output("prompts", display_name="prompts",
                                 tooltip="The variant prompts, one per line (plain prompts first)."),
            ],
        )

    @classmethod
    def execute(cls, concept_type, synonym, neighbour, context, misspelling, language, per_kind, synonyms,
                translations, seed, clip=None, concepts=None, erased="") -> io.NodeOutput:
        names, kind_of = concepts_of(concepts, erased)
        if concepts is None:
            kind_of = concept_type
        wanted = dict(zip(ATTACK_KINDS, (synonym, neighbour, context, misspelling, language), strict=True))
        kinds = [PLAIN, *(k for k, on in wanted.items() if on)]
        prompt_set = glue.attack_prompt_set(clip, names, kind_of, kinds, per_kind, synonyms, translations, seed)
        for note in prompt_set.notes:
            log.info("ScaPreAttackPrompts: %s", note)
        text = "\n".join(v.prompt for v in prompt_set.variants)
        counts = ", ".join(f"{k} {n}" for k, n in prompt_set.counts().items())
        summary = f"{len(prompt_set.variants)} prompt(s): {counts}" + "".join(f"\nnote: {n}" for n in prompt_set.notes)
        return io.NodeOutput(prompt_set, text, ui={"text": [summary]})

