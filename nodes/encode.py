"""ScaPreConceptEncode: text in, encoded erase/guide/preserve/probe prompts out."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..scapre_core import ConceptSet
from ..scapre_core.payloads import EncodedConcepts
from ..scapre_core.prompts import CONCEPT_TYPES, plan_prompts
from .common import CATEGORY, Concepts, log, progress

#: Prompts encoded per text-encoder call. ComfyUI encodes a multi-chunk prompt as a batch of
#: independent 77-token sequences, so several prompts packed as chunks of one call give the numbers of
#: separate calls up to rounding (about 2e-6 relative on CPU: batched products round differently),
#: several times faster.
ENCODE_BATCH = 16


class _Encoder:
    """Encodes prompts with the user's CLIP exactly as CLIPTextEncode does (once per distinct text)
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


class ScaPreConceptEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreConceptEncode",
            display_name="ScaPre Concept Encode",
            category=CATEGORY,
            description="Encode the concepts to erase (and optional guides, preserve prompts and probes) with "
                        "the model's own CLIP. Feed the output to ScaPre Informax and ScaPre Erase.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the model you will edit (from the same checkpoint)."),
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
            ],
            outputs=[Concepts.Output("encoded_concepts", display_name="concepts",
                                     tooltip="The encoded prompts; connect to ScaPre Informax and ScaPre Erase.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, clip, concepts, concept_type, expand_templates, templates, guide, preserve="",
                probes="") -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip is not connected: connect the CLIP output of your checkpoint loader")
        plan = plan_prompts(concepts, concept_type, expand_templates, templates, guide, preserve or "",
                            probes or "")
        for warning in plan.warnings:
            log.warning("ScaPreConceptEncode: %s", warning)
        encode = _Encoder(clip)
        texts = ["", *plan.prompts, *plan.guides, *plan.preserve, *plan.probes]
        encode.encode_all(texts, progress(cls.hidden.unique_id, "encode"))

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
        payload = EncodedConcepts(
            erase=erase_set,
            plan=plan,
            probes=_watch_set(encode, plan.probes, common_guide, empty, "probe"),
            preserve=_watch_set(encode, plan.preserve, common_guide, empty, "preserve prompt"),
            width=int(empty.shape[-1]),
            concept_type=concept_type,
        )
        log.info("ScaPreConceptEncode: %d concept(s), %d prompt(s), width %d", len(plan.concepts),
                 len(plan.prompts), payload.width)
        return io.NodeOutput(payload, ui={"text": [_summary(plan)]})


def _watch_set(encode: _Encoder, texts, guide: str, empty: torch.Tensor, what: str) -> ConceptSet | None:
    """Watched prompts aligned with the common guide, so the report measures them like erased ones."""
    if not texts:
        return None
    seqs, lasts = encode.sequences(texts, what)
    guide_seq, guide_last = encode(guide)
    return ConceptSet.from_embeddings(seqs, lasts, [guide_seq] * len(seqs), [guide_last] * len(seqs), empty,
                                      erase_texts=texts, guide_texts=[guide] * len(texts))


def _summary(plan) -> str:
    parts = [f"{len(plan.concepts)} concept(s) -> {len(plan.prompts)} prompt(s)"]
    if plan.preserve:
        parts.append(f"{len(plan.preserve)} preserved")
    if plan.probes:
        parts.append(f"{len(plan.probes)} probe(s)")
    return ", ".join(parts) + "".join(f"\nwarning: {w}" for w in plan.warnings)
