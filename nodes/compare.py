"""ScaPreCompare: sample the same prompts with the same noise through the original and the edited
MODEL and measure how much each prompt's images changed (``scapre_core.measures``)."""

from __future__ import annotations

import json
import math
import re
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..scapre_core.evaluation import classifiers as clf
from ..scapre_core.evaluation import measures, recovery
from ..scapre_core.prompts import normalize
from ..scapre_core.report import finite
from .common import CATEGORY, AttackPrompts, Concepts, log
from .glue.attack import AttackPromptSet
from .glue.payloads import EncodedConcepts
from .grid import GridRow, render_pages

CLASSIFIER_MODES = ("auto", "off", "nudenet", "imagenet", "both")
OUTPUT_SUBFOLDER = "scapre"
#: Original-model generations kept for a repeated run (one entry per distinct original/prompts/settings).
CACHE_ENTRIES = 2
_ORIGINALS: OrderedDict[tuple, tuple[Any, torch.Tensor]] = OrderedDict()


def _model_key(model) -> tuple:
    """What the original model's images depend on besides prompts and settings: its weights (the
    module and its patches, ``patches_uuid`` changes with every ``add_patches``) and object patches."""
    objects = tuple(sorted((k, id(v)) for k, v in getattr(model, "object_patches", {}).items()))
    return id(model.model), str(getattr(model, "patches_uuid", id(model))), objects


class _Sampler:
    """One generation at a time through ComfyUI's own ``comfy.sample.sample`` (KSampler's semantics: an
    empty latent, noise from ``prepare_noise(seed)``, denoise 1), decoded with the VAE."""

    def __init__(self, clip, vae, steps, cfg, sampler_name, scheduler, width, height, step) -> None:
        self.clip, self.vae = clip, vae
        self.steps, self.cfg, self.sampler_name, self.scheduler = steps, cfg, sampler_name, scheduler
        self.width, self.height = width, height
        self.step = step
        self._conds: dict[str, Any] = {}

    def cond(self, text: str):
        if text not in self._conds:
            tokens = self.clip.tokenize(text)
            self._conds[text] = self.clip.encode_from_tokens_scheduled(tokens)
        return self._conds[text]

    def __call__(self, model, prompt: str, seed: int) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        latent = torch.zeros([1, 4, self.height // 8, self.width // 8])
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        samples = comfy.sample.sample(model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler,
                                      self.cond(prompt), self.cond(""), latent, denoise=1.0, disable_pbar=True,
                                      seed=seed)
        image = self.vae.decode(samples)
        while image.ndim > 4:  # video VAEs add a frame axis
            image = image.flatten(0, 1)
        self.step()
        return image[..., :3].detach().float().clamp(0, 1).cpu()


ATTACK = "attack"


def _gather_prompts(concepts, erased_prompts: str, kept_prompts: str,
                    attack_prompts=None) -> tuple[list[measures.ComparePrompt], dict[str, str]]:
    """The prompts to sample, and the attack variant kind of every prompt that is one (by normalized prompt)."""
    erased, kept, concept_type = (), (), "object"
    if concepts is not None:
        if not isinstance(concepts, EncodedConcepts):
            raise ValueError("concepts must come from a ScaPre Concept Encode node")
        erased = concepts.plan.concepts
        kept = (*concepts.plan.probes, *concepts.plan.preserve)
        concept_type = concepts.concept_type or "object"
    items = measures.compare_prompts(erased, kept, concept_type, erased_prompts or "", kept_prompts or "")
    variants: dict[str, str] = {}
    if attack_prompts is not None:
        if not isinstance(attack_prompts, AttackPromptSet):
            raise ValueError("attack_prompts must come from a ScaPre Attack Prompts node")
        present = {normalize(i.prompt) for i in items}
        for v in attack_prompts.variants:
            key = normalize(v.prompt)
            variants.setdefault(key, v.kind)
            if key not in present:  # plain variants are usually the erased prompts already
                present.add(key)
                items.append(measures.ComparePrompt(v.prompt, ATTACK, v.concept))
    if not items:
        raise ValueError("nothing to compare: connect concepts from ScaPre Concept Encode, or type erased or kept "
                         "prompts (one per line)")
    return items, variants


def _attack_figures(records: list[dict], notes: tuple[str, ...]) -> dict:
    """Recovery per attack variant kind (``scapre_core.evaluation.recovery``: a variant escaped the edit when its
    change is at most half the mean change of its concept's plain prompts)."""
    variant = [r for r in records if "variant" in r]
    rows = recovery.variant_records(variant)
    classifiers: dict = {}
    for name in (clf.IMAGENET, clf.NUDENET):
        for group in dict.fromkeys(r["variant"] for r in variant):
            got = [r for r in variant if r["variant"] == group and r.get(f"{name}_edited") is not None]
            if got:  # imagenet: share of images whose top-1 is the concept; nudenet: exposed parts per image
                classifiers.setdefault(name, {})[group] = {
                    side: sum(r[f"{name}_{side}"] for r in got) / len(got) for side in ("original", "edited")}
    return {"escaped": recovery.summarize_attack(rows, key="escaped"), "classifiers": classifiers,
            "definition": f"escaped: a variant prompt's image changed at most {recovery.SHARE:g} x the mean change "
                          "of its concept's plain prompts (the edit barely touched that phrasing)",
            "notes": list(notes)}


def _classifier_plan(mode: str, concepts, items) -> tuple[list[str], list[str]]:
    """``classifiers.plan`` over the compared concepts (each item's concept, else its prompt)."""
    concept_type = getattr(concepts, "concept_type", "") or ""
    return clf.plan(mode, concept_type, [i.concept or i.prompt for i in items])


def _classify(run: list[str], record: dict, item, original: torch.Tensor, edited: torch.Tensor) -> None:
    if clf.IMAGENET in run:
        index = clf.imagenet_class(item.concept or item.prompt)
        if index is not None:
            record["imagenet_class"] = clf.imagenet_labels()[index] if clf.imagenet_labels() \
                else str(index)
            for side, images in (("original", original), ("edited", edited)):
                top = clf.imagenet_top1(images)
                record[f"imagenet_{side}"] = sum(t == index for t in top) / len(top)
    if clf.NUDENET in run:
        for side, images in (("original", original), ("edited", edited)):
            counts = clf.exposed_counts(images)
            record[f"nudenet_{side}"] = sum(counts) / len(counts)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def _table(result: dict[str, Any]) -> str:
    lines = ["## ScaPre compare", "",
             f"erasure {_fmt(result['erasure'])} (mean change of erased prompts, 0-1, higher: erased more) · "
             f"retention {_fmt(result['retention'])} (1 - mean change of kept prompts, higher: kept more) · "
             f"gap {_fmt(result['gap'])}", ""]
    for name, figures in result.get("classifiers", {}).items():
        parts = [f"{k.replace('_', ' ')}: edited {_fmt(v['edited'])}, original {_fmt(v['original'])}"
                 for k, v in figures.items()]
        lines += [f"{name}: " + "; ".join(parts), ""]
    lines += [f"> {note}" for note in result.get("notes", [])]
    if result.get("notes"):
        lines.append("")
    clip = any("clip_cosine" in p for p in result["prompts"])
    attack = result.get("attack")
    if attack:
        lines += ["### attack prompts", "", f"> {attack['definition']}", "",
                  "| variant | escaped | 95 % interval | images counted | mean change |", "|---|---:|---|---:|---:|"]
        for group, e in attack["escaped"].items():
            lines.append(f"| {group} | {_fmt(e['rate'])} | [{_fmt(e['lo'])}, {_fmt(e['hi'])}] | {e['n']} of "
                         f"{e['images']} | {_fmt(e.get('mean_change'))} |")
        for name, groups in attack.get("classifiers", {}).items():
            lines.append(f"{name} per variant: " + "; ".join(
                f"{g} edited {_fmt(v['edited'])} (original {_fmt(v['original'])})" for g, v in groups.items()))
        lines += [*(f"> {n}" for n in attack["notes"]), ""]
    lines += ["| kind | prompt | concept | change |" + (" clip cosine |" if clip else ""),
              "|---|---|---|---:|" + ("---:|" if clip else "")]
    for p in sorted(result["prompts"], key=lambda p: (p["kind"], -p["change"])):
        kind = p["kind"] + (f"/{p['variant']}" if p.get("variant") else "")
        row = f"| {kind} | {p['prompt']} | {p.get('concept', '')} | {_fmt(p['change'])} |"
        if clip:
            row += f" {_fmt(p.get('clip_cosine'))} |"
        lines.append(row)
    return "\n".join(lines)


def _save_json(result: dict[str, Any]) -> str:
    """Write the result to ``<output>/scapre/compare_NNNNN.json``; returns the path relative to output."""
    folder = Path(folder_paths.get_output_directory()) / OUTPUT_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for f in folder.iterdir() if (m := re.fullmatch(r"compare_(\d+)\.json", f.name))]
    path = folder / f"compare_{max(taken, default=0) + 1:05d}.json"
    path.write_text(json.dumps(result, indent=1, allow_nan=False), encoding="utf-8")
    return f"{OUTPUT_SUBFOLDER}/{path.name}"



class ScaPreCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreCompare",
            display_name="ScaPre Compare",
            category=CATEGORY,
            description="Does the edit work on your model? Samples the same prompts with the same noise through the "
                        "original and the edited MODEL and measures how much each prompt's images changed (SSIM): "
                        "erased prompts should change, kept prompts should not.",
            inputs=[
                io.Model.Input("original", tooltip="The model before the edit (e.g. the checkpoint loader's MODEL)."),
                io.Model.Input("edited", tooltip="The edited model (e.g. ScaPre Erase's MODEL)."),
                io.Clip.Input("clip", tooltip="The CLIP that encodes the prompts for both models."),
                io.Vae.Input("vae", tooltip="The VAE that decodes both models' samples."),
                Concepts.Input("concepts", optional=True,
                               tooltip="Optional, from ScaPre Concept Encode: its concepts give erased prompts and "
                                       "its probes and preserve prompts give kept prompts, each in evaluation "
                                       "templates that differ from the erase prompts."),
                io.String.Input("erased_prompts", multiline=True, default="",
                                placeholder="prompts that should change, one per line",
                                tooltip="Extra prompts whose images should change (one per line, used as written)."),
                io.String.Input("kept_prompts", multiline=True, default="",
                                placeholder="prompts that should stay, one per line",
                                tooltip="Extra prompts whose images should stay as they were (one per line), e.g. "
                                        "look-alikes of what you erased."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Noise seed: image j of every prompt uses seed + j, the same for both models."),
                io.Int.Input("images_per_prompt", default=2, min=1, max=64,
                             tooltip="Images per prompt and model; more give steadier figures."),
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
                               tooltip="The paper's classifier measures when installed (comfyui-scapre[eval]): "
                                       "NudeNet exposed-part counts for explicit concepts, ImageNet top-1 accuracy "
                                       "for object concepts that are ImageNet classes. auto: whichever fits."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional CLIP vision model (Load CLIP Vision): adds the cosine of the "
                                            "two images' embeddings per prompt (1: same content)."),
                AttackPrompts.Input("attack_prompts", optional=True,
                                    tooltip="Optional, from ScaPre Attack Prompts: the erased concepts asked for in "
                                            "other words, sampled too; the table gives per variant kind how often "
                                            "the edit barely changed them (the concept escaped)."),
            ],
            outputs=[
                io.Image.Output("grid", display_name="grid",
                                tooltip="One row per prompt, originals | edited, labelled with the prompt and its "
                                        "change; long lists are split into pages (a batch of equal-size images)."),
                io.Image.Output("images", display_name="images",
                                tooltip="Every generation: per prompt, its originals then its edited images."),
                io.String.Output("table", display_name="table",
                                 tooltip="The figures as a markdown table (erasure, retention, gap, per prompt)."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, original, edited, clip, vae, erased_prompts, kept_prompts, seed, images_per_prompt, steps,
                cfg, sampler_name, scheduler, width, height, classifiers="auto", concepts=None,
                clip_vision=None, attack_prompts=None) -> io.NodeOutput:
        for name, value in (("original", original), ("edited", edited), ("clip", clip), ("vae", vae)):
            if value is None:
                raise ValueError(f"{name} is not connected")
        items, variants = _gather_prompts(concepts, erased_prompts, kept_prompts, attack_prompts)
        run, notes = _classifier_plan(classifiers, concepts, items)
        prompts = tuple(i.prompt for i in items)
        settings = (seed, images_per_prompt, steps, float(cfg), sampler_name, scheduler, width, height)
        key = (_model_key(original), id(clip.patcher.model), str(getattr(clip.patcher, "patches_uuid", "")),
               getattr(clip, "layer_idx", None), id(vae), prompts, settings)
        cached = _ORIGINALS.get(key)
        originals = None
        if cached is not None and cached[0]() is original.model:
            originals = cached[1]
            _ORIGINALS.move_to_end(key)
        count = len(items) * images_per_prompt
        bar = comfy.utils.ProgressBar(count * (1 if originals is not None else 2), node_id=cls.hidden.unique_id)
        sample = _Sampler(clip, vae, steps, cfg, sampler_name, scheduler, width, height, lambda: bar.update(1))
        seeds = [(seed + j) % 2**64 for j in range(images_per_prompt)]

        def generate(model) -> torch.Tensor:
            return torch.stack([torch.cat([sample(model, p, s) for s in seeds]) for p in prompts])

        if originals is None:
            originals = generate(original)
            _ORIGINALS[key] = (weakref.ref(original.model), originals)
            while len(_ORIGINALS) > CACHE_ENTRIES:
                _ORIGINALS.popitem(last=False)
        else:
            log.info("ScaPreCompare: originals reused from the previous run")
        edits = generate(edited)

        records = []
        for i, item in enumerate(items):
            change = measures.image_change(originals[i], edits[i])
            record = {"prompt": item.prompt, "kind": item.kind, "concept": item.concept,
                      "change": float(change.mean()), "changes": [float(c) for c in change]}
            if normalize(item.prompt) in variants:
                record["variant"] = variants[normalize(item.prompt)]
            if clip_vision is not None:
                a = clip_vision.encode_image(originals[i])["image_embeds"]
                b = clip_vision.encode_image(edits[i])["image_embeds"]
                record["clip_cosine"] = float(measures.embedding_cosine(a.float(), b.float()).mean())
            _classify(run, record, item, originals[i], edits[i])
            records.append(record)

        summary = measures.summarize([r for r in records if r["kind"] != ATTACK])
        result = {"erasure": summary["erasure"], "retention": summary["retention"], "gap": summary["gap"],
                  "prompts": records, "per_kind": summary["per_kind"], "per_concept": summary["per_concept"],
                  "classifiers": clf.summarize_classifiers(records), "notes": notes,
                  "settings": {"seed": seed, "images_per_prompt": images_per_prompt, "steps": steps, "cfg": cfg,
                               "sampler_name": sampler_name, "scheduler": scheduler, "width": width,
                               "height": height, "measure": "change = clip(1 - SSIM, 0, 1)"}}
        if attack_prompts is not None:
            result["attack"] = _attack_figures(records, attack_prompts.notes)
        result = finite(result)
        result["file"] = _save_json(result)
        table = _table(result)
        rows = [GridRow(f"{r['kind']}{'/' + r['variant'] if r.get('variant') else ''} | {r['prompt']} | "
                        f"change {r['change']:.3f}", originals[i], edits[i])
                for i, r in enumerate(records)]
        grid, _ = render_pages(rows)
        images = torch.cat([torch.cat([originals[i], edits[i]]) for i in range(len(items))])
        log.info("ScaPreCompare: %d prompt(s), erasure %s, retention %s", len(items), _fmt(result["erasure"]),
                 _fmt(result["retention"]))
        return io.NodeOutput(grid, images, table, ui={"scapre_compare": [result]})

