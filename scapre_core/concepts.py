"""The text side of an edit: concept vectors, aligned contexts and targets (SPEC "Inputs").

Everything here is computed once per edit from encoded prompts and shared by every layer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .validation import check_finite


@dataclass(frozen=True)
class ConceptSet:
    """Encoded erase, guide and preserve prompts, reduced to what the solve reads.

    Attributes (``m`` erase prompts, ``d`` the text-embedding width):
        concept_vecs: ``[m, d]``, ``c_j``: the embedding of the last word token of erase prompt ``j``.
        empty_vec: ``[d]``, ``e``: the empty prompt's embedding at position 1 (its end token); or
            ``[m, d]``, one reference vector per erase prompt (:meth:`from_aligned`).
        contexts: ``m`` tensors ``[t_j, d]``, ``X_j``: erase prompt ``j`` from its last word token on.
        targets: ``m`` tensors ``[t_j, d]``, ``Y_j``: the guide from its last word token, aligned to ``X_j``.
        guides: the distinct guide sequences from their last word token on; ``Y_j`` is a prefix of
            ``guides[guide_index[j]]`` (prompts that share a guide share its projection work).
        preserve_contexts: ``Z_k``: each preserve prompt from its last word token on.
        erase_texts / guide_texts / preserve_texts: optional labels for reports (same lengths).
        reference_gram: optional ``[d, d]`` ``sum_k R_k^T R_k`` of further prompts to keep (e.g. look-alikes found
            automatically); only the focus variant reads it (beside the preserve contexts). Set it with
            :meth:`with_references`.
    """

    concept_vecs: torch.Tensor
    empty_vec: torch.Tensor
    contexts: tuple[torch.Tensor, ...]
    targets: tuple[torch.Tensor, ...]
    preserve_contexts: tuple[torch.Tensor, ...] = ()
    guides: tuple[torch.Tensor, ...] = ()
    guide_index: tuple[int, ...] = ()
    erase_texts: tuple[str, ...] = ()
    guide_texts: tuple[str, ...] = ()
    preserve_texts: tuple[str, ...] = ()
    reference_gram: torch.Tensor | None = None

    def with_references(self, gram: torch.Tensor) -> ConceptSet:
        """A copy whose ``reference_gram`` is ``gram`` (``[d, d]``, finite, symmetric up to rounding)."""
        if not isinstance(gram, torch.Tensor) or tuple(gram.shape) != (self.dim, self.dim):
            raise ValueError(f"reference_gram must be a [{self.dim}, {self.dim}] tensor (the text width), got "
                             f"{getattr(gram, 'shape', type(gram).__name__)}")
        check_finite("reference_gram", gram)
        return dataclasses.replace(self, reference_gram=gram.detach().to(device="cpu", dtype=torch.float64))

    @property
    def num_concepts(self) -> int:
        return int(self.concept_vecs.shape[0])

    @property
    def dim(self) -> int:
        return int(self.concept_vecs.shape[1])

    @property
    def num_preserve(self) -> int:
        return len(self.preserve_contexts)

    @classmethod
    def from_embeddings(
        cls,
        erase: Sequence[torch.Tensor],
        erase_last: Sequence[int],
        guide: Sequence[torch.Tensor],
        guide_last: Sequence[int],
        empty: torch.Tensor,
        preserve: Sequence[torch.Tensor] = (),
        preserve_last: Sequence[int] = (),
        *,
        erase_texts: Sequence[str] = (),
        guide_texts: Sequence[str] = (),
        preserve_texts: Sequence[str] = (),
    ) -> ConceptSet:
        """Derive ``c_j``, ``X_j``, ``Y_j``, ``e`` and ``Z_k`` from encoded prompts (SPEC "Inputs").

        ``erase``, ``guide`` and ``preserve`` hold one ``[T, d]`` encoding per prompt (the padded
        conditioning the UNet reads); ``*_last`` is the index of each prompt's last word token
        (0 for an empty guide, whose aligned tokens then start at the start token). Contexts and
        targets are trimmed to a common length ``t_j = T - max(f_p, f_g)``.
        """
        erase, guide, preserve = list(erase), list(guide), list(preserve)
        erase_last, guide_last, preserve_last = list(erase_last), list(guide_last), list(preserve_last)
        if not erase:
            raise ValueError("no concepts: give at least one erase prompt")
        _same_length("erase_last", erase_last, "erase", erase)
        _same_length("guide", guide, "erase", erase)
        _same_length("guide_last", guide_last, "guide", guide)
        _same_length("preserve_last", preserve_last, "preserve", preserve)
        for name, texts, ref in (
            ("erase_texts", erase_texts, erase),
            ("guide_texts", guide_texts, guide),
            ("preserve_texts", preserve_texts, preserve),
        ):
            if len(texts) not in (0, len(ref)):
                raise ValueError(f"{name} has {len(texts)} entries but there are {len(ref)} prompts")

        empty = _as_sequence("empty", empty)
        if empty.shape[0] < 2:
            raise ValueError("empty must be the full padded encoding of the empty prompt ([T, d] with T >= 2)")
        dim = int(empty.shape[1])
        erase = [_as_sequence(f"erase[{j}]", t, dim) for j, t in enumerate(erase)]
        guide = [_as_sequence(f"guide[{j}]", t, dim) for j, t in enumerate(guide)]
        preserve = [_as_sequence(f"preserve[{k}]", t, dim) for k, t in enumerate(preserve)]
        erase_last = [_index(f"erase_last[{j}]", f, erase[j], low=1) for j, f in enumerate(erase_last)]
        guide_last = [_index(f"guide_last[{j}]", f, guide[j], low=0) for j, f in enumerate(guide_last)]
        preserve_last = [_index(f"preserve_last[{k}]", f, preserve[k], low=0) for k, f in enumerate(preserve_last)]

        guides, guide_index = _distinct_guides(guide, guide_last)
        contexts, targets = [], []
        for x_full, f_p, u in zip(erase, erase_last, guide_index, strict=True):
            x, y = x_full[f_p:], guides[u]
            t = min(x.shape[0], y.shape[0])
            contexts.append(x[:t].clone())
            targets.append(y[:t])  # a view: prompts sharing a guide share its storage
        concept_vecs = torch.stack([x[f] for x, f in zip(erase, erase_last, strict=True)])
        return cls(
            concept_vecs=concept_vecs,
            empty_vec=empty[1].clone(),
            contexts=tuple(contexts),
            targets=tuple(targets),
            preserve_contexts=tuple(z[f:].clone() for z, f in zip(preserve, preserve_last, strict=True)),
            guides=tuple(guides),
            guide_index=tuple(guide_index),
            erase_texts=tuple(str(t) for t in erase_texts),
            guide_texts=tuple(str(t) for t in guide_texts),
            preserve_texts=tuple(str(t) for t in preserve_texts),
        )

    @classmethod
    def from_aligned(
        cls,
        concept_vecs: torch.Tensor,
        empty_vec: torch.Tensor,
        contexts: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        preserve: Sequence[torch.Tensor] = (),
        *,
        erase_texts: Sequence[str] = (),
        guide_texts: Sequence[str] = (),
        preserve_texts: Sequence[str] = (),
    ) -> ConceptSet:
        """A set from contexts and targets that the caller has already aligned token by token.

        For text encoders whose layout :meth:`from_embeddings` does not describe (several encoders
        in one sequence, no start token, a model's own text projection applied first): ``X_j`` and
        ``Y_j`` are given as they are (``[t_j, d]`` each, row ``i`` of ``Y_j`` the target of row
        ``i`` of ``X_j``), with ``c_j`` (``concept_vecs``, ``[m, d]``) and ``e`` (``empty_vec``:
        ``[d]``, or ``[m, d]`` for one reference vector per erase prompt). ``preserve`` holds the
        ``Z_k``.

        Runs of identical consecutive token pairs (padding that a model reads as one repeated
        vector) are merged, see :func:`merge_runs`; equal targets share their guide storage.
        """
        contexts, targets, preserve = list(contexts), list(targets), list(preserve)
        if not contexts:
            raise ValueError("no concepts: give at least one erase prompt")
        _same_length("targets", targets, "contexts", contexts)
        for name, texts, ref in (("erase_texts", erase_texts, contexts), ("guide_texts", guide_texts, contexts),
                                 ("preserve_texts", preserve_texts, preserve)):
            if len(texts) not in (0, len(ref)):
                raise ValueError(f"{name} has {len(texts)} entries but there are {len(ref)} prompts")
        vecs = _as_sequence("concept_vecs", concept_vecs)
        if vecs.shape[0] != len(contexts):
            raise ValueError(f"concept_vecs has {vecs.shape[0]} rows but there are {len(contexts)} contexts; "
                             "give one concept vector per erase prompt")
        dim = int(vecs.shape[1])
        empty = _as_empty(empty_vec, len(contexts), dim)
        pairs = []
        for j, (x, y) in enumerate(zip(contexts, targets, strict=True)):
            x, y = _as_sequence(f"contexts[{j}]", x, dim), _as_sequence(f"targets[{j}]", y, dim)
            if x.shape != y.shape:
                raise ValueError(f"contexts[{j}] has shape {list(x.shape)} but targets[{j}] has {list(y.shape)}: "
                                 "align each context with its target token by token")
            pairs.append(merge_runs(x, y))
        zs = [merge_runs(_as_sequence(f"preserve[{k}]", z, dim))[0] for k, z in enumerate(preserve)]
        guides, guide_index = _prefix_guides([y for _, y in pairs])
        return cls(
            concept_vecs=vecs.clone(),
            empty_vec=empty.clone(),
            contexts=tuple(x.clone() for x, _ in pairs),
            targets=tuple(guides[u][: x.shape[0]] for (x, _), u in zip(pairs, guide_index, strict=True)),
            preserve_contexts=tuple(z.clone() for z in zs),
            guides=tuple(guides),
            guide_index=tuple(guide_index),
            erase_texts=tuple(str(t) for t in erase_texts),
            guide_texts=tuple(str(t) for t in guide_texts),
            preserve_texts=tuple(str(t) for t in preserve_texts),
        )

    def fingerprint(self) -> str:
        """A short hash of the numbers the edit reads, to match Informax results to concepts."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.concept_vecs, self.empty_vec, *self.contexts, *self.targets):
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def merge_runs(x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merge each run of ``n`` identical consecutive rows of ``x`` (and, when given, ``y`` at the
    same positions) into one row scaled by ``sqrt(n)``.

    Every quantity the edit and the report read from the tokens is a sum over tokens of products of
    a context row with a context or target row (``X^T X``, ``Y^T X``, ``||W X^T||``, ...), so the
    merged sequences give the same sums, up to rounding, with ``n - 1`` fewer rows per run: padding
    that a model reads as one repeated vector costs one token, not hundreds. Without runs the
    inputs are returned as they are."""
    if x.shape[0] < 2:
        return x, y
    same = (x[1:] == x[:-1]).all(dim=1)
    if y is not None:
        same &= (y[1:] == y[:-1]).all(dim=1)
    if not bool(same.any()):
        return x, y
    starts = torch.cat([torch.ones(1, dtype=torch.bool), ~same]).nonzero().squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([x.shape[0]])])
    scale = (ends - starts).to(x.dtype).sqrt().unsqueeze(1)
    return x[starts] * scale, None if y is None else y[starts] * scale


def _prefix_guides(targets: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Group targets that are prefixes of one another: each group stores its longest member once."""
    order = sorted(range(len(targets)), key=lambda j: -targets[j].shape[0])
    guides: list[torch.Tensor] = []
    index = [0] * len(targets)
    for j in order:
        y = targets[j]
        found = next((u for u, g in enumerate(guides) if torch.equal(g[: y.shape[0]], y)), None)
        if found is None:
            found = len(guides)
            guides.append(y.clone())
        index[j] = found
    return guides, index


def _as_empty(empty: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """``e`` as ``[d]`` (one for all erase prompts) or ``[m, d]`` (one per erase prompt)."""
    if not isinstance(empty, torch.Tensor):
        raise ValueError(f"empty_vec must be a torch.Tensor of shape [d] or [m, d], got {type(empty).__name__}")
    if empty.dim() == 1:
        return _as_sequence("empty_vec", empty.unsqueeze(0), dim)[0]
    if empty.dim() == 2 and empty.shape[0] == m:
        return _as_sequence("empty_vec", empty, dim)
    raise ValueError(f"empty_vec must have shape [{dim}] or [{m}, {dim}] (one per erase prompt), "
                     f"got {list(empty.shape)}")


def _distinct_guides(guide: list[torch.Tensor], guide_last: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    """Group equal guide sequences (from their last word on); cheap keys first, then exact equality."""
    guides: list[torch.Tensor] = []
    buckets: dict[tuple, list[int]] = {}
    index = []
    for g, f in zip(guide, guide_last, strict=True):
        seq = g[f:]
        key = (tuple(seq.shape), float(seq[0].sum()), float(seq.sum()))
        found = next((u for u in buckets.get(key, []) if torch.equal(guides[u], seq)), None)
        if found is None:
            found = len(guides)
            guides.append(seq.clone())
            buckets.setdefault(key, []).append(found)
        index.append(found)
    return guides, index


def _same_length(name: str, values: Sequence, ref_name: str, ref: Sequence) -> None:
    if len(values) != len(ref):
        raise ValueError(f"{name} has {len(values)} entries but {ref_name} has {len(ref)}; give one per prompt")


def _as_sequence(name: str, tensor: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Validate one encoded prompt and return a detached floating copy (half widened to float32)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [T, d], got {type(tensor).__name__}")
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2 or tensor.shape[0] < 1:
        raise ValueError(f"{name} must have shape [T, d] (one encoded prompt), got {list(tensor.shape)}")
    if dim is not None and tensor.shape[1] != dim:
        raise ValueError(
            f"{name} has embedding width {tensor.shape[1]} but the empty prompt has {dim}: "
            "encode every prompt with the same text encoder"
        )
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {tensor.dtype}")
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    out = tensor.detach().to(device="cpu", dtype=dtype)
    check_finite(name, out)
    return out


def _index(name: str, value: int, tensor: torch.Tensor, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer token index, got {value!r}")
    value = int(value)
    high = tensor.shape[0] - 1
    if not low <= value <= high:
        raise ValueError(f"{name} = {value} is out of range: it must be in [{low}, {high}] for a sequence of "
                         f"{tensor.shape[0]} tokens" + (" (index 0 is the start token, not a word)" if low else ""))
    return value
