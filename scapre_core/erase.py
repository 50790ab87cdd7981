"""The edit: one path for every key/value projection (SPEC "What is edited").

The text side is prepared once per edit and device; each matrix is then edited on its own, in the
configured precision, and returned in its own dtype and device. Inputs are never modified.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .concepts import ConceptSet
from .config import ScaPreConfig
from .focus import focus_map
from .geometry import bures_change, bures_coefficients, egbr_change, egbr_coefficients, linalg_device, to_float64
from .informax import InformaxResult, RowStats, row_stats, weight_checksum
from .lowrank import LowRankChange, worth_it
from .solve import TextSide, data_term, prepare_text_side, rhs_eig, solve_rows, solve_rows_e
from .validation import check_row_stats, check_weight

log = logging.getLogger(__name__)

Progress = Callable[[int, int], Any]


def compute_dtype(config: ScaPreConfig) -> torch.dtype:
    return torch.float64 if config.precision == "float64" else torch.float32


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """Keep CUDA float32 products in float32 (no TF32) for the duration of the edit."""
    cuda_matmul = torch.backends.cuda.matmul
    saved = cuda_matmul.allow_tf32
    cuda_matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            yield
    finally:
        cuda_matmul.allow_tf32 = saved


def check_inputs(weights: Mapping[str, torch.Tensor], concepts: ConceptSet) -> list[str]:
    """Validate every matrix before any work, so that a bad input costs nothing."""
    if not isinstance(concepts, ConceptSet):
        raise ValueError(f"concepts must be a ConceptSet, got {type(concepts).__name__}")
    if not weights:
        raise ValueError("no weights to edit: give at least one [out, in] key/value projection")
    names = list(weights)
    for name in names:
        check_weight(name, weights[name], concepts.dim)
    return names


class _TextCache:
    """One :class:`TextSide` per compute device, built on first use (for the focus variant: its map ``A``)."""

    def __init__(self, concepts: ConceptSet, config: ScaPreConfig) -> None:
        self._concepts, self._config = concepts, config
        self._by_device: dict[torch.device, TextSide | torch.Tensor] = {}

    def get(self, device: torch.device) -> TextSide | torch.Tensor:
        if device not in self._by_device:
            if self._config.variant == "focus":
                self._by_device[device] = focus_map(self._concepts, self._config, linalg_device(device)).to(
                    device=device, dtype=compute_dtype(self._config))
            else:
                self._by_device[device] = prepare_text_side(
                    self._concepts, self._config, device, compute_dtype(self._config)
                )
        return self._by_device[device]


def _iter_matrices(
    weights: Mapping[str, torch.Tensor],
    names: list[str],
    config: ScaPreConfig,
    device: torch.device | str | None,
    progress: Progress | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, w0)`` with ``w0`` a compute-precision copy on the compute device; report
    progress after each matrix is processed."""
    dtype = compute_dtype(config)
    for index, name in enumerate(names):
        source = weights[name]
        target = torch.device(device) if device is not None else source.device
        yield name, source.detach().to(device=target, dtype=dtype, copy=True)
        if progress is not None:
            progress(index + 1, len(names))


def edit_change(w0: torch.Tensor, text: TextSide, stats: RowStats, config: ScaPreConfig) -> torch.Tensor:
    """The change ``W - W0`` of one original ``w0`` (compute precision), by ``config.variant``, multiplied by
    ``config.strength`` below 1 (at 1 and above it is not multiplied: above 1 the method goes further itself,
    :attr:`ScaPreConfig.reach`; at 1 the published edit is computed exactly as without the dial).

    Computed as a change throughout (the solve in the eigenbasis of ``G0``, the Bures step and EGBR
    from per-row float64 scalars), so that it is accurate relative to itself, not to the weight. On the
    direct route (``text.direct``: wide text that fills its space) everything runs in float64 and the
    change is cast to the precision of ``w0`` at the end."""
    change = method_change(w0, text, stats, config)
    return change if config.strength >= 1.0 else change * config.strength


def method_change(w0: torch.Tensor, text: TextSide, stats: RowStats, config: ScaPreConfig) -> torch.Tensor:
    """The change ``W - W0`` the method computes for one original ``w0``, before ``config.strength`` scales it
    down (below 1); above 1 it goes further (:attr:`ScaPreConfig.reach`: erase scale times the reach, what pulls
    back and Informax's ``p`` divided by it; :meth:`ScaPreConfig.past_guide_for`: targets past the guides, shared
    among the erased prompts; the guides themselves are moved by the caller,
    :func:`~scapre_core.focus.toward_look_alikes`). For the focus variant ``text`` is its map ``A``
    (:func:`~scapre_core.focus.focus_map`, built with the reach) and the change is ``W0 A``."""
    if config.variant == "focus":
        return w0 @ text
    if text.direct and w0.dtype != torch.float64:
        return _method_change(to_float64(w0), text, stats, config).to(device=w0.device, dtype=w0.dtype)
    return _method_change(w0, text, stats, config)


def _row_weights(stats: RowStats, config: ScaPreConfig, rows: int, m: int, w0: torch.Tensor) -> torch.Tensor:
    """``[rows, m]``: the Informax row weights the data term reads (ones for uce and without Informax). Above
    strength 1 (beyond the paper) they are raised to ``1 / reach``, i.e. Informax's exponent ``p`` is divided by the
    reach: the published ``p`` (5 and 8 for many-objects and artists) leaves most rows at ``0.5^p`` of the erase
    term, too little for any erase scale the dial offers to forget (docs/miniworlds.md)."""
    if config.variant == "uce":
        return torch.ones(rows, m, dtype=w0.dtype, device=w0.device)
    weights = stats.weights_or_ones(rows, m, w0)
    return weights if config.reach == 1.0 else weights.pow(1.0 / config.reach)


def _method_change(w0: torch.Tensor, text: TextSide, stats: RowStats, config: ScaPreConfig) -> torch.Tensor:
    rows, m = w0.shape[0], text.concept_vecs.shape[0]
    check_row_stats(stats, config, rows, m)
    row_weights = _row_weights(stats, config, rows, m, w0)
    reach, scale = config.reach, config.solve_scale  # 1 and erase_scale up to strength 1
    data_e = data_term(w0, text, row_weights, scale, config.technique, config.past_guide_for(m))

    if config.variant == "scale":
        spread = None if stats.entropy is None else to_float64(stats.spread)
        mu = float(spread.mean()) if config.mu_from_entropy else float(config.mu)
        if reach != 1.0:
            mu = mu / reach
        lam_prox = config.lam + mu
        row_max = row_weights.max(dim=1).values
        solved = solve_rows(rhs_eig(w0, text, data_e, lam_prox, 0.0), text, mu, scale * row_max, w0)
        change = bures_change(w0, solved - w0, mu, lam_prox, config.bures_iters)
        return egbr_change(w0, change, spread) if config.egbr else change

    solved = solve_rows(rhs_eig(w0, text, data_e, config.lam, scale), text, 0.0, None, w0)
    if config.variant == "uce":
        return solved - w0
    entropy = stats.entropy.to(device=w0.device, dtype=w0.dtype).unsqueeze(1)
    keep = config.alpha_min + (1.0 - config.alpha_min) * entropy
    if reach != 1.0:
        keep = 1.0 - (1.0 - keep) / reach
    return keep * (solved - w0)


def lowrank_change(w0: torch.Tensor, text: TextSide, stats: RowStats, config: ScaPreConfig
                   ) -> LowRankChange | None:
    """:func:`edit_change` in compact form (``scapre_core.lowrank``), or ``None`` where the change has none:
    text that is not on the span route, the focus variant, strength 0.

    The same solve as :func:`method_change`, stopped before the change is spread over the ``d`` input
    columns: the solved rows' part in the span ``B`` minus the original's (``X - W0 B``), with the Bures step's
    and EGBR's per-row scalars formed from the row products in those ``r`` coordinates (``B`` is orthonormal,
    so ``|(X - W0 B) B^T|`` is ``|X - W0 B|`` and ``W0 . (X - W0 B) B^T`` is ``(W0 B) . (X - W0 B)``)."""
    if (config.variant not in ("scale", "small", "uce") or isinstance(text, torch.Tensor) or text.direct
            or not text.partial or config.strength == 0):
        return None
    rows, m = w0.shape[0], text.concept_vecs.shape[0]
    check_row_stats(stats, config, rows, m)
    row_weights = _row_weights(stats, config, rows, m, w0)
    reach, scale = config.reach, config.solve_scale
    data_e = data_term(w0, text, row_weights, scale, config.technique, config.past_guide_for(m))
    projected = w0 @ text.basis  # [o, r]
    row_scale = None
    if config.variant == "scale":
        spread = None if stats.entropy is None else to_float64(stats.spread)
        mu = float(spread.mean()) if config.mu_from_entropy else float(config.mu)
        if reach != 1.0:
            mu = mu / reach
        lam_prox = config.lam + mu
        row_max = row_weights.max(dim=1).values
        coef = solve_rows_e(rhs_eig(w0, text, data_e, lam_prox, 0.0), text, mu, scale * row_max) - projected
        a, b, p = to_float64(w0), to_float64(coef), to_float64(projected)
        n00, n0d, ndd = (a * a).sum(1, keepdim=True), (p * b).sum(1, keepdim=True), (b * b).sum(1, keepdim=True)
        del a, b, p
        c_w, c_d = torch.zeros_like(n00), torch.ones_like(n00)
        if config.bures_iters > 0:
            c_w, c_d = bures_coefficients(n00, n0d, ndd, mu, lam_prox, config.bures_iters)
        if config.egbr:
            # EGBR of (w0, c_w w0 + c_d delta): its products from the three above
            e_w, e_d = egbr_coefficients(n00, c_w * n00 + c_d * n0d,
                                         c_w * c_w * n00 + 2.0 * c_w * c_d * n0d + c_d * c_d * ndd, spread)
            c_w, c_d = e_w + e_d * c_w, e_d * c_d
        row_scale = c_w.squeeze(1).to(device=w0.device, dtype=w0.dtype)
        left = c_d.to(device=w0.device, dtype=w0.dtype) * coef
    else:
        left = solve_rows_e(rhs_eig(w0, text, data_e, config.lam, scale), text, 0.0, None) - projected
        if config.variant == "small":
            entropy = stats.entropy.to(device=w0.device, dtype=w0.dtype).unsqueeze(1)
            keep = config.alpha_min + (1.0 - config.alpha_min) * entropy
            if reach != 1.0:
                keep = 1.0 - (1.0 - keep) / reach
            left = keep * left
    change = LowRankChange(row_scale, left, text.basis.T)
    return change if config.strength >= 1.0 else change.scaled(config.strength)


def edit_matrix(w0: torch.Tensor, text: TextSide, stats: RowStats, config: ScaPreConfig) -> torch.Tensor:
    """The edited matrix ``W0 + change`` for one original ``w0`` (compute precision)."""
    return w0 + edit_change(w0, text, stats, config)


def erase_iter(
    weights: Mapping[str, torch.Tensor],
    concepts: ConceptSet,
    config: ScaPreConfig | None = None,
    informax: InformaxResult | None = None,
    progress: Progress | None = None,
    *,
    device: torch.device | str | None = None,
    changes: bool = False,
    compact: bool = False,
) -> Iterator[tuple[str, torch.Tensor | LowRankChange]]:
    """Like :func:`erase`, but yields ``(name, edited)`` one matrix at a time, so that a caller
    can store or measure each result before the next is computed. All inputs are validated before
    the first matrix is edited.

    With ``changes=True`` it yields ``(name, W - W0)`` instead, in the compute precision (at least
    float32) on the weight's device: the change as computed, without the rounding of adding it to a
    lower-precision weight and subtracting it again (what a patch or a LoRA stores). With ``compact=True`` as
    well, a change that has a compact form smaller than the dense matrix (:func:`lowrank_change`,
    ``lowrank.worth_it``) comes as a :class:`~scapre_core.lowrank.LowRankChange` on the weight's device."""
    config = config or ScaPreConfig()
    names = check_inputs(weights, concepts)
    with_weights, with_entropy = config.needs_row_weights, config.needs_entropy
    use_given = informax is not None and (with_weights or with_entropy)
    if use_given:
        informax.check_matches(names, concepts, config)
    if config.strength == 0:  # no edit: nothing to compute, every matrix comes back as it was
        for index, name in enumerate(names):
            source = weights[name].detach()
            if changes:
                yield name, torch.zeros(source.shape, dtype=compute_dtype(config), device=source.device)
            else:
                yield name, source.clone()
            if progress is not None:
                progress(index + 1, len(names))
        return
    texts = _TextCache(concepts, config)
    rights: dict[torch.device, torch.Tensor] = {}
    with full_precision_matmul():
        for name, w0 in _iter_matrices(weights, names, config, device, progress):
            source = weights[name]
            text = texts.get(w0.device)
            if config.variant == "focus":
                stats = RowStats(row_weights=None, entropy=None)
            elif use_given:
                informax.check_weight(name, source)
                stats = informax.stats[name]
            else:
                stats = row_stats(
                    name, w0, text.concept_vecs, text.empty_vec, config,
                    with_weights=with_weights, with_entropy=with_entropy,
                )
            compact_change = lowrank_change(w0, text, stats, config) if changes and compact else None
            if compact_change is not None and worth_it(compact_change):
                log.debug("edited %s %s (rank %d)", name, tuple(w0.shape), compact_change.rank)
                if source.device not in rights:
                    rights[source.device] = compact_change.right.to(device=source.device)
                right = rights[source.device]
                yield name, LowRankChange(
                    None if compact_change.row_scale is None else compact_change.row_scale.to(device=source.device),
                    compact_change.left.to(device=source.device), right)  # one right factor for every matrix
                continue
            change = edit_change(w0, text, stats, config)
            log.debug("edited %s %s", name, tuple(w0.shape))
            if changes:
                yield name, change.to(device=source.device)
            else:
                yield name, (w0 + change).to(device=source.device, dtype=source.dtype)


def erase(
    weights: Mapping[str, torch.Tensor],
    concepts: ConceptSet,
    config: ScaPreConfig | None = None,
    informax: InformaxResult | None = None,
    progress: Progress | None = None,
    *,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Edit every ``[o, d]`` matrix in ``weights`` independently (SPEC, whole page).

    Returns a new dict with the edited matrices in each input's own dtype and device. ``informax``
    (from :func:`informax_weights` with a matching config) replaces the row weights and entropy
    factors computed here, giving the same result. ``progress(done, total)`` is called after each
    matrix and may raise to cancel. ``device`` sets where the arithmetic runs (default: each
    matrix's own device).
    """
    return dict(erase_iter(weights, concepts, config, informax, progress, device=device))


def informax_weights(
    weights: Mapping[str, torch.Tensor],
    concepts: ConceptSet,
    config: ScaPreConfig | None = None,
    progress: Progress | None = None,
    *,
    device: torch.device | str | None = None,
) -> InformaxResult:
    """Informax row weights ``m_ij`` and entropy factors ``e_i`` of every matrix, on their own
    (SPEC "Informax row weights", "Entropy factor"); results are kept on the CPU.

    ``erase(..., informax=result)`` with the same config gives exactly what ``erase`` computes
    itself."""
    config = config or ScaPreConfig()
    names = check_inputs(weights, concepts)
    dtype = compute_dtype(config)
    stats: dict[str, RowStats] = {}
    with full_precision_matmul():
        for name, w0 in _iter_matrices(weights, names, config, device, progress):
            vecs = concepts.concept_vecs.to(device=w0.device, dtype=dtype)
            empty = concepts.empty_vec.to(device=w0.device, dtype=dtype)
            result = row_stats(name, w0, vecs, empty, config, with_weights=True, with_entropy=True)
            stats[name] = RowStats(
                row_weights=None if result.row_weights is None else result.row_weights.cpu(),
                entropy=result.entropy.cpu(),
            )
    return InformaxResult(
        stats=stats,
        settings=config.informax_key(),
        concept_fingerprint=concepts.fingerprint(),
        shapes={n: tuple(weights[n].shape) for n in names},
        checksums={n: weight_checksum(weights[n]) for n in names},
    )
