"""Prompts in, encoded concepts out: the model's own CLIP, as CLIPTextEncode encodes
(COMFY_NOTES (b)); SPEC "Inputs (text side)"."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...scapre_core import ConceptSet
from ...scapre_core.prompts import PromptPlan
from .payloads import EncodedConcepts

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



def encode_concepts(clip, plan: PromptPlan, concept_type: str = "",
                    step: Callable[[int, int], None] | None = None) -> EncodedConcepts:
    """Encode every prompt of ``plan`` (erase, guides, preserve, probes) once, with ``clip``.

    ``step(done, total)`` is called after each batch and may raise to cancel."""
    encode = PromptEncoder(clip)
    texts = ["", *plan.prompts, *plan.guides, *plan.preserve, *plan.probes]
    encode.encode_all(texts, step)

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
    return EncodedConcepts(
        erase=erase_set,
        plan=plan,
        probes=_watch_set(encode, plan.probes, common_guide, empty, "probe"),
        preserve=_watch_set(encode, plan.preserve, common_guide, empty, "preserve prompt"),
        width=int(empty.shape[-1]),
        concept_type=concept_type,
    )


def _watch_set(encode: PromptEncoder, texts, guide: str, empty: torch.Tensor, what: str) -> ConceptSet | None:
    """Watched prompts aligned with the common guide, so the report measures them like erased ones."""
    if not texts:
        return None
    seqs, lasts = encode.sequences(texts, what)
    guide_seq, guide_last = encode(guide)
    return ConceptSet.from_embeddings(seqs, lasts, [guide_seq] * len(seqs), [guide_last] * len(seqs), empty,
                                      erase_texts=texts, guide_texts=[guide] * len(texts))
