"""The attacks of ``scapre_core.attacks`` in the miniature world: its UNet as a ``Denoiser``, soft tokens in the
conditioning and in the text encoder's input, the concept vector, and prompt variants the world's words allow.

Used by ``attack_bench.py`` and ``tests/test_attacks_miniworld.py``. A concept is one or two of the world's words
("red", "circle", "striped", "green triangle"); an attack is judged on prompts naming it (``Ask``), drawn from
fixed noise, so that the original, the plain edit and the attacked edit draw from the same starting noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scapre_core.attacks import SoftPrompt, add_concept_vector, concept_vector, nearest_words, search_soft_tokens

from .evaluate import Ask
from .train import World
from .world import COLOUR_NAMES, SHAPES, STYLES, VOCAB, WORDS, tokenize

#: The word standing in the soft tokens' places before the search (a word the world draws nothing for).
FILLER = "image"
#: Soft tokens per concept word.
TOKENS = 2


class WorldDenoiser:
    """A world's UNet as ``scapre_core.attacks.Denoiser``: timestep indices, the cosine schedule, eps."""

    def __init__(self, world: World, unet: nn.Module) -> None:
        self.schedule = world.schedule
        self.unet = unet

    def sample_levels(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.schedule.steps, (count,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return self.schedule.add_noise(x0, noise, levels)

    def predict_noise(self, x_noisy: torch.Tensor, levels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x_noisy, levels, cond)


def concept_words(concept: str) -> list[str]:
    return concept.split()


def without(text: str, concept: str) -> str:
    """``text`` with the concept's words left out."""
    drop = set(concept_words(concept))
    return " ".join(w for w in text.split() if w not in drop)


def slotted(text: str, concept: str, tokens: int = TOKENS, filler: str = FILLER) -> tuple[str, list[int]]:
    """``text`` with the concept's words replaced by ``tokens`` filler words (at the first concept word), and the
    fillers' positions in the 77-token sequence (word ``i`` sits at position ``i + 1``)."""
    words = text.split()
    drop = set(concept_words(concept))
    first = next(i for i, w in enumerate(words) if w in drop)
    kept = [w for w in words if w not in drop]
    before = len([w for w in words[:first] if w not in drop])
    new = kept[:before] + [filler] * tokens + kept[before:]
    return " ".join(new), [before + 1 + i for i in range(tokens)]


@torch.no_grad()
def encode_ids(world: World, ids: torch.Tensor) -> torch.Tensor:
    return world.text_encoder(ids)


def encode_with_inputs(world: World, ids: torch.Tensor, slots: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The text encoder on ``ids [B, 77]`` with its token embeddings at ``slots [B, k]`` replaced by ``theta [k, d]``
    (a textual-inversion embedding), through a forward hook on ``token_embedding``: any encoder kind of the world
    that looks its tokens up there works unchanged."""
    rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(slots)

    def replace(_module, _inputs, output):
        return output.index_put((rows, slots), theta.to(output.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1))

    handle = world.text_encoder.token_embedding.register_forward_hook(replace)
    try:
        return world.text_encoder(ids)
    finally:
        handle.remove()


@dataclass(frozen=True)
class Templates:
    """The prompts an attack is trained and judged on, each with the concept replaced by soft-token slots."""

    texts: tuple[str, ...]  # the slotted prompts
    slots: torch.Tensor  # [T, k]
    ids: torch.Tensor  # [T, 77] token ids of the slotted prompts

    @classmethod
    def of(cls, asks: list[Ask], concept: str, tokens: int = TOKENS) -> Templates:
        texts, slots = zip(*(slotted(a.text, concept, tokens) for a in asks), strict=True)
        ids = torch.stack([tokenize(t)[0] for t in texts])
        return cls(tuple(texts), torch.tensor(slots, dtype=torch.long), ids)

    def conditioning_prompt(self, world: World) -> SoftPrompt:
        """Soft tokens in the conditioning the UNet reads."""
        return SoftPrompt(encode_ids(world, self.ids), self.slots)

    def input_prompt(self, world: World):
        """Soft tokens in the text encoder's input (a textual-inversion embedding): ``build(theta, which)``."""
        ids, slots = self.ids, self.slots

        def build(theta: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
            which = torch.as_tensor(which, dtype=torch.long)
            return encode_with_inputs(world, ids[which], slots[which], theta)

        with torch.no_grad():
            build.initial = world.text_encoder.token_embedding(ids[0, slots[0]]).clone()  # type: ignore[attr-defined]
        return build


def draw_conds(world: World, conds: torch.Tensor, seed: int, unet: nn.Module, steps: int = 10,
               guidance: float = 4.0, rows: list[int] | None = None, total: int | None = None) -> torch.Tensor:
    """Pictures from conditionings ``[n, 77, d]`` with the starting noise ``evaluate.draw`` uses for ``seed``: picture
    ``i`` from the ``i``-th noise, or, with ``rows``, from noise ``rows[i]`` of the ``total`` that ``draw`` would make
    for ``total`` asks; so they pair with ``draw``'s pictures of the same asks."""
    with torch.no_grad():
        (empty,), _ = world.encode([""])
        g = torch.Generator().manual_seed(seed)
        size = world.config.model.size
        noise = torch.randn(total or conds.shape[0], 3, size, size, generator=g)
        if rows is not None:
            noise = noise[rows]
        return world.schedule.ddim(unet, conds.detach(), empty, noise, steps=steps, guidance=guidance)


def soft_search(world: World, unet: nn.Module, templates: Templates, targets: torch.Tensor, which: torch.Tensor,
                space: str, steps: int, seed: int, lr: float = 0.1, batch: int = 8, bounded: bool = True):
    """``(conditionings of every template [T, 77, d], SearchResult)``: soft tokens found against ``unet`` (the
    edited model) so that it denoises ``targets`` (the original's pictures; ``which`` their templates). ``space``:
    ``"conditioning"`` or ``"input"``. With ``bounded`` the vectors are kept within the largest norm of the space's
    own vectors (conditioning: the templates' tokens after the start token; input: the token-embedding table)."""
    for p in unet.parameters():
        p.requires_grad_(False)
    for p in world.text_encoder.parameters():
        p.requires_grad_(False)
    if space == "conditioning":
        build = templates.conditioning_prompt(world)
        init, max_norm = build.initial(), float(build.base[:, 1:].norm(dim=-1).max())
    elif space == "input":
        build = templates.input_prompt(world)
        init = build.initial
        max_norm = float(world.text_encoder.token_embedding.weight.norm(dim=-1).max())
    else:
        raise ValueError(f"space must be 'conditioning' or 'input', got {space!r}")
    result = search_soft_tokens(WorldDenoiser(world, unet), build, init, targets, steps, which=which, lr=lr,
                                batch=batch, max_norm=max_norm if bounded else None,
                                generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        conds = build(result.vectors, torch.arange(len(templates.texts)))
    return conds, result


def vector_conds(world: World, asks: list[Ask], concept: str, pairs: list[tuple[str, str]],
                 strengths: tuple[float, ...]) -> torch.Tensor:
    """``[S, n, 77, d]``: each ask's prompt without the concept, plus ``eta`` times the concept vector (from
    ``pairs`` of prompts with and without it) for every strength ``eta``."""
    with_c, _ = world.encode([p for p, _ in pairs])
    wo_c, _ = world.encode([q for _, q in pairs])
    vector = concept_vector(with_c, wo_c)
    neutral, _ = world.encode([without(a.text, concept) for a in asks])
    out = torch.stack([add_concept_vector(n, vector, strengths) for n in neutral], dim=1)  # [S, n, 77, d]
    return out


def vector_pairs(concept: str) -> list[tuple[str, str]]:
    """Prompts with and without ``concept``: the concept with every other colour/shape it can go with, in the four
    templates (Ring-A-Bell's pairs, in the world's words)."""
    words = concept_words(concept)
    pairs = []
    colours = [c for c in COLOUR_NAMES if c not in words]
    shapes = [s for s in SHAPES if s not in words]
    for t in range(1, 5):
        for i in range(len(colours)):
            colour, shape = colours[i], shapes[i % len(shapes)]
            if len(words) == 2:
                ask = Ask(words[0], words[1], "solid", t)
            elif words[0] in COLOUR_NAMES:
                ask = Ask(words[0], shape, "solid", t)
            elif words[0] in SHAPES:
                ask = Ask(colour, words[0], "solid", t)
            else:
                ask = Ask(colour, shape, words[0], t)
            reduced = without(ask.text, concept)
            if reduced:
                pairs.append((ask.text, reduced))
    return list(dict.fromkeys(pairs))


#: Prompt variants the world's word-level vocabulary allows (no synonyms, spellings or languages exist in it).
CONTEXT_FORMS = ("reversed", "repeated", "moved to the start", "longer")


def context_variants(ask: Ask, concept: str) -> list[tuple[str, str]]:
    """``(form, prompt)``: the ask with the concept's words reversed in order with the rest, repeated, moved to the
    start, and inside a longer prompt."""
    words = ask.text.split()
    cw = concept_words(concept)
    rest = [w for w in words if w not in cw]
    out = [("reversed", " ".join(reversed(words))),
           ("repeated", " ".join(w if w not in cw else f"{w} {w}" for w in words)),
           ("moved to the start", " ".join([*cw, *rest])),
           ("longer", " ".join(["a", "photo", "of", "an", "image", "of", *words[words.index("a") + 1:]])
            if "a" in words else " ".join(["a", "photo", "of", "an", "image", "of", "a", *words]))]
    return out


def neighbour_words(world: World, concept: str, k: int = 2, exclude: tuple[str, ...] = ()) -> list[str]:
    """The world's nearest colour/shape/style words to each concept word in its token-embedding table (same kind of
    word, so that the variant stays a drawable prompt)."""
    table = world.text_encoder.token_embedding.weight.detach()
    out = []
    for w in concept_words(concept):
        pool = COLOUR_NAMES if w in COLOUR_NAMES else SHAPES if w in SHAPES else STYLES[1:]
        candidates = [(VOCAB[x], x) for x in WORDS if x in pool]
        out.append(nearest_words(table, [VOCAB[w]], candidates, k, exclude=(w, *exclude)))
    return out[0] if len(out) == 1 else [" ".join(p) for p in zip(*out, strict=False)]
