"""The closed-form solve (SPEC "The closed-form solve", "The small-scale variant", "Baseline").

The text statistics ``S``, ``C C^T``, ``P`` and the preserve Gram matrix do not depend on the
layer; :func:`prepare_text_side` builds them once per edit, factorizes the layer-independent part
of ``G`` once (in float64), and the per-matrix work is a few matrix products.

Batched solve. For the scale variant every row solves ``(G + s r_i P) w_i = b_i`` with
``G = G0 + mu I + mu R1``, where ``G0 = lambda I + C C^T + S (+ q Z^T Z)``, ``R1 = U diag(1 - g) U^T``
(ASED, else 0) and ``P = U diag(pi) U^T`` (``U`` the left singular vectors of ``C``,
``pi = s^2 / (s^2 + eps)``, which is exactly ``C (C^T C + eps I)^{-1} C^T``). With ``G0 = E diag(l0) E^T``
(one eigendecomposition per edit), ``A = G0 + mu I + mu R1`` is inverted by one Woodbury step of
rank ``k = rank(C)``, and with ``Up = U diag(sqrt(pi))`` and ``Up^T A^{-1} Up = V diag(kappa) V^T``::

    w_i = A^{-1} b_i - A^{-1} Up V diag(s r_i / (1 + s r_i kappa)) V^T Up^T A^{-1} b_i

so one ``k x k`` eigendecomposition per matrix replaces one Cholesky factorization per row.

Precision. ``S`` has eigenvalues up to ~1e6 times ``lambda`` (77 tokens per prompt, CLIP's large
token norms and outlier dimensions), so a float32 solve that forms the right-hand side ``b`` in the
standard basis loses about ``cond(G) * eps`` of the weight: the large components of ``b`` along the
strong directions of ``G0`` leave rounding errors in the weak ones, which the solve then amplifies.
Here the right-hand side is formed directly in the eigenbasis of ``G0``: the contexts, the preserve
Gram matrix and the SVD residual are rotated into it once per edit in float64, so every eigen-coordinate
of ``b`` is a sum of terms of its own size and is accurate to float32 relative to itself; each is then
divided by its own eigenvalue. The rank-``k`` corrections are built in float64 (they are ``k x d``).
The float32 edit then equals the float64 edit to about ``1e-6`` of the edit (``bench_solve.py``).

Short text in a wide space. When the contexts, concept vectors and preserve contexts have at most 3/4 as
many rows ``n`` as the text is wide (a DiT's long padding merged to one row per prompt, a handful of
concepts), ``G0`` differs from ``lambda I`` only on their span: :func:`_span_eigh` finds its eigenpairs there
(``d n^2`` instead of ``d^3``), every per-matrix product runs in those ``r`` coordinates (``o d r`` instead
of ``o d^2``), and each row keeps its part off the span unchanged, as the full solve does.

Wide text that fills its space (T5's 256-512 distinct rows per prompt before a joint-attention model's text-input
projection: ``n`` rows, ``n > 3d/4``, ``d >= DIRECT_MIN_DIM``): the ``d x d`` eigendecomposition and the rotation
of every context into it would cost far more than the few matrices such a text stream has (one ``txt_in`` or
``context_embedder``). There every matrix is solved directly in float64 instead (:func:`solve_rows`,
``text.direct``): ``G0`` is formed once, each matrix factorizes ``G0 + mu I (+ mu R1)`` by Cholesky and forms its
data term and right-hand side in float64, so nothing depends on forming ``b`` in a good basis; the result is
the float64 solve, cast to the compute precision at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .concepts import ConceptSet
from .config import ScaPreConfig
from .geometry import linalg_device, spectral_gate

#: Added to ``C^T C`` in the concept-span projector ``P`` (SPEC "Inputs").
PROJ_EPS = 1e-8

#: Text widths from which a text that fills its space is solved directly in float64 (module docstring): there a
#: ``d x d`` eigendecomposition (about 35 ``d^3`` flops, slow on a CPU) costs more than a float64 data term and
#: a Cholesky factorization per matrix for the handful of matrices such text streams have. The route depends
#: on the text alone, never on how many matrices are edited together, so a matrix's edit does not depend on
#: the others.
DIRECT_MIN_DIM = 3072

#: Columns per block of :func:`sym_gram` (fixed: results never depend on the machine).
GRAM_BLOCK = 512


def pad_sequences(seqs: tuple[torch.Tensor, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Stack ``[t_j, d]`` tensors into ``[n, t_max, d]`` with zero rows after each sequence.

    Zero rows add nothing to any Gram matrix or data term, so padded sums are exact."""
    if not seqs:
        return torch.zeros(0, 0, 0, dtype=dtype, device=device)
    t_max = max(s.shape[0] for s in seqs)
    out = torch.zeros(len(seqs), t_max, seqs[0].shape[1], dtype=dtype, device=device)
    for j, s in enumerate(seqs):
        out[j, : s.shape[0]] = s.to(device=device, dtype=dtype)
    return out


def sym_gram(k: torch.Tensor, block: int = GRAM_BLOCK) -> torch.Tensor:
    """``K^T K`` (``[d, d]``) from its upper block rows only (about half the products of ``K^T @ K``);
    the diagonal blocks are symmetrized, the lower blocks mirrored, so the result is exactly symmetric."""
    d = k.shape[1]
    out = torch.empty(d, d, dtype=k.dtype, device=k.device)
    for a in range(0, d, block):
        b = min(a + block, d)
        strip = k[:, a:b].T @ k[:, a:]  # [b - a, d - a]
        diag = strip[:, : b - a]
        out[a:b, a:b] = 0.5 * (diag + diag.T)
        out[a:b, b:] = strip[:, b - a:]
        out[b:, a:b] = strip[:, b - a:].T
    return out


def gram(seqs: tuple[torch.Tensor, ...], dtype: torch.dtype, device: torch.device, dim: int) -> torch.Tensor:
    """``sum_j X_j^T X_j`` (``[d, d]``)."""
    out = torch.zeros(dim, dim, dtype=dtype, device=device)
    for s in seqs:
        x = s.to(device=device, dtype=dtype)
        out.addmm_(x.T, x)
    return out


@dataclass(frozen=True)
class TextSide:
    """Everything the per-matrix work reads from the text, on the compute device and dtype.

    ``basis``/``eigvals64``: ``G0 = basis diag(eigvals64) basis^T``; ``span_e64 = basis^T U``;
    ``proj_weights64`` is ``pi``; ``weak_gate`` is ``1 - g`` (ASED; ``None`` when off);
    ``residual_ctx`` is ``P_w C`` for the small variant's SVD residual (``None`` when off).
    Fields ending in ``_e`` are already rotated into the eigenbasis (see the module docstring);
    fields ending in ``64`` stay in float64 for the small rank-``k`` work.

    With ``direct`` (wide text that fills its space, module docstring) there is no eigenbasis: ``basis`` and
    ``eigvals64`` are ``None``, ``gram64`` is ``G0``, and the fields ending in ``_e`` (and ``contexts``,
    ``guides``, ``residual_ctx``) are in the standard basis, in float64 on the linear-algebra device."""

    concept_vecs: torch.Tensor  # [m, d]
    empty_vec: torch.Tensor  # [d]
    contexts: torch.Tensor | None  # [m, t, d], X_j zero-padded (only for technique="tensor")
    contexts_e: torch.Tensor  # [m, t, d], X_j E: the contexts in the eigenbasis of G0
    guides: torch.Tensor  # [u, t, d], the distinct guide sequences, zero-padded; Y_j is a prefix
    guide_index: torch.Tensor  # [m], which guide each erase prompt maps to
    preserve_gram_e: torch.Tensor | None  # [d, d], (q sum_k Z_k^T Z_k) E
    basis: torch.Tensor | None  # [d, d], E (None when direct)
    eigvals64: torch.Tensor | None  # [d], float64 on the linear-algebra device (None when direct)
    span_e64: torch.Tensor  # [d, k], float64 on the linear-algebra device
    proj_weights64: torch.Tensor  # [k], float64 on the linear-algebra device
    weak_gate: torch.Tensor | None  # [k], float64 on the linear-algebra device
    residual_ctx: torch.Tensor | None  # [d, m]
    residual_e: torch.Tensor | None  # [m, d], (P_w C)^T E
    #: ``basis`` spans only the text (``[d, r]``, ``r < d``); ``G0 = lambda I`` on the rest (:func:`_span_eigh`)
    partial: bool = False
    #: solved per matrix in float64 by Cholesky factorizations of ``gram64 + mu I (+ mu R1)`` (no eigenbasis)
    direct: bool = False
    gram64: torch.Tensor | None = None  # [d, d], G0 in float64 (direct only)
    preserve_rows64: torch.Tensor | None = None  # [rows, d], sqrt(q) Z_k stacked (direct only; Q = rows^T rows)


def prepare_text_side(
    concepts: ConceptSet, config: ScaPreConfig, device: torch.device, dtype: torch.dtype
) -> TextSide:
    """Build the layer-independent statistics once per edit; factorizations run in float64."""
    f64, lin = torch.float64, linalg_device(device)
    dim = concepts.dim
    c = concepts.concept_vecs.to(device=lin, dtype=f64).T  # [d, m]
    preserve_gram = None
    if concepts.num_preserve:
        preserve_gram = config.preserve_scale * gram(concepts.preserve_contexts, f64, lin, dim)
    if route(concepts, config) == "direct":
        return _prepare_direct(concepts, config, device, dtype)
    if 4 * text_rows(concepts, config) <= 3 * dim:
        eigvals, basis = _span_eigh(concepts, config, lin)
    else:
        g0 = config.lam * torch.eye(dim, dtype=f64, device=lin)
        g0 += config.solve_scale * gram(concepts.contexts, f64, lin, dim)
        if preserve_gram is not None:
            g0 += preserve_gram
        if config.variant != "uce":
            g0 += c @ c.T
        eigvals, basis = torch.linalg.eigh(0.5 * (g0 + g0.T))

    u, proj_weights, weak_gate, residual_ctx = _concept_span(c, config)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype)

    return TextSide(
        concept_vecs=cast(concepts.concept_vecs),
        empty_vec=cast(concepts.empty_vec),
        contexts=(pad_sequences(concepts.contexts, dtype, device)
                  if config.technique == "tensor" or config.past_guide else None),
        contexts_e=rotate_sequences(concepts.contexts, basis, dtype, device),
        guides=pad_sequences(concepts.guides, dtype, device),
        guide_index=torch.tensor(concepts.guide_index, dtype=torch.long, device=device),
        preserve_gram_e=None if preserve_gram is None else cast(preserve_gram @ basis),
        basis=cast(basis),
        eigvals64=eigvals,
        span_e64=basis.T @ u,
        proj_weights64=proj_weights,
        weak_gate=weak_gate,
        residual_ctx=cast(residual_ctx),
        residual_e=None if residual_ctx is None else cast(residual_ctx.T @ basis),
        partial=basis.shape[1] < dim,
    )


def _concept_span(c: torch.Tensor, config: ScaPreConfig):
    """``(U, pi, 1 - g or None, P_w C or None)`` of the concept matrix ``C`` (``[d, m]``, float64)."""
    u, sv, _ = torch.linalg.svd(c, full_matrices=False)  # u: [d, k]
    proj_weights = sv * sv / (sv * sv + PROJ_EPS)
    gate = spectral_gate(sv, config.t_sigma, config.p_sigma)
    weak_gate = (1.0 - gate) if (config.variant == "scale" and config.ased) else None
    residual_ctx = None
    if config.variant == "small" and config.svd_residual:
        residual_ctx = c - u @ (gate.unsqueeze(1) * (u.T @ c))  # (I - U diag(g) U^T) C
    return u, proj_weights, weak_gate, residual_ctx


def route(concepts: ConceptSet, config: ScaPreConfig) -> str:
    """How the solve works for this text (module docstring): ``"span"`` (short text, on its span),
    ``"direct"`` (wide text that fills its space, float64 Cholesky per matrix) or ``"eigen"`` (the rest)."""
    if 4 * text_rows(concepts, config) <= 3 * concepts.dim:
        return "span"
    return "direct" if concepts.dim >= DIRECT_MIN_DIM else "eigen"


def _prepare_direct(concepts: ConceptSet, config: ScaPreConfig, device: torch.device, dtype: torch.dtype
                    ) -> TextSide:
    """The text side of the direct route: every statistic in float64 in the standard basis on the
    linear-algebra device; ``G0`` formed once from the stacked rows (:func:`sym_gram`)."""
    f64, lin = torch.float64, linalg_device(device)
    dim = concepts.dim
    c = concepts.concept_vecs.to(device=lin, dtype=f64).T  # [d, m]
    contexts = pad_sequences(concepts.contexts, f64, lin)  # zero rows add nothing to G0 or the data term
    g0 = config.solve_scale * sym_gram(contexts.reshape(-1, dim))
    g0.diagonal().add_(config.lam)
    if config.variant != "uce":
        g0 += c @ c.T
    preserve_rows = None
    if concepts.num_preserve:  # Q = q Z^T Z, applied as (W0 Z^T) Z per matrix
        preserve_rows = math.sqrt(config.preserve_scale) * torch.cat(
            [p.to(device=lin, dtype=f64) for p in concepts.preserve_contexts])
        g0 += sym_gram(preserve_rows)
    u, proj_weights, weak_gate, residual_ctx = _concept_span(c, config)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype)

    return TextSide(
        concept_vecs=cast(concepts.concept_vecs),
        empty_vec=cast(concepts.empty_vec),
        contexts=contexts if config.technique == "tensor" or config.past_guide else None,
        contexts_e=contexts,
        guides=pad_sequences(concepts.guides, f64, lin),
        guide_index=torch.tensor(concepts.guide_index, dtype=torch.long, device=lin),
        preserve_gram_e=None,
        basis=None,
        eigvals64=None,
        span_e64=u,
        proj_weights64=proj_weights,
        weak_gate=weak_gate,
        residual_ctx=residual_ctx,
        residual_e=None if residual_ctx is None else residual_ctx.T,
        direct=True,
        gram64=g0,
        preserve_rows64=preserve_rows,
    )


#: A direction of the text whose curvature ``s sigma^2`` is below this fraction of the largest is left in the
#: complement (curvature ``lambda``); its effect on the solve is below ``1e-12 s sigma_max^2 / lambda``.
SPAN_RTOL = 1e-12


def text_rows(concepts: ConceptSet, config: ScaPreConfig) -> int:
    """How many rows span the text statistics of ``G0 - lambda I``: an upper bound on their rank."""
    rows = sum(x.shape[0] for x in concepts.contexts) + sum(z.shape[0] for z in concepts.preserve_contexts)
    return rows + (concepts.num_concepts if config.variant != "uce" else 0)


def _span_eigh(concepts: ConceptSet, config: ScaPreConfig, lin: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of ``G0`` on the span of the text (``[r]``, ``[d, r]``), when that span is small.

    ``G0 - lambda I = K^T K`` with ``K`` the rows ``sqrt(s) X_j``, ``c_j`` (not for uce) and ``sqrt(q) Z_k``;
    off their span ``G0`` is ``lambda I``. An orthonormal basis ``Q`` of the span (a QR of ``K^T``) and the
    eigenvectors of ``(K Q)^T (K Q)`` give the eigenvectors ``Q V`` at ``n^2 d`` instead of ``d^3``; the solve
    then works in those ``r`` coordinates and leaves the complement of every row as it is (its right-hand
    side is ``prox w0`` there, divided by the same ``prox``)."""
    f64 = torch.float64
    parts = [math.sqrt(config.solve_scale) * x.to(device=lin, dtype=f64) for x in concepts.contexts]
    if config.variant != "uce":
        parts.append(concepts.concept_vecs.to(device=lin, dtype=f64))
    parts += [math.sqrt(config.preserve_scale) * z.to(device=lin, dtype=f64) for z in concepts.preserve_contexts]
    k = torch.cat(parts)  # [n, d]
    q, _ = torch.linalg.qr(k.T)  # [d, n]
    kq = k @ q
    curv, vecs = torch.linalg.eigh(kq.T @ kq)
    keep = curv > SPAN_RTOL * max(float(curv.max()), 0.0) if curv.numel() else curv > 0
    keep &= curv > 0
    return config.lam + curv[keep], q @ vecs[:, keep]


def rotate_sequences(
    seqs: tuple[torch.Tensor, ...], basis: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``[n, t_max, d]``: each ``X_j E`` (float64 product, then cast), zero-padded like :func:`pad_sequences`."""
    if not seqs:
        return torch.zeros(0, 0, 0, dtype=dtype, device=device)
    t_max = max(s.shape[0] for s in seqs)
    out = torch.zeros(len(seqs), t_max, basis.shape[1], dtype=dtype, device=device)
    for j, s in enumerate(seqs):
        out[j, : s.shape[0]] = (s.to(device=basis.device, dtype=basis.dtype) @ basis).to(device=device, dtype=dtype)
    return out


#: Erase prompts per block of the data term: bounds its working memory (``o x block x t`` floats);
#: fixed, so results never depend on the machine.
CONCEPT_BLOCK = 128


def data_term(
    w0: torch.Tensor, text: TextSide, row_weights: torch.Tensor, erase_scale: float, technique: str,
    overshoot: float = 0.0,
) -> torch.Tensor:
    """``V E`` with ``V = s sum_j m_j (.) (T_j X_j)`` and targets ``T_j = W0 Y_j^T`` (``[o, d]``): the
    data term in the eigenbasis ``E`` of ``G0``, from the rotated contexts ``X_j E`` (module docstring).

    With ``text.direct`` the contexts are in the standard basis (``r = d``): ``V`` itself, in the dtype of
    ``w0`` (float64 there).

    ``technique="tensor"`` first removes from ``T_j`` its component along the normalised source
    projection ``W0 X_j^T`` (Frobenius inner product, per concept).

    ``overshoot`` ``o > 0`` (beyond the paper, :attr:`ScaPreConfig.past_guide`) moves each target past its guide,
    away from the source: ``T_j + o (T_j - W0 X_j^T)``. At 0 the targets are the guides' exactly.

    Each distinct guide is projected once; ``Y_j`` is a prefix of its guide, and the columns of
    ``T_j`` past ``t_j`` meet the zero padding of ``X_j``, so they add nothing."""
    o, (m, t, r), d = w0.shape[0], text.contexts_e.shape, w0.shape[1]
    u, t_guide = text.guides.shape[:2]
    if t_guide < t:
        raise AssertionError("guide sequences are never shorter than the contexts they align with")
    guide_proj = (w0 @ text.guides[:, :t].reshape(u * t, d).T).reshape(o, u, t)
    if text.direct and technique != "tensor" and not overshoot:
        return _data_term_by_mode(guide_proj, text, row_weights, erase_scale)
    out = torch.zeros(o, r, dtype=w0.dtype, device=w0.device)
    step = min(CONCEPT_BLOCK, max(1, CONCEPT_BLOCK * 77 // max(t, 1)))  # T5's 256-512 rows: fewer per block
    for start in range(0, m, step):
        block = slice(start, min(start + step, m))
        n = block.stop - block.start
        target = guide_proj[:, text.guide_index[block], :]
        if technique == "tensor" or overshoot:  # the source projection W0 X_j^T, once for both
            source = (w0 @ text.contexts[block].reshape(n * t, d).T).reshape(o, n, t)
        if technique == "tensor":
            norm2 = (source * source).sum(dim=(0, 2))
            inner = (source * target).sum(dim=(0, 2))
            coef = torch.where(norm2 > 0, inner / norm2.clamp_min(torch.finfo(w0.dtype).tiny), 0.0)
            target = target - coef.view(1, n, 1) * source
        if overshoot:
            target = target + overshoot * (target - source)
        target = target * (erase_scale * row_weights[:, block]).unsqueeze(2)
        out.addmm_(target.reshape(o, n * t), text.contexts_e[block].reshape(n * t, r))
    return out


def column_modes(row_weights: torch.Tensor) -> torch.Tensor:
    """``[m]``: each column's most common value (the smallest of equally common ones): the weight most rows of a
    matrix give a concept (Informax's weights take a few distinct values per concept)."""
    out = torch.empty(row_weights.shape[1], dtype=row_weights.dtype, device=row_weights.device)
    for j in range(row_weights.shape[1]):
        values, counts = torch.unique(row_weights[:, j], return_counts=True)  # sorted values
        out[j] = values[int(torch.argmax(counts))]
    return out


def _data_term_by_mode(guide_proj: torch.Tensor, text: TextSide, row_weights: torch.Tensor, erase_scale: float
                       ) -> torch.Tensor:
    """:func:`data_term` on the direct route (float64, standard basis; not the tensor technique), by splitting each
    concept's row weights into their most common value ``c_j`` and the rows that differ from it:
    ``V = s sum_g (W0 Y_g^T) (sum_{j -> g} c_j X_j) + s sum_j sum_{i: m_ij != c_j} (m_ij - c_j) (W0 Y_j^T)_i X_j``.
    The same sum in another order: the first term costs one ``o t d`` product per distinct guide instead of one per
    concept, the second only the differing rows (about 7 % of them for Informax's weights on the Flux shapes of
    ``bench_solve.py``), where :func:`data_term`'s loop costs ``o n t d`` whatever the weights."""
    o, u, t = guide_proj.shape
    contexts, index = text.contexts_e, text.guide_index
    modes = column_modes(row_weights)
    pooled = torch.zeros(u, t, contexts.shape[2], dtype=contexts.dtype, device=contexts.device)
    for j in range(contexts.shape[0]):
        pooled[int(index[j])].add_(contexts[j], alpha=float(modes[j]))
    out = torch.zeros(o, contexts.shape[2], dtype=guide_proj.dtype, device=guide_proj.device)
    for g in range(u):
        out.addmm_(guide_proj[:, g, :], pooled[g])
    del pooled
    differ = row_weights - modes.unsqueeze(0)
    for j in range(contexts.shape[0]):
        rows = torch.nonzero(differ[:, j]).squeeze(1)
        if rows.numel():
            part = differ[rows, j].unsqueeze(1) * guide_proj[rows, int(index[j]), :]  # [r_j, t]
            out[rows] += part @ contexts[j]  # distinct rows
    return out.mul_(erase_scale)


def solve_rows(
    rhs_e: torch.Tensor,
    text: TextSide,
    mu: float,
    alpha: torch.Tensor | None,
    w0: torch.Tensor | None = None,
) -> torch.Tensor:
    """All rows of ``(G0 + mu I + mu R1 + alpha_i P) w_i = b_i`` at once (see module docstring).

    ``rhs_e`` holds the ``b_i`` as rows, already in the eigenbasis of ``G0`` (``b_i E``); ``alpha``
    (``[o]``) is ``s r_i``, or ``None`` for no subspace term (then ``W = B G^{-1}``, the small and uce
    variants with ``mu = 0``). Returns the rows ``w_i`` in the standard basis. With a basis of the text's
    span only (``text.partial``) the rows of ``w0`` off that span are kept as they are (where ``b`` is
    ``prox w0`` and ``prox = lambda + mu``), so ``w0`` must be given."""
    if text.direct:
        return _solve_rows_direct(rhs_e, text, mu, alpha)
    x = solve_rows_e(rhs_e, text, mu, alpha)
    if text.partial:
        if w0 is None:
            raise ValueError("solve_rows needs w0 when the text side spans part of the input space")
        return w0 + (x - w0 @ text.basis) @ text.basis.T
    return x @ text.basis.T


def solve_rows_e(rhs_e: torch.Tensor, text: TextSide, mu: float, alpha: torch.Tensor | None) -> torch.Tensor:
    """:func:`solve_rows` before its last step: the rows ``w_i`` in the coordinates of ``text.basis`` (``[o, r]``;
    not for the direct route)."""
    if text.direct:
        raise AssertionError("the direct route has no eigenbasis coordinates")
    dtype, device = rhs_e.dtype, rhs_e.device
    inv64 = 1.0 / (text.eigvals64 + mu)  # A0^{-1} in the eigenbasis of G0, float64
    correction64 = None
    if text.weak_gate is not None and mu > 0:
        # A = A0 + U diag(mu (1 - g)) U^T: Woodbury with F = U diag(sqrt(mu (1 - g))).
        f = text.span_e64 * torch.sqrt(mu * text.weak_gate).unsqueeze(0)  # [d, k]
        f_scaled = f * inv64.unsqueeze(1)  # D F
        inner = torch.eye(f.shape[1], dtype=f.dtype, device=f.device) + f.T @ f_scaled
        correction64 = (f, torch.linalg.solve(inner, f_scaled.T))  # (F, M^{-1} F^T D)

    def apply_inverse64(rows: torch.Tensor) -> torch.Tensor:
        """Rows ``z`` (eigenbasis coordinates, float64) to rows ``A^{-1} z``."""
        out = rows * inv64
        if correction64 is not None:
            out = out - (out @ correction64[0]) @ correction64[1]
        return out

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    x = rhs_e * cast(inv64)
    if correction64 is not None:
        x = x - (x @ cast(correction64[0])) @ cast(correction64[1])
    span = text.span_e64
    if alpha is not None and span.shape[1] > 0 and bool((alpha != 0).any()):
        up = span * torch.sqrt(text.proj_weights64).unsqueeze(0)  # [d, k], P = Up Up^T
        h = apply_inverse64(up.T)  # rows of (A^{-1} Up)^T, [k, d]
        small = h @ up
        kappa, vecs = torch.linalg.eigh(0.5 * (small + small.T))
        a = alpha.to(device=kappa.device, dtype=torch.float64).unsqueeze(1)
        coef = cast(a / (1.0 + a * kappa.unsqueeze(0)))  # [o, k]
        x = x - ((x @ cast(up @ vecs)) * coef) @ cast(vecs.T @ h)
    return x


def _solve_rows_direct(rhs: torch.Tensor, text: TextSide, mu: float, alpha: torch.Tensor | None) -> torch.Tensor:
    """:func:`solve_rows` on the direct route: ``A = G0 + mu I + mu R1`` factorized by Cholesky (float64),
    ``x = b A^{-1}``, then the same rank-``k`` Woodbury step per row for ``alpha_i P``, all in float64
    (``rhs`` is float64 in the standard basis)."""
    a = text.gram64.clone()
    a.diagonal().add_(mu)
    span = text.span_e64
    if text.weak_gate is not None and mu > 0:
        f = span * torch.sqrt(mu * text.weak_gate).unsqueeze(0)  # R1 term: F F^T, F = U diag(sqrt(mu (1 - g)))
        a += f @ f.T
    chol = torch.linalg.cholesky(a)
    del a
    x = torch.cholesky_solve(rhs.T, chol).T  # rows b_i A^{-1}
    if alpha is not None and span.shape[1] > 0 and bool((alpha != 0).any()):
        up = span * torch.sqrt(text.proj_weights64).unsqueeze(0)  # [d, k], P = Up Up^T
        h = torch.cholesky_solve(up, chol).T  # rows of (A^{-1} Up)^T, [k, d]
        small = h @ up
        kappa, vecs = torch.linalg.eigh(0.5 * (small + small.T))
        a_i = alpha.to(device=kappa.device, dtype=torch.float64).unsqueeze(1)
        coef = a_i / (1.0 + a_i * kappa.unsqueeze(0))  # [o, k]
        x = x - ((x @ (up @ vecs)) * coef) @ (vecs.T @ h)
    return x


def rhs_eig(w0: torch.Tensor, text: TextSide, data_e: torch.Tensor, prox: float, residual_scale: float) -> torch.Tensor:
    """``b E`` with ``b = prox W0 + V + W0 Q (- s (W0 P_w C)(P_w C)^T)`` (``Q`` the preserve Gram
    matrix; the residual only for the small variant's SVD step), every term formed in the eigenbasis
    (on the direct route, ``b`` itself in the dtype of ``w0``, float64 there)."""
    if text.direct:
        rhs = data_e + prox * w0
        if text.preserve_rows64 is not None:
            rhs = rhs + (w0 @ text.preserve_rows64.T) @ text.preserve_rows64
    else:
        rhs = data_e + prox * (w0 @ text.basis)
    if text.preserve_gram_e is not None:
        rhs = rhs + w0 @ text.preserve_gram_e
    if text.residual_e is not None and residual_scale:
        rhs = rhs - residual_scale * (w0 @ text.residual_ctx) @ text.residual_e
    return rhs
