"""Drawing with a world's model and reading the pictures with the judge; the edit through ``scapre_core``.

The edit goes the way the ScaPre nodes do it: each concept prompt (the concept's words, no templates) encoded with
the world's text encoder, its last word token's index, guides = the empty prompt (last index 0), optional
preserve prompts, ``ConceptSet.from_embeddings``, then ``scapre_core.erase`` on every ``attn2.to_k`` /
``attn2.to_v`` weight of the UNet; for a diffusion transformer (``dit.py``) on its ``cross_attn.k`` / ``.v`` over the
contexts after its text projection, or on its text-input projection ``txt_in``, with T5's alignment (see
:func:`concept_set`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from scapre_core import ConceptSet, ScaPreConfig, erase
from scapre_core.focus import (
    GUIDE_NEIGHBOURS,
    binding_guide,
    binds,
    last_word,
    made_of,
    nearest,
    neighbour_guide,
    reference_gram,
    same_words,
)

from .judge import Judge
from .model import UNet, cross_attention_weights
from .train import World
from .world import COLOUR_NAMES, SHAPES, STYLES, prompt

#: Every concept word the world knows: the candidates for look-alikes and references (a model's "vocabulary").
VOCABULARY = (*COLOUR_NAMES, *SHAPES, *STYLES[1:])


@dataclass(frozen=True)
class Ask:
    """One prompt to draw: what it names (``style`` "solid" when it names none) and its template."""

    colour: str
    shape: str
    style: str = "solid"
    template: int = 1

    @property
    def text(self) -> str:
        return prompt(self.colour, self.shape, self.style, self.template)


@dataclass(frozen=True)
class Reading:
    """The judge's reading of drawn pictures: argmax indices and the probability of what was asked."""

    colour: torch.Tensor  # [n] indices
    shape: torch.Tensor
    style: torch.Tensor
    asked_prob: torch.Tensor  # [n] mean probability of the asked colour, shape and style

    def correct(self, asks: list[Ask]) -> torch.Tensor:
        """[n] booleans: colour, shape and style all read as asked."""
        c, s, st = asked_indices(asks)
        return (self.colour == c) & (self.shape == s) & (self.style == st)


def asked_indices(asks: list[Ask]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor([COLOUR_NAMES.index(a.colour) for a in asks]),
            torch.tensor([SHAPES.index(a.shape) for a in asks]),
            torch.tensor([STYLES.index(a.style) for a in asks]))


def draw(world: World, asks: list[Ask], seed: int, unet: UNet | None = None, steps: int = 20,
         guidance: float = 4.0) -> torch.Tensor:
    """One picture per ask, from starting noise fixed by ``seed`` and the ask's position (so an edited UNet
    draws from the same noise as the original)."""
    texts = sorted({a.text for a in asks} | {""})
    enc, _ = world.encode(texts)
    by_text = dict(zip(texts, enc, strict=True))
    cond = torch.stack([by_text[a.text] for a in asks])
    g = torch.Generator().manual_seed(seed)
    size = world.config.model.size
    noise = torch.randn(len(asks), 3, size, size, generator=g)
    return world.schedule.ddim(unet or world.unet, cond, by_text[""], noise, steps=steps, guidance=guidance)


def read(judge: Judge, images: torch.Tensor, asks: list[Ask]) -> Reading:
    pc, ps, pst = judge.probs(images)
    c, s, st = asked_indices(asks)
    asked = (pc.gather(1, c[:, None]) + ps.gather(1, s[:, None]) + pst.gather(1, st[:, None])).squeeze(1) / 3
    return Reading(pc.argmax(1), ps.argmax(1), pst.argmax(1), asked)


def concept_set(world: World, concepts: list[str], preserve: list[str] = ()) -> ConceptSet:
    """The nodes' text side: concept prompts as typed, guided to the empty prompt, optional preserve prompts.

    The contexts are what the edited weights read: the encodings after the denoiser's own text projection where it
    has one (``text_contexts``: a cross-attention DiT's ``text_embedding``). For an encoder without a start token
    (T5) they are aligned as the pack aligns T5's (``nodes/glue/encode.py``): a prompt's context is its rows from its
    last word token on; the empty guide's rows start at its first token (the end token ``</s>``) taken twice, so that
    the last word and the end token both meet the guide's end token and padding meets padding; the empty vector
    ``e`` is that end token. Here that is :meth:`ConceptSet.from_embeddings` on every encoding with its first row
    taken twice (indices shifted by one)."""
    erase_enc, erase_last = world.encode(list(concepts))
    empty, _ = world.encode([""])
    pres_enc, pres_last = world.encode(list(preserve)) if preserve else (None, [])
    project = getattr(world.unet, "text_contexts", None)
    if project is not None:
        with torch.no_grad():
            erase_enc, empty = project(erase_enc), project(empty)
            pres_enc = None if pres_enc is None else project(pres_enc)
    if not world.text_encoder.has_start_token:
        def twice(enc: torch.Tensor) -> torch.Tensor:
            return torch.cat([enc[:, :1], enc], dim=1)

        erase_enc, empty, erase_last = twice(erase_enc), twice(empty), [f + 1 for f in erase_last]
        if pres_enc is not None:
            pres_enc, pres_last = twice(pres_enc), [f + 1 for f in pres_last]
    empty = empty[0]
    kwargs = {}
    if preserve:
        kwargs = {"preserve": list(pres_enc), "preserve_last": pres_last, "preserve_texts": list(preserve)}
    return ConceptSet.from_embeddings(list(erase_enc), erase_last, [empty] * len(concepts), [0] * len(concepts),
                                      empty, erase_texts=list(concepts), guide_texts=[""] * len(concepts), **kwargs)


def neighbours(world: World, concepts: list[str], k: int, candidates: tuple[str, ...] = VOCABULARY) -> list[list[str]]:
    """For each concept, its ``k`` nearest candidates in the world's own text space (cosine of the encodings at the
    last word token, as ``ConceptSet.concept_vecs``), the erased concepts left out."""
    enc, last = world.encode(list(candidates))
    cenc, clast = world.encode(list(concepts))
    vecs = torch.stack([e[f] for e, f in zip(enc, last, strict=True)])
    cvecs = torch.stack([e[f] for e, f in zip(cenc, clast, strict=True)])
    erased = {i for i, c in enumerate(candidates) if c in concepts}
    return [[candidates[i] for i in row] for row in nearest(cvecs, vecs, k, [erased] * len(concepts))]


def focus_concept_set(world: World, concepts: list[str], guide_neighbours: int = GUIDE_NEIGHBOURS,
                      preserve: list[str] = (),
                      candidates: tuple[str, ...] = VOCABULARY) -> tuple[ConceptSet, dict]:
    """The text side of the focus variant with look-alikes found automatically, as the nodes find them: each concept
    guided to the mean of its ``guide_neighbours`` nearest candidates (``scapre_core.focus.GUIDE_NEIGHBOURS``: the
    nearest alone), a binding whose nearest is made of its own words ("green triangle" -> "triangle") to itself with
    its last word replaced by that word's nearest candidate (``scapre_core.focus.binding_guide``: "green bar"), and
    every candidate that is not erased (plus ``preserve``) as a reference, and the empty prompt. Returns the set and
    what was chosen (``{"guides": {concept: [words]}, "references": [...]}``)."""
    near = neighbours(world, concepts, guide_neighbours, candidates)
    for j, (concept, words) in enumerate(zip(concepts, near, strict=True)):
        if words and binds(concept, words[0]):
            allowed = tuple(c for c in candidates if not made_of(c, concept) and c not in concepts
                            and not any(same_words(e, binding_guide(concept, c)) for e in concepts))
            (replacement,) = neighbours(world, [last_word(concept)], 1, allowed)
            if replacement:
                near[j] = [binding_guide(concept, replacement[0])]
    erase_enc, erase_last = world.encode(list(concepts))
    (empty,), _ = world.encode([""])
    guides, guide_last = [], []
    for words in near:
        enc, last = world.encode(words)
        guide, f = neighbour_guide(list(enc), last)
        guides.append(guide)
        guide_last.append(f)
    references = [c for c in candidates if c not in concepts] + [p for p in preserve if p not in candidates] + [""]
    ref_enc, ref_last = world.encode(references)
    cs = ConceptSet.from_embeddings(list(erase_enc), erase_last, guides, guide_last, empty,
                                    erase_texts=list(concepts), guide_texts=[" + ".join(w) for w in near])
    cs = cs.with_references(reference_gram(list(ref_enc), ref_last))
    return cs, {"guides": dict(zip(concepts, near, strict=True)), "references": references}


def edited_unet(world: World, concepts: ConceptSet, config: ScaPreConfig) -> UNet:
    """A copy of the world's denoiser with every weight of :func:`cross_attention_weights` edited by ``scapre_core``
    (a UNet's ``attn2.to_k`` / ``attn2.to_v``, a DiT's ``cross_attn.k`` / ``.v`` or ``txt_in``)."""
    return unet_with(world, erase(cross_attention_weights(world.unet), concepts, config))


def unet_with(world: World, edited: dict[str, torch.Tensor]) -> UNet:
    """A copy of the world's denoiser with the weights ``edited`` (names of :func:`cross_attention_weights`)."""
    unet = copy.deepcopy(world.unet)
    _missing, unexpected = unet.load_state_dict(edited, strict=False)
    if unexpected:
        raise RuntimeError(f"edit returned unknown weights {unexpected}")
    return unet


def all_asks(templates: tuple[int, ...] = (1,), styles: tuple[str, ...] = STYLES) -> list[Ask]:
    """Every colour x shape x style, with the given templates."""
    return [Ask(c, s, st, t) for t in templates for st in styles for c in COLOUR_NAMES for s in SHAPES]


def accuracy(world: World, judge: Judge, seeds: tuple[int, ...] = (0,), steps: int = 20, guidance: float = 4.0,
             templates: tuple[int, ...] = (1,)) -> dict[str, float]:
    """How often the world's model draws what is asked, over all combinations (the judge's reading)."""
    asks = all_asks(templates)
    hits = {"colour": 0, "shape": 0, "style": 0, "all": 0}
    n = 0
    for seed in seeds:
        r = read(judge, draw(world, asks, seed, steps=steps, guidance=guidance), asks)
        c, s, st = asked_indices(asks)
        hits["colour"] += int((r.colour == c).sum())
        hits["shape"] += int((r.shape == s).sum())
        hits["style"] += int((r.style == st).sum())
        hits["all"] += int(r.correct(asks).sum())
        n += len(asks)
    return {k: round(v / n, 4) for k, v in hits.items()} | {"images": n}
