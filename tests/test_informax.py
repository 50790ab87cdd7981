"""Informax row weights and the entropy factor against hand-computed small cases."""

from __future__ import annotations

import math

import naive
import pytest
import torch
from comfyui_scapre.scapre_core import ScaPreConfig
from comfyui_scapre.scapre_core.informax import (
    _mi_table_f64,
    entropy_factor,
    expected_mutual_information,
    matrix_generator,
    row_stats,
    sampled_mutual_information,
    soft_mask,
)
from helpers import random_concepts, random_weights

LN2 = math.log(2.0)


def test_mi_table_matches_the_contingency_formula():
    k = 5
    table = _mi_table_f64(k)
    labels = [1] * k + [0] * k
    for a in range(k + 1):
        for b in range(k + 1):
            z = [1] * a + [0] * (k - a) + [1] * b + [0] * (k - b)
            assert table[a, b].item() == pytest.approx(naive.mutual_information(z, labels), abs=1e-12)
    # perfect separation carries ln 2 nats; an uninformative split carries none
    assert table[k, 0].item() == pytest.approx(LN2, abs=1e-6)
    assert table[3, 3].item() == pytest.approx(0.0, abs=1e-6)


def test_mi_table_is_exactly_symmetric_under_relabelling():
    table = _mi_table_f64(5)
    for a in range(6):
        for b in range(6):
            assert table[a, b] == table[5 - a, 5 - b] == table[b, a]


def test_sampled_mi_at_zero_noise_separates_every_row():
    """sigma = 0: positives all give w.c, negatives all w.e; any row with w.c != w.e separates."""
    w0 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    c = torch.tensor([[2.0, 0.0]])
    e = torch.tensor([0.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    mi = sampled_mutual_information(w0, c, e, 5, 0.0, gen)[:, 0]
    perfect = _mi_table_f64(5)[5, 0].item()
    # rows 0 and 1 separate (in opposite orientations, same MI bits); rows 2 and 3 see no difference
    assert mi[0].item() == mi[1].item() == pytest.approx(perfect)
    assert mi[2].item() == mi[3].item() == pytest.approx(_mi_table_f64(5)[0, 0].item())


def test_soft_mask_ties_give_sigmoid_zero():
    mi = torch.full((7, 3), LN2) + torch.tensor([0.0, 1e-9, 0.0, 0.0, 0.0, 0.0, 0.0]).unsqueeze(1)
    mask = soft_mask(mi, temperature=0.7, power=3.0)
    assert torch.allclose(mask, torch.full_like(mask, 0.5**3))


def test_soft_mask_standardises_over_rows():
    mi = torch.tensor([[0.0], [0.1], [0.2], [0.7]])
    mask = soft_mask(mi, temperature=0.7, power=2.0)
    z = (mi - mi.mean()) / (mi.std() + 1e-8)
    assert torch.allclose(mask, torch.sigmoid(z / 0.7) ** 2)
    assert mask[3] > mask[0]


def test_expected_mi_matches_formula_and_limits():
    w0 = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    c = torch.tensor([[0.3, 0.1]], dtype=torch.float64)
    e = torch.tensor([0.1, 0.1], dtype=torch.float64)
    sigma = 0.1
    mi = expected_mutual_information(w0, c, e, sigma)[:, 0]
    for i in range(3):
        gap = abs(float(w0[i] @ c[0]) - float(w0[i] @ e))
        s = sigma * float(w0[i].norm())
        q = 0.5 * (1 + math.erf(gap / (2 * s) / math.sqrt(2)))
        hb = -(q * math.log(q) + (1 - q) * math.log(1 - q)) if 0 < q < 1 else 0.0
        assert mi[i].item() == pytest.approx(LN2 - hb, abs=1e-12)
    assert mi[2].item() == pytest.approx(0.0, abs=1e-12)  # w.c == w.e: no information
    noiseless = expected_mutual_information(w0, c, e, 0.0)[:, 0]
    assert noiseless.tolist() == pytest.approx([LN2, LN2, 0.0])


def test_expected_mi_agrees_with_many_samples():
    """The population value is the MI of the midpoint-threshold channel, estimated here by Monte Carlo."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 8, generator=g, dtype=torch.float64)
    c = torch.randn(1, 8, generator=g, dtype=torch.float64) * 0.05
    e = torch.zeros(8, dtype=torch.float64)
    sigma = 0.05
    expected = expected_mutual_information(w0, c, e, sigma)[:, 0]
    n = 200_000
    a, b = w0 @ c[0], w0 @ e
    pos = a + sigma * torch.randn(n, 8, generator=g, dtype=torch.float64) @ w0.T  # [n, rows]
    neg = b + sigma * torch.randn(n, 8, generator=g, dtype=torch.float64) @ w0.T
    mid = (a + b) / 2
    for i in range(6):
        upper = bool(a[i] > b[i])
        z = [(v > mid[i]) == upper for v in (pos[:, i], neg[:, i])]  # "labelled positive"
        n11, n10 = float(z[0].sum()), float(z[1].sum())
        counts = torch.tensor([[n11, n10], [n - n11, n - n10]], dtype=torch.float64) / (2 * n)
        pz, pl = counts.sum(1, keepdim=True), counts.sum(0, keepdim=True)
        mask = counts > 0
        mc = float((counts[mask] * (counts[mask] / (pz * pl)[mask]).log()).sum())
        assert expected[i].item() == pytest.approx(mc, abs=5e-3)


def test_entropy_factor_matches_histc_per_row():
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(9, 6, generator=g)
    c = torch.randn(4, 6, generator=g)
    gen_a = torch.Generator().manual_seed(5)
    ours = entropy_factor(w0, c, num_samples=7, bins=5, sigma=0.3, generator=gen_a)
    # redraw the same noise and recompute row by row with torch.histc
    gen_b = torch.Generator().manual_seed(5)
    samples = c.unsqueeze(1).expand(4, 7, 6).clone()
    samples += 0.3 * torch.randn(samples.shape, generator=gen_b)
    acts = w0 @ samples.reshape(-1, 6).T
    for i in range(9):
        assert ours[i].item() == pytest.approx(naive.histogram_entropy_factor(acts[i], 5), abs=1e-6)


def test_entropy_factor_hand_case():
    """Two bins, four activations 0, 0, 0, 1 per row: H = -(3/4 ln 3/4 + 1/4 ln 1/4)."""
    w0 = torch.tensor([[1.0]])
    c = torch.tensor([[0.0], [0.0], [0.0], [1.0]])
    e = entropy_factor(w0, c, num_samples=1, bins=2, sigma=0.0, generator=torch.Generator())
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert e.item() == pytest.approx(1 - h / math.log(2), abs=1e-6)
    # a constant row is perfectly specialised
    flat = entropy_factor(torch.zeros(1, 1), c, num_samples=3, bins=4, sigma=0.0, generator=torch.Generator())
    assert flat.item() == pytest.approx(1.0, abs=1e-6)


def test_generators_are_seeded_by_seed_name_and_purpose():
    dev = torch.device("cpu")
    draw = lambda *key: torch.randn(4, generator=matrix_generator(*key, dev))  # noqa: E731
    assert torch.equal(draw(0, "a", "informax"), draw(0, "a", "informax"))
    assert not torch.equal(draw(0, "a", "informax"), draw(1, "a", "informax"))
    assert not torch.equal(draw(0, "a", "informax"), draw(0, "b", "informax"))
    assert not torch.equal(draw(0, "a", "informax"), draw(0, "a", "entropy"))


def test_row_stats_without_informax_gives_no_weights():
    concepts, _ = random_concepts(3, dim=8)
    w0 = random_weights({"w": (5, 8)})["w"]
    stats = row_stats("w", w0, concepts.concept_vecs, concepts.empty_vec, ScaPreConfig(use_informax=False),
                      with_weights=True, with_entropy=True)
    assert stats.row_weights is None and stats.entropy.shape == (5,)
    assert torch.equal(stats.weights_or_ones(5, 3, w0), torch.ones(5, 3))


@pytest.mark.parametrize("estimator", ["sampled", "expected"])
def test_row_weights_are_in_unit_interval_and_favor_informative_rows(estimator):
    """A row aligned with c - e must outweigh a row orthogonal to it."""
    d = 16
    c = torch.zeros(1, d)
    c[0, 0] = 1.0
    e = torch.zeros(d)
    w0 = torch.randn(20, d, generator=torch.Generator().manual_seed(3)) * 0.01
    w0[0, 0] = 5.0  # reads the concept direction strongly
    w0[1, 0] = 0.0
    cfg = ScaPreConfig(mi_estimator=estimator, noise_sigma=0.05, p=2.0)
    stats = row_stats("w", w0, c, e, cfg, with_weights=True, with_entropy=False)
    m = stats.row_weights[:, 0]
    assert ((m >= 0) & (m <= 1)).all()
    assert m[0] > m[1]


def test_entropy_binning_matches_histc_at_bin_edges():
    """Values exactly on a bin edge (x = k / bins) land where torch.histc puts them."""
    bins = 20
    w0 = torch.eye(1)
    # 0.45 * 20 sits on an edge that a search over linspace edges puts in bin 8, next to 0.42
    values = torch.tensor([[0.0], [0.42], [0.45], [1.0]])
    e = entropy_factor(w0, values, num_samples=1, bins=bins, sigma=0.0, generator=torch.Generator())
    assert e.item() == pytest.approx(naive.histogram_entropy_factor(values[:, 0], bins), abs=1e-6)
