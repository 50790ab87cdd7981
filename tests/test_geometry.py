"""Bures proximal step, EGBR and the spectral gate on hand-computed cases."""

from __future__ import annotations

import math

import naive
import pytest
import torch
from comfyui_scapre.scapre_core.geometry import bures_step, egbr, spectral_gate


def test_bures_one_round_by_hand():
    # w0 = (2, 0); solved a = (0, 1): orthogonal, kappa = 0 -> r = lam'|a|/(lam'+mu), u = u_a
    w0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    out = bures_step(w0, a, mu=0.5, lam_prox=1.0, iters=1)
    assert out[0].tolist() == pytest.approx([0.0, 1.0 / 1.5])
    # a = (1, 1): kappa = 1/sqrt2, r = (1*sqrt2 + 0.5*2*kappa)/1.5, u ~ sqrt2*(1,1)/sqrt2 + 0.5*2*kappa*(1,0)
    a = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    kappa = 1 / math.sqrt(2)
    r = (math.sqrt(2) + 0.5 * 2 * kappa) / 1.5
    d = [1.0 + kappa, 1.0]
    n = math.hypot(*d)
    out = bures_step(w0, a, mu=0.5, lam_prox=1.0, iters=1)
    assert out[0].tolist() == pytest.approx([r * d[0] / n, r * d[1] / n])


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_bures_matches_per_row_loop(iters):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(12, 7, generator=g, dtype=torch.float64)
    a = w0 + 0.8 * torch.randn(12, 7, generator=g, dtype=torch.float64)
    a[3] = -w0[3]  # opposite direction: kappa clamps to 0
    ours = bures_step(w0, a, mu=0.3, lam_prox=0.8, iters=iters)
    assert torch.allclose(ours, naive.bures(w0, a, 0.3, 0.8, iters), atol=1e-12)


def test_bures_zero_rounds_and_zero_mu_are_identity():
    g = torch.Generator().manual_seed(1)
    w0, a = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert torch.equal(bures_step(w0, a, mu=0.3, lam_prox=0.8, iters=0), a)
    assert torch.allclose(bures_step(w0, a, mu=0.0, lam_prox=0.8, iters=2), a, atol=1e-6)


def test_egbr_by_hand_and_against_loop():
    w0 = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    h = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = egbr(w0, w, h)
    # row 0: alpha = 0 -> the original row; row 1: alpha = 1 - e^-1, same direction, norm 3^(1-a) * 1^a
    alpha = 1 - math.exp(-1)
    assert out[0].tolist() == pytest.approx([1.0, 0.0])
    assert out[1].tolist() == pytest.approx([0.0, 3 ** (1 - alpha)])
    g = torch.Generator().manual_seed(2)
    w0, w = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64)
    h = torch.rand(9, generator=g, dtype=torch.float64)
    assert torch.allclose(egbr(w0, w, h), naive.egbr(w0, w, h), atol=1e-12)


def test_spectral_gate_uses_lower_median():
    s = torch.tensor([4.0, 1.0, 3.0, 2.0])  # lower median 2
    gate = spectral_gate(s, t_sigma=1.0, p_sigma=2.0)
    assert gate.tolist() == pytest.approx((torch.sigmoid((s - 2.0) / (1.0 + 1e-8)) ** 2).tolist())
    assert gate[3].item() == pytest.approx(0.25)
