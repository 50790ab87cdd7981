"""Prompts in, encoded concepts out: the model's own CLIP, as CLIPTextEncode encodes
(COMFY_NOTES (b)); SPEC "Inputs (text side)"."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ...scapre_core import ConceptSet
from ...scapre_core.focus import nearest, neighbour_guide, reference_gram
from ...scapre_core.prompts import PromptPlan
from ...scapre_core.vocabulary import CANDIDATES, candidates_for
from .payloads import EncodedConcepts

#: ``look_alikes`` of ScaPre Concept Encode (beyond the paper; read by the focus variant, preset precise): auto =
#: candidates from scapre_core.vocabulary plus the preserve prompts; preserve prompts = only those; off = none.
LOOK_ALIKES = ("auto", "preserve prompts", "off")
#: Look-alikes that guide each concept (their mean encoding is its guide).
GUIDE_NEIGHBOURS = 2
#: The candidates' encodings per CLIP object (a clone, e.g. with a LoRA, is another key), encoded once in fixed
#: batches of the fixed list, so that they never depend on what else was encoded (ENCODE_BATCH packing rounds).
_POOL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: Prompts encoded per text-encoder call. ComfyUI encodes a multi-chunk prompt as a batch of
#: independent 77-token sequences, so several prompts packed as chunks of one call give the numbers of
#: separate calls up to rounding (about 2e-6 relative on CPU: batched products round differently),
#: several times faster.
ENCODE_BATCH = 16


class PromptEncoder:
    """Encodes prompts with the user's CLIP as CLIPTextEncode does, up to rounding (once per distinct text)
    and finds each prompt's last word token from the tokenizer's word ids."""

    def __init__(self, clip) -> None:
        self.clip = clip
        self._cache: dict[str, tuple[torch.Tensor, int]] = {}

    def encode_all(self, texts: list[str], step=None) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(todo), ENCODE_BATCH):
            batch = todo[start:start + ENCODE_BATCH]
            tokens = [self._tokens(text) for text in batch]
            packed = {name: [chunk for tok, _ in tokens for chunk in tok[name]] for name in tokens[0][0]}
            cond = self.clip.encode_from_tokens(packed)
            if isinstance(cond, (tuple, list)):
                cond = cond[0]
            cond = cond[0].detach().to(device="cpu", dtype=torch.float32)
            length = cond.shape[0] // len(batch)
            if length * len(batch) != cond.shape[0]:
                raise RuntimeError(f"unexpected conditioning length {cond.shape[0]} for {len(batch)} prompts")
            for i, (text, (_, last)) in enumerate(zip(batch, tokens, strict=True)):
                self._cache[text] = (cond[i * length:(i + 1) * length].clone(), last)
            if step is not None:
                step(min(start + ENCODE_BATCH, len(todo)), len(todo))

    def add(self, encoded: dict[str, tuple[torch.Tensor, int]]) -> None:
        """Take over encodings made elsewhere with the same CLIP (e.g. :func:`candidate_encodings`)."""
        for text, value in encoded.items():
            self._cache.setdefault(text, value)

    def __call__(self, text: str) -> tuple[torch.Tensor, int]:
        if text not in self._cache:
            self.encode_all([text])
        return self._cache[text]

    def _tokens(self, text: str) -> tuple[dict, int]:
        """Tokens for encoding (one 77-token chunk per tokenizer) and the last word token's index."""
        tokens = self.clip.tokenize(text, return_word_ids=True)
        lasts = set()
        for name, chunks in tokens.items():
            if len(chunks) != 1:
                raise ValueError(f"prompt {text!r} is longer than the text encoder's context window "
                                 f"({len(chunks)} chunks of 75 tokens in {name!r}): shorten it")
            word_positions = [i for i, tok in enumerate(chunks[0]) if len(tok) > 2 and tok[2] > 0]
            lasts.add(max(word_positions) if word_positions else 0)
        if len(lasts) != 1:
            raise ValueError(f"the tokenizers of this CLIP disagree on the words of {text!r}: {sorted(lasts)}")
        plain = {name: [[tuple(tok[:2]) for tok in chunk] for chunk in chunks] for name, chunks in tokens.items()}
        return plain, lasts.pop()

    def sequences(self, texts, what: str) -> tuple[list[torch.Tensor], list[int]]:
        seqs, lasts = [], []
        for text in texts:
            seq, last = self(text)
            if last == 0:
                raise ValueError(f"{what} {text!r} has no word tokens after tokenization; write a word")
            seqs.append(seq)
            lasts.append(last)
        return seqs, lasts



def candidate_encodings(clip, step: Callable[[int, int], None] | None = None) -> dict[str, tuple[torch.Tensor, int]]:
    """``{candidate: (encoding, last word index)}`` for every entry of ``scapre_core.vocabulary.CANDIDATES``."""
    try:
        cached = _POOL.get(clip)
    except TypeError:  # an object that cannot be weakly referenced: no cache
        cached = None
    if cached is None:
        encode = PromptEncoder(clip)
        encode.encode_all(list(CANDIDATES), step)
        cached = {text: encode(text) for text in CANDIDATES}
        try:
            _POOL[clip] = cached
        except TypeError:
            pass
    return cached


def encode_concepts(clip, plan: PromptPlan, concept_type: str = "",
                    step: Callable[[int, int], None] | None = None, look_alikes: str = "off") -> EncodedConcepts:
    """Encode every prompt of ``plan`` (erase, guides, preserve, probes) once, with ``clip``; with ``look_alikes``
    (``LOOK_ALIKES``) also the candidates of the focus variant (:func:`focus_concepts`).

    ``step(done, total)`` is called after each batch and may raise to cancel."""
    if look_alikes not in LOOK_ALIKES:
        raise ValueError(f"look_alikes must be one of {list(LOOK_ALIKES)}, got {look_alikes!r}")
    encode = PromptEncoder(clip)
    candidates = []
    if look_alikes != "off":
        pool = CANDIDATES if look_alikes == "auto" else ()
        candidates = candidates_for(list(plan.concepts), list(plan.preserve), pool)
        if not candidates:
            raise ValueError("look_alikes 'preserve prompts' needs preserve prompts that are not erased: type some "
                             "(look-alikes of what you erase and other things to keep), or choose auto or off")
    # the edit's own prompts first, batched exactly as without look-alikes (packing rounds), then the rest
    encode.encode_all(["", *plan.prompts, *plan.guides, *plan.preserve, *plan.probes], step)
    if candidates:
        if look_alikes == "auto":
            encode.add(candidate_encodings(clip, step))
        encode.encode_all([*plan.concepts, *candidates], step)
    empty, _ = encode("")
    erase_seqs, erase_last = encode.sequences(plan.prompts, "concept prompt")
    guide_seqs = [encode(g)[0] for g in plan.guides]
    guide_last = [encode(g)[1] for g in plan.guides]
    pres_seqs, pres_last = encode.sequences(plan.preserve, "preserve prompt")
    erase_set = ConceptSet.from_embeddings(
        erase_seqs, erase_last, guide_seqs, guide_last, empty, pres_seqs, pres_last,
        erase_texts=plan.prompts, guide_texts=plan.guides, preserve_texts=plan.preserve,
    )
    common_guide = plan.guides[0] if len(set(plan.guides)) == 1 else ""
    focus, chosen = (None, None) if not candidates else focus_concepts(encode, plan, candidates)
    return EncodedConcepts(
        erase=erase_set,
        plan=plan,
        probes=_watch_set(encode, plan.probes, common_guide, empty, "probe"),
        preserve=_watch_set(encode, plan.preserve, common_guide, empty, "preserve prompt"),
        width=int(empty.shape[-1]),
        concept_type=concept_type,
        focus=focus,
        look_alikes=chosen,
    )


def focus_concepts(encode: PromptEncoder, plan: PromptPlan,
                   candidates: list[str]) -> tuple[ConceptSet, dict[str, tuple[str, ...]]]:
    """The focus variant's text side: every erase prompt guided to the mean of the same prompt with each of its
    concept's ``GUIDE_NEIGHBOURS`` nearest candidates in place of the concept (nearest by the encodings at the last
    word token, the model's own text space), unless a guide was typed; every candidate (the preserve prompts are
    candidates) and the empty prompt as references. Returns it and the look-alikes per concept.
    """
    cand_seqs, cand_last = zip(*(encode(c) for c in candidates), strict=True)
    concept_seqs, concept_last = zip(*(encode(c) for c in plan.concepts), strict=True)
    cand_vecs = torch.stack([s[f] for s, f in zip(cand_seqs, cand_last, strict=True)])
    concept_vecs = torch.stack([s[f] for s, f in zip(concept_seqs, concept_last, strict=True)])
    near = nearest(concept_vecs, cand_vecs, GUIDE_NEIGHBOURS)
    chosen = {c: tuple(candidates[i] for i in row) for c, row in zip(plan.concepts, near, strict=True)}
    neighbour_prompts = [p.replace(plan.concepts[j], n) for p, j in zip(plan.prompts, plan.concept_index, strict=True)
                         for n in chosen[plan.concepts[j]]]
    encode.encode_all(neighbour_prompts)
    empty, _ = encode("")
    guides, guide_last, guide_texts = [], [], []
    for p, j, typed in zip(plan.prompts, plan.concept_index, plan.guides, strict=True):
        if typed:
            seq, last = encode(typed)
            guides.append(seq)
            guide_last.append(last)
            guide_texts.append(typed)
            continue
        names = chosen[plan.concepts[j]]
        seqs, lasts = zip(*(encode(p.replace(plan.concepts[j], n)) for n in names), strict=True)
        seq, last = neighbour_guide(list(seqs), list(lasts))
        guides.append(seq)
        guide_last.append(last)
        guide_texts.append(" + ".join(p.replace(plan.concepts[j], n) for n in names))
    erase_seqs, erase_last = encode.sequences(plan.prompts, "concept prompt")
    focus = ConceptSet.from_embeddings(erase_seqs, erase_last, guides, guide_last, empty,
                                       erase_texts=plan.prompts, guide_texts=guide_texts)
    # the references: every candidate (the preserve prompts are among them, counted once) and the empty prompt
    gram = reference_gram([*cand_seqs, empty], [*cand_last, 0])
    return focus.with_references(gram), chosen


def _watch_set(encode: PromptEncoder, texts, guide: str, empty: torch.Tensor, what: str) -> ConceptSet | None:
    """Watched prompts aligned with the common guide, so the report measures them like erased ones."""
    if not texts:
        return None
    seqs, lasts = encode.sequences(texts, what)
    guide_seq, guide_last = encode(guide)
    return ConceptSet.from_embeddings(seqs, lasts, [guide_seq] * len(seqs), [guide_last] * len(seqs), empty,
                                      erase_texts=texts, guide_texts=[guide] * len(texts))
