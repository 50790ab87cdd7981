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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .concepts import ConceptSet
from .config import ScaPreConfig
from .geometry import linalg_device, spectral_gate

#: Added to ``C^T C`` in the concept-span projector ``P`` (SPEC "Inputs").
PROJ_EPS = 1e-8


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
    fields ending in ``64`` stay in float64 for the small rank-``k`` work."""

    concept_vecs: torch.Tensor  # [m, d]
    empty_vec: torch.Tensor  # [d]
    contexts: torch.Tensor | None  # [m, t, d], X_j zero-padded (only for technique="tensor")
    contexts_e: torch.Tensor  # [m, t, d], X_j E: the contexts in the eigenbasis of G0
    guides: torch.Tensor  # [u, t, d], the distinct guide sequences, zero-padded; Y_j is a prefix
    guide_index: torch.Tensor  # [m], which guide each erase prompt maps to
    preserve_gram_e: torch.Tensor | None  # [d, d], (q sum_k Z_k^T Z_k) E
    basis: torch.Tensor  # [d, d], E
    eigvals64: torch.Tensor  # [d], float64 on the linear-algebra device
    span_e64: torch.Tensor  # [d, k], float64 on the linear-algebra device
    proj_weights64: torch.Tensor  # [k], float64 on the linear-algebra device
    weak_gate: torch.Tensor | None  # [k], float64 on the linear-algebra device
    residual_ctx: torch.Tensor | None  # [d, m]
    residual_e: torch.Tensor | None  # [m, d], (P_w C)^T E


def prepare_text_side(
    concepts: ConceptSet, config: ScaPreConfig, device: torch.device, dtype: torch.dtype
) -> TextSide:
    """Build the layer-independent statistics once per edit; factorizations run in float64."""
    f64, lin = torch.float64, linalg_device(device)
    dim = concepts.dim
    c = concepts.concept_vecs.to(device=lin, dtype=f64).T  # [d, m]
    eye = torch.eye(dim, dtype=f64, device=lin)
    g0 = config.lam * eye + config.solve_scale * gram(concepts.contexts, f64, lin, dim)
    preserve_gram = None
    if concepts.num_preserve:
        preserve_gram = config.preserve_scale * gram(concepts.preserve_contexts, f64, lin, dim)
        g0 += preserve_gram
    if config.variant != "uce":
        g0 += c @ c.T
    eigvals, basis = torch.linalg.eigh(0.5 * (g0 + g0.T))

    u, sv, _ = torch.linalg.svd(c, full_matrices=False)  # u: [d, k]
    proj_weights = sv * sv / (sv * sv + PROJ_EPS)
    gate = spectral_gate(sv, config.t_sigma, config.p_sigma)
    weak_gate = (1.0 - gate) if (config.variant == "scale" and config.ased) else None
    residual_ctx = None
    if config.variant == "small" and config.svd_residual:
        residual_ctx = c - u @ (gate.unsqueeze(1) * (u.T @ c))  # (I - U diag(g) U^T) C

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype)

    return TextSide(
        concept_vecs=cast(concepts.concept_vecs),
        empty_vec=cast(concepts.empty_vec),
        contexts=pad_sequences(concepts.contexts, dtype, device) if config.technique == "tensor" else None,
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
    )


def rotate_sequences(
    seqs: tuple[torch.Tensor, ...], basis: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``[n, t_max, d]``: each ``X_j E`` (float64 product, then cast), zero-padded like :func:`pad_sequences`."""
    if not seqs:
        return torch.zeros(0, 0, 0, dtype=dtype, device=device)
    t_max = max(s.shape[0] for s in seqs)
    out = torch.zeros(len(seqs), t_max, seqs[0].shape[1], dtype=dtype, device=device)
    for j, s in enumerate(seqs):
        out[j, : s.shape[0]] = (s.to(device=basis.device, dtype=basis.dtype) @ basis).to(device=device, dtype=dtype)
    return out


#: Erase prompts per block of the data term: bounds its working memory (``o x block x t`` floats);
#: fixed, so results never depend on the machine.
CONCEPT_BLOCK = 128


def data_term(
    w0: torch.Tensor, text: TextSide, row_weights: torch.Tensor, erase_scale: float, technique: str
) -> torch.Tensor:
    """``V E`` with ``V = s sum_j m_j (.) (T_j X_j)`` and targets ``T_j = W0 Y_j^T`` (``[o, d]``): the
    data term in the eigenbasis ``E`` of ``G0``, from the rotated contexts ``X_j E`` (module docstring).

    ``technique="tensor"`` first removes from ``T_j`` its component along the normalised source
    projection ``W0 X_j^T`` (Frobenius inner product, per concept).

    Each distinct guide is projected once; ``Y_j`` is a prefix of its guide, and the columns of
    ``T_j`` past ``t_j`` meet the zero padding of ``X_j``, so they add nothing."""
    o, (m, t, d) = w0.shape[0], text.contexts_e.shape
    u, t_guide = text.guides.shape[:2]
    if t_guide < t:
        raise AssertionError("guide sequences are never shorter than the contexts they align with")
    guide_proj = (w0 @ text.guides[:, :t].reshape(u * t, d).T).reshape(o, u, t)
    out = torch.zeros_like(w0)
    for start in range(0, m, CONCEPT_BLOCK):
        block = slice(start, min(start + CONCEPT_BLOCK, m))
        n = block.stop - block.start
        target = guide_proj[:, text.guide_index[block], :]
        if technique == "tensor":
            source = (w0 @ text.contexts[block].reshape(n * t, d).T).reshape(o, n, t)
            norm2 = (source * source).sum(dim=(0, 2))
            inner = (source * target).sum(dim=(0, 2))
            coef = torch.where(norm2 > 0, inner / norm2.clamp_min(torch.finfo(w0.dtype).tiny), 0.0)
            target = target - coef.view(1, n, 1) * source
        target = target * (erase_scale * row_weights[:, block]).unsqueeze(2)
        out.addmm_(target.reshape(o, n * t), text.contexts_e[block].reshape(n * t, d))
    return out


def solve_rows(
    rhs_e: torch.Tensor,
    text: TextSide,
    mu: float,
    alpha: torch.Tensor | None,
) -> torch.Tensor:
    """All rows of ``(G0 + mu I + mu R1 + alpha_i P) w_i = b_i`` at once (see module docstring).

    ``rhs_e`` holds the ``b_i`` as rows, already in the eigenbasis of ``G0`` (``b_i E``); ``alpha``
    (``[o]``) is ``s r_i``, or ``None`` for no subspace term (then ``W = B G^{-1}``, the small and uce
    variants with ``mu = 0``). Returns the rows ``w_i`` in the standard basis."""
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
    return x @ text.basis.T


def rhs_eig(w0: torch.Tensor, text: TextSide, data_e: torch.Tensor, prox: float, residual_scale: float) -> torch.Tensor:
    """``b E`` with ``b = prox W0 + V + W0 Q (- s (W0 P_w C)(P_w C)^T)`` (``Q`` the preserve Gram
    matrix; the residual only for the small variant's SVD step), every term formed in the eigenbasis."""
    rhs = data_e + prox * (w0 @ text.basis)
    if text.preserve_gram_e is not None:
        rhs = rhs + w0 @ text.preserve_gram_e
    if text.residual_e is not None and residual_scale:
        rhs = rhs - residual_scale * (w0 @ text.residual_ctx) @ text.residual_e
    return rhs
