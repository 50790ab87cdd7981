"""The attacks of ``scapre_core.attacks`` on a ComfyUI MODEL, for ScaPre Attack and ``python -m <pack> attack``.

* :class:`ComfyDenoiser`: the edited MODEL as a ``Denoiser``: ComfyUI's own ``model_sampling`` (noise levels, the
  forward process) and ``model.model.apply_model`` after ``load_models_gpu`` (the edit's patches applied), run with
  gradients to the conditioning. ComfyUI executes nodes under ``torch.inference_mode()``, and weights loaded there
  are inference tensors, which autograd may not save; those are cloned once per attack (normal tensors, same
  values) and passed through ``torch.func.functional_call``, which swaps them in for the duration of each call
  and puts the module's own tensors back (no value of the shared module ever changes).
* :func:`soft_template` / :func:`neighbours` / :func:`encode`: the text side with the user's CLIP.
* :func:`run_attack`: sample the original's and the plain edit's images, search, sample the attacked images and
  measure recovery (``scapre_core.evaluation.recovery``).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import comfy.model_management
import comfy.sample
import comfy.utils
import torch

from ...scapre_core.attack_prompts import (
    LANGUAGE,
    MISSPELLING,
    NEIGHBOUR,
    SYNONYM,
    Variant,
    attack_variants,
    concept_pairs,
    eval_templates,
    fill,
    without_concept,
    word_lists,
)
from ...scapre_core.attacks import SoftPrompt, add_concept_vector, concept_vector, nearest_words, search_soft_tokens
from ...scapre_core.evaluation import classifiers as clf
from ...scapre_core.evaluation import measures, recovery
from ...scapre_core.prompts import PLACEHOLDER
from .encode import PromptEncoder
from .payloads import METADATA_KEY, PACK_NAME

log = logging.getLogger("comfyui-scapre")

SOFT, VECTOR = "soft tokens", "concept vector"
METHODS = (SOFT, VECTOR)
#: The word that holds the soft tokens' places while the template is encoded (its vectors are the start).
FILLER = "thing"
#: Seeds of the search's training images start this far from the evaluation seeds (they never overlap).
TRAIN_SEED_OFFSET = 1_000_003


# ------------------------------------------------------------------------------------------------------------
# text side
# ------------------------------------------------------------------------------------------------------------

def _rows(encoding) -> torch.Tensor:
    """Every conditioning row of one prompt as the text encoder gave it (``glue.encode.Encoding``)."""
    return encoding.slice(0, encoding.length)


def encode(clip, text: str) -> list:
    """CLIPTextEncode's CONDITIONING for ``text``: ``[[cond [1, L, d], {"pooled_output": ...}]]``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def _word_ids(clip, word: str) -> dict[str, list[int]]:
    tokens = clip.tokenize(word)
    out = {}
    for name, chunks in tokens.items():
        ids = [int(t[0]) for t in chunks[0]]
        # between the start token and the first end/pad token
        end = next((i for i in range(1, len(ids)) if ids[i] == ids[-1]), len(ids))
        out[name] = ids[1:end]
    return out


def soft_template(clip, template: str, tokens: int, filler: str = FILLER) -> tuple[list, list[int]]:
    """The CONDITIONING of ``template`` with its ``{c}`` replaced by ``tokens`` filler words, and the positions of
    the fillers in it (where the soft tokens go)."""
    if PLACEHOLDER not in template:
        raise ValueError(f"the attack template {template!r} has no {PLACEHOLDER} for the concept; write e.g. "
                         f"'an image of {PLACEHOLDER}'")
    if tokens < 1:
        raise ValueError(f"soft_tokens must be >= 1, got {tokens}")
    filler_ids = _word_ids(clip, filler)
    text = fill(template, " ".join([filler] * tokens))
    chunks = clip.tokenize(text)
    positions = set()
    for name, parts in chunks.items():
        if len(parts) != 1:
            raise ValueError(f"the attack template {template!r} is longer than one 75-token chunk: shorten it")
        if len(filler_ids.get(name, ())) != 1:
            raise ValueError(f"the filler word {filler!r} is not one token for this text encoder")
        found = tuple(i for i, t in enumerate(parts[0]) if int(t[0]) == filler_ids[name][0])
        positions.add(found)
    if len(positions) != 1 or len(next(iter(positions))) != tokens:
        raise ValueError(f"the attack template {template!r} already holds the word {filler!r}; rephrase it")
    return encode(clip, text), list(next(iter(positions)))


def token_table(clip) -> tuple[torch.Tensor, list[tuple[int, str]], Any] | None:
    """``(table [V, d], whole-word candidates (row, word), tokenizer)`` of the CLIP's first text encoder with a
    token-embedding table and a BPE vocabulary (``clip_l``, ``clip_h``, ``clip_g``), or None."""
    model, tokenizer = clip.cond_stage_model, clip.tokenizer
    for name in ("clip_l", "clip_h", "clip_g", getattr(model, "clip", "")):
        encoder, tok = getattr(model, name, None), getattr(tokenizer, name, None)
        vocab = getattr(tok, "inv_vocab", None)
        if encoder is None or vocab is None or not hasattr(encoder, "transformer"):
            continue
        weight = encoder.transformer.get_input_embeddings().weight
        table = comfy.model_management.cast_to_device(weight, torch.device("cpu"), torch.float32, copy=True)
        candidates = [(int(row), str(word)[:-4]) for row, word in vocab.items()
                      if int(row) < table.shape[0] and str(word).endswith("</w>") and str(word)[:-4].isalpha()
                      and len(str(word)) >= 7]
        return table, candidates, tok
    return None


def neighbours(clip, concepts: Sequence[str], k: int) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """The ``k`` nearest whole words to each concept in the text encoder's token-embedding table (cosine to the
    mean of the concept's token rows), and notes."""
    found = token_table(clip)
    if found is None:
        return {}, ["neighbour variants: this text encoder has no token-embedding table this pack can read"]
    table, candidates, tok = found
    out = {}
    for concept in concepts:
        rows = _word_ids(clip, concept)
        name = next((n for n in rows if getattr(clip.tokenizer, f"clip_{n}", None) is tok), next(iter(rows)))
        out[concept] = tuple(nearest_words(table, rows[name], candidates, k, exclude=concept.split()))
    return out, []


# ------------------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------------------

class _Apply(torch.nn.Module):
    """``apply_model`` of a ComfyUI BaseModel as a module call, for ``torch.func.functional_call``."""

    def __init__(self, base) -> None:
        super().__init__()
        self.base = base

    def forward(self, x, sigma, **kwargs):
        return self.base.apply_model(x, sigma, **kwargs)


class ComfyDenoiser:
    """The (edited) MODEL as ``scapre_core.attacks.Denoiser``, its edit's patches applied. ``conditioning`` is the
    template's CONDITIONING (its non-text entries, e.g. SDXL's pooled output, are kept fixed); ``latent`` a latent
    of the attack's size (``[1, C, h, w]``)."""

    def __init__(self, model, conditioning: list, latent: torch.Tensor) -> None:
        comfy.model_management.load_models_gpu([model])
        self.model = model
        self.base = model.model
        self.device = model.load_device
        self.sampling = model.get_model_object("model_sampling")
        self.sigmas = self.sampling.sigmas.detach().float().cpu()
        entry = conditioning[0][1]
        noise = torch.zeros_like(latent).to(self.device)
        params = {**entry, "cross_attn": conditioning[0][0].to(self.device), "device": self.device, "noise": noise,
                  "latent_image": noise, "width": latent.shape[-1] * 8, "height": latent.shape[-2] * 8,
                  "prompt_type": "positive", "seed": 0}
        extra = self.base.extra_conds(**params)
        extra.pop("c_crossattn", None)
        if "c_concat" in extra:
            raise ValueError("this model takes extra image channels (an inpainting or instruct model); ScaPre Attack "
                             "needs a plain text-to-image model")
        self.extra = {k: v.cond for k, v in extra.items() if torch.is_tensor(getattr(v, "cond", None))}
        options = model.model_options.get("transformer_options", {})
        self.transformer_options = copy.copy(options)
        with torch.inference_mode(False):
            self.apply = _Apply(self.base)
            named = [*self.apply.named_parameters(), *self.apply.named_buffers()]
            self.params = {n: t.detach().clone() for n, t in named if t.is_inference()}
        if self.params:
            log.info("ScaPre Attack: %d inference-mode weights cloned for gradients", len(self.params))

    def sample_levels(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return self.sigmas[torch.randint(len(self.sigmas), (count,), generator=generator)]

    def _coefficients(self, sigma: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t = a * x0 + b * eps`` of this model's forward process at ``sigma``."""
        ones, zeros = torch.ones_like(like), torch.zeros_like(like)
        a = self.sampling.noise_scaling(sigma, zeros, ones)
        b = self.sampling.noise_scaling(sigma, ones, zeros)
        return a, b

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        a, b = self._coefficients(levels.to(x0.device), x0)
        return a * x0 + b * noise

    def predict_noise(self, x_noisy: torch.Tensor, levels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        sigma = levels.to(self.device)
        batch = x_noisy.shape[0]
        kwargs = {k: v.to(self.device).repeat(batch // v.shape[0], *([1] * (v.ndim - 1))) if v.shape[0] != batch
                  else v.to(self.device) for k, v in self.extra.items()}
        options = dict(self.transformer_options)
        options.update({"sigmas": sigma, "cond_or_uncond": [0] * batch})
        kwargs.update(c_crossattn=cond.to(self.device), transformer_options=options)
        if self.params:
            denoised = torch.func.functional_call(self.apply, self.params, (x_noisy, sigma), kwargs, strict=False)
        else:
            denoised = self.apply(x_noisy, sigma, **kwargs)
        a, b = self._coefficients(sigma, x_noisy)
        return (x_noisy - a * denoised.float()) / b


# ------------------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """KSampler's settings for every image of an attack (empty latent, denoise 1, negative = the empty prompt)."""

    steps: int = 20
    cfg: float = 7.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512


class Renderer:
    """One image at a time through ``comfy.sample.sample`` (KSampler's semantics), kept as latent and picture."""

    def __init__(self, clip, vae, sampling: Sampling, tick: Callable[[], None]) -> None:
        self.clip, self.vae, self.s, self.tick = clip, vae, sampling, tick
        self._negative = None

    def negative(self) -> list:
        if self._negative is None:
            self._negative = encode(self.clip, "")
        return self._negative

    def latent(self, model, positive: list, seed: int) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        empty = torch.zeros([1, 4, self.s.height // 8, self.s.width // 8])
        empty = comfy.sample.fix_empty_latent_channels(model, empty)
        noise = comfy.sample.prepare_noise(empty, seed)
        with torch.no_grad():
            out = comfy.sample.sample(model, noise, self.s.steps, self.s.cfg, self.s.sampler_name, self.s.scheduler,
                                      positive, self.negative(), empty, denoise=1.0, disable_pbar=True, seed=seed)
        self.tick()
        return out

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            image = self.vae.decode(latent)
        while image.ndim > 4:
            image = image.flatten(0, 1)
        return image[..., :3].detach().float().clamp(0, 1).cpu()


# ------------------------------------------------------------------------------------------------------------
# the attack
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackSettings:
    """One attack: ``method`` (:data:`METHODS`), the prompt ``template`` with ``{c}`` ("" = the concept type's first
    evaluation template), the soft-token search (``tokens``, ``steps``, ``lr``, ``norm_limit`` as a multiple of the
    template's largest token norm, 0 = unbounded, ``targets`` training images), the concept vector's
    ``strengths``, ``images`` evaluation images per concept, ``seed``, and the sampling."""

    method: str = SOFT
    template: str = ""
    tokens: int = 3
    steps: int = 100
    lr: float = 0.1
    norm_limit: float = 1.0
    targets: int = 4
    strengths: tuple[float, ...] = (1.0, 2.0, 4.0)
    images: int = 2
    seed: int = 0
    sampling: Sampling = field(default_factory=Sampling)

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        for name, low in (("tokens", 1), ("steps", 0), ("targets", 1), ("images", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not self.lr > 0 or self.norm_limit < 0:
            raise ValueError(f"learning rate must be > 0 and norm_limit >= 0, got {self.lr} and {self.norm_limit}")
        if self.template and PLACEHOLDER not in self.template:
            raise ValueError(f"template {self.template!r} has no {PLACEHOLDER}; write e.g. 'an image of {PLACEHOLDER}'")
        if self.sampling.width % 8 or self.sampling.height % 8:
            raise ValueError("width and height must be multiples of 8")

    def total_ticks(self, concepts: int) -> int:
        """Images sampled plus search steps, for the progress bar."""
        per = 2 * self.images  # originals, plain edit
        if self.method == SOFT:
            per += self.targets + self.steps + self.images
        else:
            per += len(self.strengths) * self.images
        return concepts * per


@dataclass
class AttackOutcome:
    """What an attack found and measured. ``conditionings``/``labels``: one CONDITIONING per concept (soft tokens)
    or per concept and strength (concept vector). ``panels``: ``(label, originals, others)`` picture rows.
    ``result``: the JSON-able figures. ``tensors``: the found vectors, for saving."""

    conditionings: list = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    panels: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _distances(original: torch.Tensor, other: torch.Tensor, clip_vision) -> dict[str, list[float]]:
    out = {"ssim": [float(c) for c in measures.image_change(original, other)]}
    if clip_vision is not None:
        a = clip_vision.encode_image(original)["image_embeds"].float()
        b = clip_vision.encode_image(other)["image_embeds"].float()
        out["clip"] = [1.0 - float(c) for c in measures.embedding_cosine(a, b)]
    return out


def _classifier_hits(run: Sequence[str], concept: str, images: torch.Tensor) -> dict[str, list[bool]]:
    out = {}
    if clf.IMAGENET in run and (index := clf.imagenet_class(concept)) is not None:
        out[clf.IMAGENET] = [t == index for t in clf.imagenet_top1(images)]
    if clf.NUDENET in run:
        out[clf.NUDENET] = [c > 0 for c in clf.exposed_counts(images)]
    return out


def run_attack(original, edited, clip, vae, concepts: Sequence[str], concept_type: str, settings: AttackSettings,
               tick: Callable[[], None] = lambda: None, clip_vision=None,
               classifier_measures: Sequence[str] = ()) -> AttackOutcome:
    """Attack ``edited`` on every concept (see :mod:`scapre_core.evaluation.recovery` for what "recovered" means).
    ``original`` and ``edited`` are never modified. ``tick()`` runs after every image and search step and may raise
    to cancel."""
    settings.check()
    if not concepts:
        raise ValueError("no concepts to attack: connect ScaPre Concept Encode or type the erased concepts")
    s = settings
    template = s.template or eval_templates(concept_type)[0]
    render = Renderer(clip, vae, s.sampling, tick)
    eval_seeds = [(s.seed + j) % 2**64 for j in range(s.images)]
    out = AttackOutcome()
    records: list[dict[str, Any]] = []
    searches: dict[str, dict[str, Any]] = {}
    for concept in concepts:
        prompt = fill(template, concept)
        plain_cond = encode(clip, prompt)
        originals = torch.cat([render.decode(render.latent(original, plain_cond, sd)) for sd in eval_seeds])
        if s.method == SOFT:  # the search's training images, while the original model is loaded
            train_seeds = [(s.seed + TRAIN_SEED_OFFSET + i) % 2**64 for i in range(s.targets)]
            targets = torch.cat([render.latent(original, plain_cond, sd) for sd in train_seeds])
        plain = torch.cat([render.decode(render.latent(edited, plain_cond, sd)) for sd in eval_seeds])
        attacks: list[tuple[str, list]] = []
        if s.method == SOFT:
            template_cond, slots = soft_template(clip, template, s.tokens)
            base = template_cond[0][0][0].detach().float().cpu()
            build = SoftPrompt(base, torch.tensor(slots))
            limit = float(base[1:].norm(dim=-1).max()) * s.norm_limit if s.norm_limit > 0 else None
            denoiser = ComfyDenoiser(edited, template_cond, targets[:1])
            x0 = edited.model.process_latent_in(targets.to(denoiser.device)).float()

            found = search_soft_tokens(denoiser, build, build.initial(), x0, s.steps, lr=s.lr, batch=1,
                                       max_norm=limit, generator=torch.Generator().manual_seed(s.seed),
                                       step=lambda done, total: tick())
            del denoiser, x0  # the cloned weights, if any
            cond = build(found.vectors, torch.zeros(1, dtype=torch.long))
            attacks.append((SOFT, [[cond.detach().float().cpu(), dict(template_cond[0][1])]]))
            out.tensors[f"{concept}/soft_tokens"] = found.vectors.float().cpu().contiguous()
            searches[concept] = {"first_loss": found.first_loss, "final_loss": found.final_loss,
                                 "steps": len(found.losses), "max_norm": limit}
        else:
            pairs = concept_pairs(concept, concept_type)
            encoder = PromptEncoder(clip)
            encoder.encode_all([t for p in pairs for t in p])
            with_c = torch.stack([_rows(encoder(p)) for p, _ in pairs])
            wo_c = torch.stack([_rows(encoder(q)) for _, q in pairs])
            vector = concept_vector(with_c, wo_c)
            neutral_cond = encode(clip, without_concept(template))
            neutral = neutral_cond[0][0][0].detach().float().cpu()
            if neutral.shape != vector.shape:
                raise ValueError(f"the neutral prompt {without_concept(template)!r} is longer than one chunk")
            for eta, cond in zip(s.strengths, add_concept_vector(neutral, vector, s.strengths), strict=True):
                attacks.append((f"vector x{eta:g}", [[cond.unsqueeze(0), dict(neutral_cond[0][1])]]))
            out.tensors[f"{concept}/concept_vector"] = vector.float().cpu().contiguous()
        out.images += [originals, plain]
        d_plain = _distances(originals, plain, clip_vision)
        out.panels.append((f"{concept} | plain edit: {prompt} | change {sum(d_plain['ssim']) / len(eval_seeds):.3f}",
                           originals, plain))
        hits_o = _classifier_hits(classifier_measures, concept, originals)
        hits_e = _classifier_hits(classifier_measures, concept, plain)
        for group, cond in attacks:
            attacked = torch.cat([render.decode(render.latent(edited, cond, sd)) for sd in eval_seeds])
            d_attack = _distances(originals, attacked, clip_vision)
            hits_a = _classifier_hits(classifier_measures, concept, attacked)
            for j, sd in enumerate(eval_seeds):
                record = {"concept": concept, "group": group, "seed": sd, "prompt": prompt,
                          "plain": d_plain["ssim"][j], "attacked": d_attack["ssim"][j],
                          "recovered": recovery.recovered(d_plain["ssim"][j], d_attack["ssim"][j])}
                if "clip" in d_plain:
                    record.update(plain_clip=d_plain["clip"][j], attacked_clip=d_attack["clip"][j],
                                  recovered_clip=recovery.recovered(d_plain["clip"][j], d_attack["clip"][j]))
                for name, flags in hits_a.items():
                    record[f"{name}_original"] = hits_o[name][j]
                    record[f"{name}_edited"] = hits_e[name][j]
                    record[f"{name}_attacked"] = flags[j]
                records.append(record)
            mean = sum(d_attack["ssim"]) / len(eval_seeds)
            done = sum(bool(r["recovered"]) for r in records[-len(eval_seeds):])
            out.panels.append((f"{concept} | {group} | change {mean:.3f}, recovered {done}/{len(eval_seeds)}",
                               originals, attacked))
            out.images.append(attacked)
            out.conditionings.append(cond)
            out.labels.append(f"{concept} | {group}")
    out.result = summarize(records, settings, template, classifier_measures)
    if searches:
        out.result["search"] = searches
    return out


def summarize(records: list[dict[str, Any]], settings: AttackSettings, template: str,
              classifier_measures: Sequence[str]) -> dict[str, Any]:
    """The attack's figures: recovery by SSIM (and CLIP vision, classifiers when measured) per group and pooled."""
    s = settings
    result = {"method": s.method, "template": template, "recovery": recovery.summarize_attack(records),
              "definition": f"recovered: the attacked image's change from the original's image is at most "
                            f"{recovery.SHARE:g} x the plain edit's change (SSIM change; images the edit left "
                            f"unchanged, change <= {recovery.FLOOR:g}, are not counted)",
              "records": records,
              "settings": {"tokens": s.tokens, "steps": s.steps, "lr": s.lr, "norm_limit": s.norm_limit,
                           "targets": s.targets, "strengths": list(s.strengths), "images": s.images, "seed": s.seed,
                           **s.sampling.__dict__}}
    if any("recovered_clip" in r for r in records):
        result["recovery_clip"] = recovery.summarize_attack(records, key="recovered_clip")
    for name in classifier_measures:
        rows = [r for r in records if f"{name}_attacked" in r]
        if rows:
            result.setdefault("classifiers", {})[name] = {
                side: recovery.rate([bool(r[f"{name}_{side}"]) for r in rows])
                for side in ("original", "edited", "attacked")}
    return result


#: The ``format`` of the ``scapre`` metadata entry in an attack's ``.safetensors`` (found vectors, conditionings).
ATTACK_FORMAT = "scapre-attack/1"


def attack_metadata(version: str, labels: Sequence[str], result: dict[str, Any] | None = None) -> dict[str, str]:
    """Safetensors metadata of an attack's tensors: the pack's one ``scapre`` entry (README "What a saved file
    records"), a JSON object with ``format`` ``scapre-attack/1``, ``pack``, ``version``, the ``conditionings``'
    labels in the order of the CONDITIONING list and, when given, the result without its per-image records."""
    entry: dict[str, Any] = {"format": ATTACK_FORMAT, "pack": PACK_NAME, "version": version,
                             "conditionings": list(labels)}
    if result is not None:
        entry["result"] = {k: v for k, v in result.items() if k != "records"}
    return {METADATA_KEY: json.dumps(entry, default=str)}


def markdown(result: dict[str, Any]) -> str:
    """The figures as a markdown table."""

    def f(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = ["## ScaPre attack", "", f"method: {result['method']}; template: `{result['template']}`", "",
             f"> {result['definition']}", "",
             "| attack | recovered (SSIM) | 95 % interval | images counted | mean change: plain | attacked |",
             "|---|---:|---|---:|---:|---:|"]
    for group, e in result["recovery"].items():
        lines.append(f"| {group} | {f(e['rate'])} | [{f(e['lo'])}, {f(e['hi'])}] | {e['n']} of {e['images']} | "
                     f"{f(e.get('mean_plain'))} | {f(e.get('mean_attacked'))} |")
    if "recovery_clip" in result:
        lines += ["", "| attack | recovered (CLIP vision) | 95 % interval | images counted |", "|---|---:|---|---:|"]
        for group, e in result["recovery_clip"].items():
            lines.append(f"| {group} | {f(e['rate'])} | [{f(e['lo'])}, {f(e['hi'])}] | {e['n']} |")
    for name, sides in result.get("classifiers", {}).items():
        lines += ["", f"{name}: concept found in " + ", ".join(
            f"{side} {f(e['rate'])}" for side, e in sides.items())]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# prompt variants and classifiers
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackPromptSet:
    """``SCAPRE_ATTACK_PROMPTS``: prompt variants of the erased concepts (``scapre_core.attack_prompts``), for
    ScaPre Compare and the command line."""

    variants: tuple[Variant, ...]
    concept_type: str
    notes: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.variants:
            out[v.kind] = out.get(v.kind, 0) + 1
        return out


def attack_prompt_set(clip, concepts: Sequence[str], concept_type: str, kinds: Sequence[str], per_kind: int,
                      synonyms: str = "", translations: str = "", seed: int = 0) -> AttackPromptSet:
    """The variants of ``concepts``; the ``neighbour`` kind reads ``clip``'s token-embedding table."""
    if not concepts:
        raise ValueError("no concepts: connect ScaPre Concept Encode or type the erased concepts")
    notes: list[str] = []
    near: dict[str, tuple[str, ...]] = {}
    if NEIGHBOUR in kinds:
        if clip is None:
            notes.append("neighbour variants need the clip input")
        else:
            near, more = neighbours(clip, concepts, per_kind)
            notes += more
    variants = attack_variants(concepts, concept_type, synonyms=word_lists(synonyms, concepts, "synonyms"),
                               translations=word_lists(translations, concepts, "translations"), neighbours=near,
                               kinds=kinds, per_kind=per_kind, seed=seed)
    present = {v.kind for v in variants}
    for kind in kinds:
        if kind not in present:
            why = {SYNONYM: "type synonyms", LANGUAGE: "type translations (built in: the explicit-content terms)",
                   MISSPELLING: "concepts of 4+ letters only"}.get(kind, "none found")
            notes.append(f"no {kind} variants ({why})")
    return AttackPromptSet(tuple(variants), concept_type, tuple(notes))
