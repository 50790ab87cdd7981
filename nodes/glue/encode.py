"""Prompts in, encoded concepts out: the model's own text encoder(s), as CLIPTextEncode encodes
(COMFY_NOTES (b)); SPEC "Inputs (text side)", generalised to every text encoder ComfyUI ships.

A prompt's encoding is kept as the encoder gave it (:class:`Encoding`): the conditioning rows, where each
encoder's part of them lies (:class:`Segment`: SD3 puts its CLIP tokens before its T5 tokens), each part's
last word token, how many rows its attention mask marks as real, and the pooled vector. The model-specific
step (a model's own text projection, which rows it reads) comes later, when the model is known
(:func:`stream_sets`, called by the edit with the architecture's stream).

Alignment (SPEC "Inputs", per segment): an erase prompt's context is its rows from its last word token to
the end of the segment; its guide's rows are taken from the guide's last word token, and trimmed to the
same length. A guide without words (the empty prompt) starts at its start token where the encoder has one
(CLIP, as published); encoders without a start token (T5, umT5, Qwen's cropped template) start at the
guide's first token taken twice, so that the concept's last word and its end token both meet the guide's
end token and padding meets padding. Several segments are aligned one by one; each (prompt, segment) is
one erase entry with its own last-word vector ``c`` and its own empty vector ``e`` (the empty prompt's end
token in that segment).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ...scapre_core import ConceptSet
from ...scapre_core.focus import (
    GUIDE_NEIGHBOURS,
    LOOK_ALIKES_SHOWN,
    binding_guide,
    binds,
    last_word,
    made_of,
    nearest,
    neighbour_guide,
    reference_gram,
    same_words,
)
from ...scapre_core.prompts import PromptPlan
from ...scapre_core.vocabulary import CANDIDATES, candidates_for
from .architectures import QWEN_IM_END, ClipLayout, clip_layout
from .payloads import EncodedConcepts

log = logging.getLogger("comfyui-scapre")

#: Per-layer text outputs (HiDream's Llama-3.1) above this many bytes in one encode are logged as a warning.
LAYERS_WARN_BYTES = 2 * 2**30

#: ``look_alikes`` of ScaPre Concept Encode (beyond the paper; read by the focus variant, preset precise): auto =
#: candidates from scapre_core.vocabulary plus the preserve prompts; preserve prompts = only those; off = none.
LOOK_ALIKES = ("auto", "preserve prompts", "off")
#: The text encoders whose models' cross-attention reads their output directly, where the focus variant runs (SD1.x,
#: SD2.x, SDXL): ``auto`` finds look-alikes only for these, and leaves out the cost of encoding the candidates
#: elsewhere (a note in the summary says so).
LOOK_ALIKE_ENCODERS = ("SD1ClipModel", "SD2ClipModel", "SDXLClipModel", "SDXLRefinerClipModel")
#: The candidates' encodings per CLIP object (a clone, e.g. with a LoRA, is another key), encoded once in fixed
#: batches of the fixed list, so that they never depend on what else was encoded (ENCODE_BATCH packing rounds).
_POOL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: Prompts encoded per text-encoder call. ComfyUI encodes a multi-chunk prompt as a batch of
#: independent sequences, so several prompts packed as chunks of one call give the numbers of
#: separate calls up to rounding (about 2e-6 relative on CPU: batched products round differently),
#: several times faster. Only for encoders whose prompts all have the same length and whose pooled
#: output no model reads (ComfyUI returns the first chunk's pooled vector only).
ENCODE_BATCH = 16


@dataclass(frozen=True)
class Segment:
    """One encoder's rows in a prompt's conditioning: rows ``start``-``stop`` (``stop`` exclusive),
    ``visible`` of them marked real by the encoder's attention mask (all when it has none), the absolute
    row of the last word token (``None``: no word), and whether the encoder puts a start token first."""

    keys: tuple[str, ...]
    start: int
    stop: int
    visible: int
    last_word: int | None
    has_start: bool

    @property
    def label(self) -> str:
        return "+".join(self.keys)

    def end(self, masked: bool) -> int:
        return self.start + self.visible if masked else self.stop


@dataclass(frozen=True)
class Encoding:
    """One prompt as the text encoder gave it. ``rows`` holds the conditioning's first rows; its last row
    repeats up to ``length`` (trailing padding that the encoder zeroes, such as Wan's, is stored once).
    ``layers``: the encoder's per-layer output where it gives one (``ClipLayout.layers``; HiDream's Llama-3.1,
    ``[layers, tokens, width]``, stored by :func:`lossless_narrow`), its tokens laid out as ``layer_segment``."""

    rows: torch.Tensor
    length: int
    segments: tuple[Segment, ...]
    pooled: torch.Tensor | None = None
    layers: torch.Tensor | None = None
    layer_segment: Segment | None = None

    def with_rows(self, rows: torch.Tensor) -> Encoding:
        return Encoding(rows, self.length, self.segments, self.pooled, self.layers, self.layer_segment)

    def layer(self, index: int) -> Encoding:
        """Layer ``index`` of the per-layer output, as an encoding of its own (one segment)."""
        if self.layers is None or self.layer_segment is None:
            raise ValueError("this text encoder gave no per-layer output: encode the concepts with the text encoder "
                             "that belongs to this model")
        rows = self.layers[index].float()
        return Encoding(compress_tail(rows), int(rows.shape[0]), (self.layer_segment,))

    def slice(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start``-``stop`` of the full conditioning (repeated rows are views, not copies)."""
        stored = self.rows.shape[0]
        head = self.rows[min(start, stored):min(stop, stored)]
        extra = stop - max(start, stored)
        if extra <= 0:
            return head
        return torch.cat([head, self.rows[-1:].expand(extra, -1)])

    def row(self, index: int) -> torch.Tensor:
        return self.rows[min(index, self.rows.shape[0] - 1)]


def compress_tail(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` without the trailing repeats of its last row (kept once)."""
    same = (rows[1:] == rows[:-1]).all(dim=1)
    n = rows.shape[0]
    while n > 1 and bool(same[n - 2]):
        n -= 1
    return rows[:n].clone() if n < rows.shape[0] else rows


def lossless_narrow(values: torch.Tensor) -> torch.Tensor:
    """``values`` (float32) in bfloat16 or float16 where that holds every value exactly (an encoder run in half
    precision, as on a GPU, gives such values: half the memory, the same numbers), else a float32 copy."""
    for dtype in (torch.bfloat16, torch.float16):
        narrow = values.to(dtype)
        if torch.equal(narrow.to(torch.float32), values):
            return narrow
    return values.clone()


class PromptEncoder:
    """Encodes prompts with the user's CLIP as CLIPTextEncode does, up to rounding (once per distinct text),
    and finds each encoder segment's last word token."""

    def __init__(self, clip) -> None:
        self.clip = clip
        self.layout: ClipLayout = clip_layout(clip)
        if self.layout.check is not None:
            self.layout.check(clip)
        self._cache: dict[str, Encoding] = {}
        self._has_start = self._start_tokens()

    def _start_tokens(self) -> dict[str, bool]:
        """Per tokenizer key: does it put a start token before the text (CLIP, Llama) or not (T5)?"""
        tokens = self.clip.tokenize("a", return_word_ids=True)
        if self.layout.last_word == "qwen_template":
            return dict.fromkeys(tokens, False)  # the template before the text is cropped by the encoder
        return {key: len(chunks[0][0]) > 2 and chunks[0][0][2] == 0 for key, chunks in tokens.items()}

    def encode_all(self, texts: list[str], step=None) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        tokenized = {t: self._tokens(t) for t in todo}
        done = 0
        for batch in self._batches(todo, tokenized):
            self._encode_batch(batch, tokenized)
            done += len(batch)
            if step is not None:
                step(done, len(todo))

    def _batches(self, todo: list[str], tokenized: dict) -> list[list[str]]:
        lengths = {t: tuple(len(tok[k][0]) for k in sorted(tok)) for t, (tok, _) in tokenized.items()}
        packable = not self.layout.pooled and self.layout.last_word == "word_ids" and len(set(lengths.values())) <= 1
        size = ENCODE_BATCH if packable else 1
        return [todo[i:i + size] for i in range(0, len(todo), size)]

    def _encode_batch(self, batch: list[str], tokenized: dict) -> None:
        first = tokenized[batch[0]][0]
        packed = {name: [chunk for t in batch for chunk in tokenized[t][0][name]] for name in first}
        out = self.clip.encode_from_tokens(packed, return_pooled=True, return_dict=True)
        cond = out["cond"][0].detach().to(device="cpu", dtype=torch.float32)
        pooled = out.get("pooled_output")
        mask = out.get("attention_mask")
        length = cond.shape[0] // len(batch)
        if length * len(batch) != cond.shape[0]:
            raise RuntimeError(f"unexpected conditioning length {cond.shape[0]} for {len(batch)} prompts")
        if mask is not None:
            mask = mask.reshape(-1).to("cpu")
            mask = mask if mask.shape[0] == cond.shape[0] else None  # a mask of part of the rows: not ours
        for i, text in enumerate(batch):
            rows = cond[i * length:(i + 1) * length]
            visible = None if mask is None else int(mask[i * length:(i + 1) * length].sum())
            vec = None
            if pooled is not None and len(batch) == 1:
                vec = pooled.detach().reshape(-1).to(device="cpu", dtype=torch.float32).clone()
            segments = self._segments(text, tokenized[text], length, visible)
            layers, layer_segment = self._layers(text, out, i, len(batch), tokenized[text][1])
            self._cache[text] = Encoding(compress_tail(rows), length, segments, vec, layers, layer_segment)

    def _layers(self, text: str, out: Mapping, index: int, count: int, found: Mapping[str, tuple[int, int | None]]
                ) -> tuple[torch.Tensor | None, Segment | None]:
        """The per-layer output of prompt ``index`` of a batch of ``count`` (``ClipLayout.layers``) and its
        tokens' segment; ``(None, None)`` for encoders without one."""
        if self.layout.layers is None:
            return None, None
        key, tokenizer = self.layout.layers
        stack = out.get(key)
        if stack is None or stack.dim() != 4 or stack.shape[0] != count:
            raise RuntimeError(f"{self.layout.description}: expected the per-layer output {key!r} as "
                               f"[prompts, layers, tokens, width], got {None if stack is None else tuple(stack.shape)}")
        layers = lossless_narrow(stack[index].detach().to(device="cpu", dtype=torch.float32))
        tokens, last = found[tokenizer]
        if layers.shape[1] != tokens:
            raise ValueError(f"{self.layout.description}: the {tokenizer!r} text encoder gave {layers.shape[1]} rows "
                             f"for {tokens} tokens of {text!r}: load every text encoder this model uses")
        return layers, Segment((tokenizer,), 0, tokens, tokens, last, self._has_start[tokenizer])

    def add(self, encoded: Mapping[str, Encoding]) -> None:
        """Take over encodings made elsewhere with the same CLIP (e.g. :func:`candidate_encodings`)."""
        for text, value in encoded.items():
            self._cache.setdefault(text, value)

    def __call__(self, text: str) -> Encoding:
        if text not in self._cache:
            self.encode_all([text])
        return self._cache[text]

    def _tokens(self, text: str) -> tuple[dict, dict]:
        """Tokens for encoding (one chunk per tokenizer) and each tokenizer's ``(length, last word)``."""
        tokens = self.clip.tokenize(text, return_word_ids=True)
        found = {}
        for name, chunks in tokens.items():
            if len(chunks) != 1:
                raise ValueError(f"prompt {text!r} is longer than the text encoder's context window "
                                 f"({len(chunks)} chunks in {name!r}): shorten it")
            found[name] = (len(chunks[0]), self._last_word(chunks[0]))
        plain = {name: [[tuple(tok[:2]) for tok in chunk] for chunk in chunks] for name, chunks in tokens.items()}
        return plain, found

    def _last_word(self, chunk: list) -> int | None:
        if self.layout.last_word == "qwen_template":
            ends = [i for i, tok in enumerate(chunk) if tok[0] == QWEN_IM_END]
            return ends[1] - 1 if len(ends) >= 2 else None  # the template's second <|im_end|> closes the text
        words = [i for i, tok in enumerate(chunk) if len(tok) > 2 and tok[2] > 0]
        return max(words) if words else None

    def _segments(self, text: str, tokenized: tuple[dict, dict], rows: int, visible: int | None
                  ) -> tuple[Segment, ...]:
        tokens, found = tokenized
        groups = self.layout.segments(self.clip, tokens)
        out, start = [], 0
        for keys in groups:
            lengths = {found[k][0] for k in keys}
            lasts = {found[k][1] for k in keys}
            if len(lasts) != 1 or len(lengths) != 1:
                raise ValueError(f"the tokenizers {list(keys)} of this CLIP disagree on the words of {text!r}")
            count, last = lengths.pop(), lasts.pop()
            offset = 0
            if len(groups) == 1 and count > rows:
                offset = count - rows  # the encoder crops a prefix of its tokens (Qwen's template)
                count = rows
            if last is not None:
                last -= offset
                if last < 0:
                    last = None
            out.append(Segment(keys, start, start + count,
                               count if visible is None or len(groups) > 1 else min(visible, count),
                               None if last is None else start + last, self._has_start[keys[0]]))
            start += count
        if start != rows:
            raise RuntimeError(f"{self.layout.description}: the conditioning of {text!r} has {rows} rows but its "
                               f"tokens account for {start}")
        return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Alignment into the edit's concept sets
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamSets:
    """The concept sets one stream's matrices are edited and measured with, and the report's labels."""

    erase: ConceptSet
    probes: ConceptSet | None
    preserve: ConceptSet | None
    concept_of: Mapping[str, str] = field(default_factory=dict)


def _guide_tail(guide: Encoding, seg: Segment, masked: bool) -> torch.Tensor:
    stop = seg.end(masked)
    if seg.last_word is not None:
        return guide.slice(seg.last_word, stop)
    if seg.has_start:
        return guide.slice(seg.start, stop)
    return torch.cat([guide.slice(seg.start, seg.start + 1), guide.slice(seg.start, stop)])


def _entries(prompt: Encoding, guide: Encoding, empty: Encoding, source: str, masked: bool):
    """``(label suffix, c, e, X, Y)`` per segment of ``prompt`` aligned with ``guide``."""
    if source == "pooled":
        for enc, what in ((prompt, "prompt"), (guide, "guide"), (empty, "empty prompt")):
            if enc.pooled is None:
                raise ValueError(f"this text encoder gave no pooled vector for the {what}")
        yield "", prompt.pooled, empty.pooled, prompt.pooled[None], guide.pooled[None]
        return
    multi = len(prompt.segments) > 1
    for sp, sg, se in zip(prompt.segments, guide.segments, empty.segments, strict=True):
        x = prompt.slice(sp.last_word, sp.end(masked))
        y = _guide_tail(guide, sg, masked)
        t = min(x.shape[0], y.shape[0])
        e = empty.row(se.start + 1 if se.has_start else se.start)
        yield (f" [{sp.label}]" if multi else ""), prompt.row(sp.last_word), e, x[:t], y[:t]


def _preserve_rows(prompt: Encoding, source: str, masked: bool) -> torch.Tensor:
    if source == "pooled":
        return prompt.pooled[None]
    return torch.cat([prompt.slice(s.last_word, s.end(masked)) for s in prompt.segments])


def _set(encodings: Mapping[str, Encoding], texts, guides, preserve, source: str, masked: bool,
         concept_of: Mapping[str, str]) -> tuple[ConceptSet, dict[str, str]]:
    empty = encodings[""]
    vecs, empties, xs, ys, labels, guide_labels, of = [], [], [], [], [], [], {}
    for text, guide in zip(texts, guides, strict=True):
        for suffix, c, e, x, y in _entries(encodings[text], encodings[guide], empty, source, masked):
            vecs.append(c)
            empties.append(e)
            xs.append(x)
            ys.append(y)
            labels.append(text + suffix)
            guide_labels.append(guide)
            of[text + suffix] = concept_of.get(text, text)
    one_empty = all(torch.equal(e, empties[0]) for e in empties)
    zs = [_preserve_rows(encodings[p], source, masked) for p in preserve]
    cs = ConceptSet.from_aligned(torch.stack(vecs), empties[0] if one_empty else torch.stack(empties), xs, ys, zs,
                                 erase_texts=labels, guide_texts=guide_labels, preserve_texts=list(preserve))
    return cs, of


def stream_sets(plan: PromptPlan, encodings: Mapping[str, Encoding], source: str = "cond",
                project: Callable[[torch.Tensor], torch.Tensor] | None = None, masked: bool = False,
                concept_of: Mapping[str, str] | None = None) -> StreamSets:
    """Erase, probe and preserve sets of one stream: the encodings' ``source`` (``"cond"`` rows, the
    ``"pooled"`` vector or ``"layers:<k>"``, layer ``k`` of a per-layer output), passed through ``project``
    (a model's own row-wise text projection; each distinct row once), with the rows the encoder masks left out
    when ``masked``."""
    if source.startswith("layers:"):
        layer = int(source.split(":", 1)[1])
        encodings, source = {t: enc.layer(layer) for t, enc in encodings.items()}, "cond"
    if project is not None:
        encodings = {t: _projected(enc, source, project) for t, enc in encodings.items()}
    concept_of = dict(concept_of or {})
    erase, of = _set(encodings, plan.prompts, plan.guides, plan.preserve, source, masked, concept_of)
    common = plan.guides[0] if len(set(plan.guides)) == 1 else ""
    watched = {}
    for name, texts in (("probes", plan.probes), ("preserve", plan.preserve)):
        watched[name] = _set(encodings, texts, [common] * len(texts), (), source, masked, {})[0] if texts else None
    return StreamSets(erase, watched["probes"], watched["preserve"], of)


def _projected(enc: Encoding, source: str, project: Callable[[torch.Tensor], torch.Tensor]) -> Encoding:
    if source == "pooled":
        return Encoding(enc.rows, enc.length, enc.segments, project(enc.pooled[None])[0])
    return enc.with_rows(compress_tail(project(enc.rows)))


def candidate_encodings(clip, step: Callable[[int, int], None] | None = None) -> dict[str, Encoding]:
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
    if look_alikes == "auto" and encode.layout.name not in LOOK_ALIKE_ENCODERS:
        note = (f"look_alikes auto: none looked for with {encode.layout.description} (the precise preset runs on "
                "SD1.x, SD2.x and SDXL); preset auto runs a published preset")
        log.info("ScaPre Concept Encode: %s", note)
        notes = (note,)
        look_alikes = "off"
    else:
        notes = ()
    if look_alikes != "off":
        pool = CANDIDATES if look_alikes == "auto" else ()
        candidates = candidates_for(list(plan.concepts), list(plan.preserve), pool)
        if not candidates:
            raise ValueError("look_alikes 'preserve prompts' needs preserve prompts that are not erased: type some "
                             "(look-alikes of what you erase and other things to keep), or choose auto or off")
    # the edit's own prompts first, batched exactly as without look-alikes (packing rounds), then the rest
    texts = ["", *plan.prompts, *plan.guides, *plan.preserve, *plan.probes]
    encode.encode_all(texts, step)
    encodings = {t: encode(t) for t in dict.fromkeys(texts)}
    held = sum(e.layers.numel() * e.layers.element_size() for e in encodings.values() if e.layers is not None)
    if held > LAYERS_WARN_BYTES:
        log.warning("ScaPre Concept Encode: %s keeps every layer of its text encoder for %d prompts, %.1f GB of "
                    "memory until the edit is done; fewer prompts (templates, probes) take less",
                    encode.layout.description, len(encodings), held / 1e9)
    for what, group in (("concept prompt", plan.prompts), ("preserve prompt", plan.preserve),
                        ("probe", plan.probes)):
        for text in group:
            enc = encodings[text]
            if any(s.last_word is None for s in (*enc.segments, *filter(None, [enc.layer_segment]))):
                raise ValueError(f"{what} {text!r} has no word tokens after tokenization; write a word")
    concept_of = {p: plan.concepts[j] for p, j in zip(plan.prompts, plan.concept_index, strict=True)}
    sets = stream_sets(plan, encodings, concept_of=concept_of)
    focus, chosen, own = None, None, None
    if candidates:
        if len(encodings[""].segments) != 1:
            raise ValueError(f"look-alikes (the focus variant, preset precise, beyond the paper) work with one text "
                             f"encoder's tokens (SD1.x, SD2.x, SDXL); this text encoder is "
                             f"{encode.layout.description}: set look_alikes to off")
        if look_alikes == "auto":
            encode.add(candidate_encodings(clip, step))
        encode.encode_all([*plan.concepts, *candidates], step)
        focus, chosen = focus_concepts(encode, plan, candidates)
        own = own_guides(encode, plan)
    return EncodedConcepts(
        erase=sets.erase,
        plan=plan,
        probes=sets.probes,
        preserve=sets.preserve,
        width=int(encodings[""].rows.shape[-1]),
        concept_type=concept_type,
        encodings=encodings,
        text_encoder=encode.layout.name,
        focus=focus,
        own_guides=own,
        look_alikes=chosen,
        notes=notes,
    )


def _tokens_of(encode: PromptEncoder, text: str) -> tuple[torch.Tensor, int]:
    """``(rows [length, d], last word row)`` of ``text`` (one encoder segment, as the UNet reads it)."""
    enc = encode(text)
    (segment,) = enc.segments
    last = segment.last_word if segment.last_word is not None else segment.start
    return enc.slice(0, enc.length), last


def binding_guides(encode: PromptEncoder, bound: list[str], candidates: list[str], cand_vecs: torch.Tensor,
                   erased: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``{concept: guide}`` for the bindings ``bound`` (``scapre_core.focus.binds``): each concept with its last word
    replaced by that word's nearest candidate (``binding_guide``), leaving out candidates made of the concept's own
    words, erased concepts, and candidates whose guide would be an erased concept ("red triangle" when erasing "red
    circle" and "red triangle"). A concept with no such candidate keeps its guide (absent from the result)."""
    if not bound:
        return {}
    words = [last_word(c) for c in bound]
    encode.encode_all(words)
    vecs = torch.stack([s[f] for s, f in (_tokens_of(encode, w) for w in words)])
    skip = [{i for i, cand in enumerate(candidates)
             if made_of(cand, c) or any(same_words(e, x) for e in erased for x in (cand, binding_guide(c, cand)))}
            for c in bound]
    rows = nearest(vecs, cand_vecs, 1, skip)
    return {c: binding_guide(c, candidates[row[0]]) for c, row in zip(bound, rows, strict=True) if row}


def own_guides(encode: PromptEncoder, plan: PromptPlan) -> ConceptSet:
    """The erase prompts guided as the plan says (a typed guide, else the empty prompt), on the tokens
    :func:`focus_concepts` uses: where strength above 1 moves the guides towards the look-alikes from
    (``scapre_core.focus.toward_look_alikes``; beyond the paper)."""
    erase_seqs, erase_last = zip(*(_tokens_of(encode, p) for p in plan.prompts), strict=True)
    guide_seqs, guide_last = zip(*(_tokens_of(encode, g) for g in plan.guides), strict=True)
    empty, _ = _tokens_of(encode, "")
    return ConceptSet.from_embeddings(list(erase_seqs), list(erase_last), list(guide_seqs), list(guide_last), empty,
                                      erase_texts=plan.prompts, guide_texts=plan.guides)


def focus_concepts(encode: PromptEncoder, plan: PromptPlan,
                   candidates: list[str]) -> tuple[ConceptSet, dict[str, tuple[str, ...]]]:
    """The focus variant's text side: every erase prompt guided to the same prompt with its concept's nearest
    candidate in place of the concept (the mean over the ``GUIDE_NEIGHBOURS`` nearest; nearest by the encodings at
    the last word token, the model's own text space), unless a guide was typed; a binding whose nearest candidate is
    made of its own words ("green triangle" -> "triangle") is guided to itself with its last word replaced
    (:func:`binding_guides`). Every candidate (the preserve prompts are candidates) and the empty prompt are
    references. Returns it and the ``LOOK_ALIKES_SHOWN`` nearest look-alikes per concept (the guide first).
    """
    cand_seqs, cand_last = zip(*(_tokens_of(encode, c) for c in candidates), strict=True)
    concept_seqs, concept_last = zip(*(_tokens_of(encode, c) for c in plan.concepts), strict=True)
    cand_vecs = torch.stack([s[f] for s, f in zip(cand_seqs, cand_last, strict=True)])
    concept_vecs = torch.stack([s[f] for s, f in zip(concept_seqs, concept_last, strict=True)])
    near = nearest(concept_vecs, cand_vecs, max(GUIDE_NEIGHBOURS, LOOK_ALIKES_SHOWN))
    found = {c: tuple(candidates[i] for i in row) for c, row in zip(plan.concepts, near, strict=True)}
    guiding = {c: names[:GUIDE_NEIGHBOURS] for c, names in found.items()}
    for c, guide in binding_guides(encode, [c for c in plan.concepts if found[c] and binds(c, found[c][0])],
                                   candidates, cand_vecs, plan.concepts).items():
        guiding[c] = (guide,)
        found[c] = (guide, *found[c])
    neighbour_prompts = [p.replace(plan.concepts[j], n) for p, j in zip(plan.prompts, plan.concept_index, strict=True)
                         for n in guiding[plan.concepts[j]]]
    encode.encode_all(neighbour_prompts)
    empty, _ = _tokens_of(encode, "")
    guides, guide_last, guide_texts = [], [], []
    for p, j, typed in zip(plan.prompts, plan.concept_index, plan.guides, strict=True):
        if typed:
            seq, last = _tokens_of(encode, typed)
            guides.append(seq)
            guide_last.append(last)
            guide_texts.append(typed)
            continue
        names = guiding[plan.concepts[j]]
        seqs, lasts = zip(*(_tokens_of(encode, p.replace(plan.concepts[j], n)) for n in names), strict=True)
        seq, last = neighbour_guide(list(seqs), list(lasts))
        guides.append(seq)
        guide_last.append(last)
        guide_texts.append(" + ".join(p.replace(plan.concepts[j], n) for n in names))
    erase_seqs, erase_last = zip(*(_tokens_of(encode, p) for p in plan.prompts), strict=True)
    focus = ConceptSet.from_embeddings(list(erase_seqs), list(erase_last), guides, guide_last, empty,
                                       erase_texts=plan.prompts, guide_texts=guide_texts)
    # the references: every candidate (the preserve prompts are among them, counted once) and the empty prompt
    gram = reference_gram([*cand_seqs, empty], [*cand_last, 0])
    return focus.with_references(gram), {c: names[:LOOK_ALIKES_SHOWN] for c, names in found.items()}
