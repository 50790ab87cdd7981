"""Row geometry after the solve: the Bures proximal step and EGBR (SPEC "Geometry alignment").

Both act on all rows at once; rows are written in polar form ``w = r u``.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def _polar(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(EPS)
    return norm, w / norm


def bures_step(w0: torch.Tensor, solved: torch.Tensor, mu: float, lam_prox: float, iters: int) -> torch.Tensor:
    """``iters`` rounds of the Bures proximal step from the solved rows ``a = solved[i]``::

        kappa = max(0, <u, u0>);  r = (lam' ||a|| + mu r0 kappa) / (lam' + mu)
        u = normalize(lam' ||a|| u_a + mu r0 kappa u0)

    with ``lam' = lam_prox = lambda + mu``. Zero rounds return ``solved`` unchanged.
    """
    if iters <= 0:
        return solved
    a_norm, u_a = _polar(solved)
    r0, u0 = _polar(w0)
    u, r = u_a, a_norm
    for _ in range(iters):
        kappa = (u * u0).sum(dim=1, keepdim=True).clamp_min(0.0)
        r = (lam_prox * a_norm + mu * r0 * kappa) / (lam_prox + mu)
        direction = lam_prox * a_norm * u_a + mu * r0 * kappa * u0
        u = direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True).clamp_min(EPS)
    return r * u


def egbr(w0: torch.Tensor, edited: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Entropy-guided blend of rows (SPEC "EGBR"): ``alpha_i = 1 - exp(-h_i / max h)``.

    Directions blend by ``beta_i = alpha_i max(0, cos(w0_i, w_i))``; squared norms blend
    geometrically by ``alpha_i``. ``spread`` is ``h`` (``[o]``).
    """
    h = spread.reshape(-1, 1).to(w0.dtype)
    alpha = 1.0 - torch.exp(-h / h.max().clamp_min(1e-6))
    r0, u0 = _polar(w0)
    r1, u1 = _polar(edited)
    beta = alpha * (u0 * u1).sum(dim=1, keepdim=True).clamp_min(0.0)
    direction = (1.0 - beta) * u0 + beta * u1
    direction = direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True).clamp_min(EPS)
    energy = torch.exp((1.0 - alpha) * torch.log(r0 * r0) + alpha * torch.log(r1 * r1))
    return torch.sqrt(energy) * direction


def spectral_gate(singular_values: torch.Tensor, t_sigma: float, p_sigma: float) -> torch.Tensor:
    """``g_k = sigmoid((s_k - median(s)) / T_sigma)^p_sigma`` over the concept matrix's spectrum
    (lower median, as ``torch.median``); used by ASED and the small variant's SVD residual."""
    if singular_values.numel() == 0:
        return singular_values
    median = singular_values.median()
    return torch.sigmoid((singular_values - median) / (t_sigma + EPS)).pow(p_sigma)
