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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .concepts import ConceptSet
from .config import ScaPreConfig
from .geometry import spectral_gate

#: Added to ``C^T C`` in the concept-span projector ``P`` (SPEC "Inputs").
PROJ_EPS = 1e-8


def linalg_device(device: torch.device) -> torch.device:
    """Where float64 factorizations run: the compute device, except backends without float64."""
    return torch.device("cpu") if device.type == "mps" else device


def _linalg(fn, *tensors: torch.Tensor):
    """Run a small dense factorization where the backend supports it, returning to the input device."""
    device = tensors[0].device
    lin = linalg_device(device)
    out = fn(*(t.to(lin) for t in tensors))
    return tuple(o.to(device) for o in out) if isinstance(out, tuple) else out.to(device)


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

    ``basis``/``eigvals``: ``G0 = basis diag(eigvals) basis^T``; ``span_e = basis^T U``;
    ``proj_weights`` is ``pi``; ``weak_gate`` is ``1 - g`` (ASED; ``None`` when off);
    ``residual_ctx`` is ``P_w C`` for the small variant's SVD residual (``None`` when off)."""

    concept_vecs: torch.Tensor  # [m, d]
    empty_vec: torch.Tensor  # [d]
    contexts: torch.Tensor  # [m, t, d], X_j zero-padded
    guides: torch.Tensor  # [u, t, d], the distinct guide sequences, zero-padded; Y_j is a prefix
    guide_index: torch.Tensor  # [m], which guide each erase prompt maps to
    preserve_gram: torch.Tensor | None  # [d, d], q sum_k Z_k^T Z_k
    basis: torch.Tensor  # [d, d]
    eigvals: torch.Tensor  # [d]
    span_e: torch.Tensor  # [d, k]
    proj_weights: torch.Tensor  # [k]
    weak_gate: torch.Tensor | None  # [k]
    residual_ctx: torch.Tensor | None  # [d, m]


def prepare_text_side(
    concepts: ConceptSet, config: ScaPreConfig, device: torch.device, dtype: torch.dtype
) -> TextSide:
    """Build the layer-independent statistics once per edit; factorizations run in float64."""
    f64, lin = torch.float64, linalg_device(device)
    dim = concepts.dim
    c = concepts.concept_vecs.to(device=lin, dtype=f64).T  # [d, m]
    eye = torch.eye(dim, dtype=f64, device=lin)
    g0 = config.lam * eye + config.erase_scale * gram(concepts.contexts, f64, lin, dim)
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
        contexts=pad_sequences(concepts.contexts, dtype, device),
        guides=pad_sequences(concepts.guides, dtype, device),
        guide_index=torch.tensor(concepts.guide_index, dtype=torch.long, device=device),
        preserve_gram=cast(preserve_gram),
        basis=cast(basis),
        eigvals=cast(eigvals),
        span_e=cast(basis.T @ u),
        proj_weights=cast(proj_weights),
        weak_gate=cast(weak_gate),
        residual_ctx=cast(residual_ctx),
    )


#: Erase prompts per block of the data term: bounds its working memory (``o x block x t`` floats);
#: fixed, so results never depend on the machine.
CONCEPT_BLOCK = 128


def data_term(
    w0: torch.Tensor, text: TextSide, row_weights: torch.Tensor, erase_scale: float, technique: str
) -> torch.Tensor:
    """``V = s sum_j m_j (.) (T_j X_j)`` with targets ``T_j = W0 Y_j^T`` (``[o, d]``).

    ``technique="tensor"`` first removes from ``T_j`` its component along the normalised source
    projection ``W0 X_j^T`` (Frobenius inner product, per concept).

    Each distinct guide is projected once; ``Y_j`` is a prefix of its guide, and the columns of
    ``T_j`` past ``t_j`` meet the zero padding of ``X_j``, so they add nothing."""
    o, (m, t, d) = w0.shape[0], text.contexts.shape
    u, t_guide = text.guides.shape[:2]
    if t_guide < t:
        raise AssertionError("guide sequences are never shorter than the contexts they align with")
    guide_proj = (w0 @ text.guides[:, :t].reshape(u * t, d).T).reshape(o, u, t)
    out = torch.zeros_like(w0)
    for start in range(0, m, CONCEPT_BLOCK):
        block = slice(start, min(start + CONCEPT_BLOCK, m))
        n = block.stop - block.start
        x = text.contexts[block].reshape(n * t, d)
        target = guide_proj[:, text.guide_index[block], :]
        if technique == "tensor":
            source = (w0 @ x.T).reshape(o, n, t)
            norm2 = (source * source).sum(dim=(0, 2))
            inner = (source * target).sum(dim=(0, 2))
            coef = torch.where(norm2 > 0, inner / norm2.clamp_min(torch.finfo(w0.dtype).tiny), 0.0)
            target = target - coef.view(1, n, 1) * source
        target = target * (erase_scale * row_weights[:, block]).unsqueeze(2)
        out.addmm_(target.reshape(o, n * t), x)
    return out


def solve_rows(
    rhs: torch.Tensor,
    text: TextSide,
    mu: float,
    alpha: torch.Tensor | None,
) -> torch.Tensor:
    """All rows of ``(G0 + mu I + mu R1 + alpha_i P) w_i = b_i`` at once (see module docstring).

    ``rhs`` holds the ``b_i`` as rows; ``alpha`` (``[o]``) is ``s r_i``, or ``None`` for no
    subspace term (then ``W = B G^{-1}``, the small and uce variants with ``mu = 0``)."""
    basis, span = text.basis, text.span_e
    inv_diag = 1.0 / (text.eigvals + mu)  # A0^{-1} in the eigenbasis of G0
    correction = None
    if text.weak_gate is not None and mu > 0:
        # A = A0 + U diag(mu (1 - g)) U^T: Woodbury with F = U diag(sqrt(mu (1 - g))).
        f = span * torch.sqrt(mu * text.weak_gate).unsqueeze(0)  # [d, k]
        f_scaled = f * inv_diag.unsqueeze(1)  # D F
        inner = torch.eye(f.shape[1], dtype=f.dtype, device=f.device) + f.T @ f_scaled
        correction = (f, _linalg(torch.linalg.solve, inner, f_scaled.T))  # (F, M^{-1} F^T D)

    def apply_inverse(rows: torch.Tensor) -> torch.Tensor:
        """Rows ``z`` (eigenbasis coordinates) to rows ``A^{-1} z`` (``A`` symmetric)."""
        out = rows * inv_diag
        if correction is not None:
            out = out - (out @ correction[0]) @ correction[1]
        return out

    x = apply_inverse(rhs @ basis)
    if alpha is not None and span.shape[1] > 0 and bool((alpha != 0).any()):
        up = span * torch.sqrt(text.proj_weights).unsqueeze(0)  # [d, k], P = Up Up^T
        h = apply_inverse(up.T)  # rows of (A^{-1} Up)^T, [k, d]
        small = h @ up
        kappa, vecs = _linalg(lambda a: tuple(torch.linalg.eigh(a)), 0.5 * (small + small.T))
        coef = alpha.unsqueeze(1) / (1.0 + alpha.unsqueeze(1) * kappa.unsqueeze(0))  # [o, k]
        x = x - ((x @ (up @ vecs)) * coef) @ (vecs.T @ h)
    return x @ basis.T
