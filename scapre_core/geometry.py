"""Row geometry after the solve: the Bures proximal step and EGBR (SPEC "Geometry alignment").

Both act on all rows at once; rows are written in polar form ``w = r u``. Each result is a
combination ``c0_i w0_i + c1_i delta_i`` of the original row and its change, with scalar
coefficients that depend only on the three row products ``|w0|^2``, ``w0 . delta`` and ``|delta|^2``.
These are formed in float64, so the functions return the change to the row accurately relative to
the change itself (a float32 ``r u - w0`` would carry the rounding of the whole weight).
"""

from __future__ import annotations

import torch

EPS = 1e-8


def linalg_device(device: torch.device) -> torch.device:
    """Where float64 work runs: the compute device, except backends without float64 (MPS)."""
    return torch.device("cpu") if device.type == "mps" else device


def to_float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 on :func:`linalg_device` of its device."""
    return t.to(device=linalg_device(t.device), dtype=torch.float64)


def _row_products(w0: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(|w0|^2, w0 . delta, |delta|^2)`` per row, ``[o, 1]`` each, in float64."""
    a, b = to_float64(w0), to_float64(delta)
    return (a * a).sum(1, keepdim=True), (a * b).sum(1, keepdim=True), (b * b).sum(1, keepdim=True)


def _combine(w0: torch.Tensor, delta: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
    """``c0 w0 + c1 delta`` in the rows' own dtype (``c0``, ``c1``: float64 ``[o, 1]``)."""
    return c0.to(device=w0.device, dtype=w0.dtype) * w0 + c1.to(device=w0.device, dtype=w0.dtype) * delta


def bures_change(w0: torch.Tensor, delta: torch.Tensor, mu: float, lam_prox: float, iters: int) -> torch.Tensor:
    """The change after ``iters`` rounds of the Bures proximal step from the solved rows
    ``a = w0 + delta``::

        kappa = max(0, <u, u0>);  r = (lam' ||a|| + mu r0 kappa) / (lam' + mu)
        u = normalize(lam' ||a|| u_a + mu r0 kappa u0)

    with ``lam' = lam_prox = lambda + mu``. Since ``||a|| u_a = a`` and ``r0 u0 = w0``, every round's
    direction is ``D = (lam' + mu kappa) w0 + lam' delta``; only ``kappa`` changes between rounds.
    Zero rounds return ``delta`` unchanged.
    """
    if iters <= 0:
        return delta
    return _combine(w0, delta, *bures_coefficients(*_row_products(w0, delta), mu, lam_prox, iters))


def bures_coefficients(n00: torch.Tensor, n0d: torch.Tensor, ndd: torch.Tensor, mu: float, lam_prox: float,
                       iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_w0, c_delta)``, float64 ``[o, 1]``: :func:`bures_change` is ``c_w0 w0 + c_delta delta``, from the row
    products ``|w0|^2``, ``w0 . delta``, ``|delta|^2`` (``iters >= 1``)."""
    r0 = n00.sqrt().clamp_min(EPS)
    a_norm = (n00 + 2.0 * n0d + ndd).clamp_min(0.0).sqrt().clamp_min(EPS)
    kappa = ((n00 + n0d) / (a_norm * r0)).clamp_min(0.0)  # <u_a, u0>
    for _ in range(iters):
        r = (lam_prox * a_norm + mu * r0 * kappa) / (lam_prox + mu)
        c0, c1 = lam_prox + mu * kappa, torch.full_like(kappa, lam_prox)
        d_norm = (c0 * c0 * n00 + 2.0 * c0 * c1 * n0d + c1 * c1 * ndd).clamp_min(0.0).sqrt().clamp_min(EPS)
        kappa = ((c0 * n00 + c1 * n0d) / (d_norm * r0)).clamp_min(0.0)  # <u, u0> for the next round
    return r * c0 / d_norm - 1.0, r * c1 / d_norm


def bures_step(w0: torch.Tensor, solved: torch.Tensor, mu: float, lam_prox: float, iters: int) -> torch.Tensor:
    """The rows after the Bures proximal step (:func:`bures_change` added to ``w0``)."""
    if iters <= 0:
        return solved
    return w0 + bures_change(w0, solved - w0, mu, lam_prox, iters)


def egbr_change(w0: torch.Tensor, delta: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """The change after the entropy-guided blend of rows (SPEC "EGBR") of ``w0 + delta``:
    ``alpha_i = 1 - exp(-h_i / max h)``; directions blend by ``beta_i = alpha_i max(0, cos(w0_i, w_i))``,
    squared norms blend geometrically by ``alpha_i``. ``spread`` is ``h`` (``[o]``).
    """
    return _combine(w0, delta, *egbr_coefficients(*_row_products(w0, delta), spread))


def egbr_coefficients(n00: torch.Tensor, n0d: torch.Tensor, ndd: torch.Tensor, spread: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_w0, c_delta)``, float64 ``[o, 1]``: :func:`egbr_change` is ``c_w0 w0 + c_delta delta``, from the row
    products (as :func:`bures_coefficients`)."""
    h = to_float64(spread.reshape(-1, 1)).to(n00.device)
    alpha = 1.0 - torch.exp(-h / h.max().clamp_min(1e-6))
    r0 = n00.sqrt().clamp_min(EPS)
    r1 = (n00 + 2.0 * n0d + ndd).clamp_min(0.0).sqrt().clamp_min(EPS)
    beta = alpha * ((n00 + n0d) / (r0 * r1)).clamp_min(0.0)
    # direction = (1 - beta) u0 + beta u1 = c0 w0 + c1 delta
    c0, c1 = (1.0 - beta) / r0 + beta / r1, beta / r1
    d_norm = (c0 * c0 * n00 + 2.0 * c0 * c1 * n0d + c1 * c1 * ndd).clamp_min(0.0).sqrt().clamp_min(EPS)
    norm = torch.exp(0.5 * ((1.0 - alpha) * torch.log(r0 * r0) + alpha * torch.log(r1 * r1)))
    return norm * c0 / d_norm - 1.0, norm * c1 / d_norm


def egbr(w0: torch.Tensor, edited: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """The blended rows (:func:`egbr_change` added to ``w0``)."""
    return w0 + egbr_change(w0, edited - w0, spread)


def spectral_gate(singular_values: torch.Tensor, t_sigma: float, p_sigma: float) -> torch.Tensor:
    """``g_k = sigmoid((s_k - median(s)) / T_sigma)^p_sigma`` over the concept matrix's spectrum
    (lower median, as ``torch.median``); used by ASED and the small variant's SVD residual."""
    if singular_values.numel() == 0:
        return singular_values
    median = singular_values.median()
    return torch.sigmoid((singular_values - median) / (t_sigma + EPS)).pow(p_sigma)
