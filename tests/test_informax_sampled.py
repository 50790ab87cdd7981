"""The default path (sampled Informax) against the plain restatement in ``naive``, fed the same noise.

The library and ``naive`` draw the noise from generators seeded the same way (``naive.seeded_generator``
restates the seeding), so at ``noise_sigma > 0`` the MI weights, the entropy factors, ``mu`` and the
whole edit can be compared number for number. The concepts sit close to the empty prompt, so that
rows separate them only partly and the MI differs from row to row (no ties).
"""

from __future__ import annotations

import naive
import pytest
import torch
from comfyui_scapre.scapre_core import ConceptSet, ScaPreConfig, erase, informax_weights
from helpers import random_weights

F64 = torch.float64
DIM = 16
SHAPES = {"down.to_k": (24, DIM), "mid.to_v": (40, DIM)}
#: T, p, K and N all differ, so a swapped or misrouted setting changes the numbers.
BASE = dict(noise_sigma=0.05, mi_temperature=0.7, p=3.0, mi_samples=5, entropy_samples=7, entropy_bins=6,
            seed=11)


def near_empty_concepts(m: int, dtype=F64, spread: float = 0.06, seed: int = 0):
    """Encodings whose concept vectors are ``e + delta`` with ``||delta||`` comparable to the noise."""
    g = torch.Generator().manual_seed(seed)
    length = 9
    empty = torch.randn(length, DIM, generator=g, dtype=F64)
    erase_seqs, lasts = [], []
    for _ in range(m):
        seq = torch.randn(length, DIM, generator=g, dtype=F64)
        last = int(torch.randint(1, 5, (1,), generator=g))
        seq[last] = empty[1] + spread * torch.randn(DIM, generator=g, dtype=F64)
        erase_seqs.append(seq.to(dtype))
        lasts.append(last)
    raw = dict(erase=erase_seqs, erase_last=lasts, guide=[empty.to(dtype)] * m, guide_last=[0] * m,
               empty=empty.to(dtype))
    return ConceptSet.from_embeddings(**raw), raw


def naive_stats(name, w0, concepts, cfg, dtype=torch.float32):
    """(MI weights, entropy factors) of one matrix, from the library's seeding and the naive formulas.

    The library draws the noise in float32 whatever the edit's precision (``MEASURE_DTYPE``), so the
    naive side draws the same float32 noise."""
    cs = list(concepts.concept_vecs.to(F64))
    e = concepts.empty_vec.to(F64)
    m = len(cs)
    w = w0.to(F64)
    pos, neg = naive.informax_noise(cfg.seed, name, m, cfg.mi_samples, DIM, dtype)
    mi = naive.sampled_mi(w, cs, e, cfg.noise_sigma, pos, neg)
    weights = naive.soft_mask(mi, cfg.mi_temperature, cfg.p)
    noise = naive.entropy_noise(cfg.seed, name, m, cfg.entropy_samples, DIM, dtype)
    entropy = naive.sampled_entropy(w, cs, cfg.noise_sigma, noise, cfg.entropy_bins)
    return mi, weights, entropy


@pytest.fixture(scope="module")
def case64():
    cfg = ScaPreConfig(precision="float64", **BASE)
    concepts, raw = near_empty_concepts(3)
    weights = random_weights(SHAPES, seed=4, dtype=F64)
    ref = {name: naive_stats(name, w, concepts, cfg) for name, w in weights.items()}
    return cfg, concepts, raw, weights, ref


def test_the_case_is_informative_not_tied(case64):
    """Guard: the MI varies over rows (else the weights tie at 0.5^p and test little)."""
    for mi, weights, _ in case64[4].values():
        assert float(mi.std(dim=0).min()) > 1e-2
        assert float(weights.std(dim=0).min()) > 1e-2


def test_sampled_mi_weights_match_naive(case64):
    cfg, concepts, _, weights, ref = case64
    info = informax_weights(weights, concepts, cfg)
    for name in weights:
        ours = info.stats[name].row_weights
        assert ours.shape == ref[name][1].shape
        assert torch.allclose(ours, ref[name][1], rtol=0, atol=1e-12), name


def test_sampled_entropy_factors_and_mu_match_naive(case64):
    cfg, concepts, _, weights, ref = case64
    info = informax_weights(weights, concepts, cfg)
    for name in weights:
        ours = info.stats[name].entropy
        assert torch.allclose(ours, ref[name][2], rtol=0, atol=1e-12), name
        mu = float((1 - ref[name][2]).clamp(0, 1).mean())
        assert float(info.stats[name].spread.mean()) == pytest.approx(mu, abs=1e-12)


@pytest.mark.parametrize("overrides", [dict(), dict(ased=True, egbr=True, bures_iters=2)], ids=["default", "ased"])
def test_whole_sampled_edit_matches_naive(case64, overrides):
    """erase() at noise_sigma > 0 equals the per-row solve fed the naive weights, entropy and mu."""
    cfg, concepts, raw, weights, ref = case64
    cfg = cfg.replace(**overrides)
    out = erase(weights, concepts, cfg)
    cs, xs, ys, _ = naive.concept_inputs(raw["erase"], raw["erase_last"], raw["guide"], raw["guide_last"],
                                         raw["empty"])
    for name, w0 in weights.items():
        _, row_w, entropy = ref[name]
        expected = naive.scale_edit(w0, cs, xs, ys, [], row_w, entropy, cfg)
        assert float((out[name] - expected).norm() / expected.norm()) < 1e-9, name
        assert float((out[name] - w0).norm() / w0.norm()) > 1e-3


def test_small_variant_sampled_edit_matches_naive(case64):
    cfg, concepts, raw, weights, ref = case64
    cfg = cfg.replace(variant="small", erase_scale=1.0, alpha_min=0.6)
    out = erase(weights, concepts, cfg)
    cs, xs, ys, _ = naive.concept_inputs(raw["erase"], raw["erase_last"], raw["guide"], raw["guide_last"],
                                         raw["empty"])
    for name, w0 in weights.items():
        _, row_w, entropy = ref[name]
        expected = naive.small_edit(w0, cs, xs, ys, [], row_w, entropy, cfg)
        assert float((out[name] - expected).norm() / expected.norm()) < 1e-9, name


def test_default_float32_path_matches_naive():
    """The shipped default (float32 arithmetic, float32 noise) agrees with naive fed the same float32 draws."""
    cfg = ScaPreConfig(**BASE)
    concepts, _ = near_empty_concepts(2, dtype=torch.float32, seed=5)
    weights = random_weights({"w": (32, DIM)}, seed=6)
    info = informax_weights(weights, concepts, cfg)
    _, row_w, entropy = naive_stats("w", weights["w"], concepts, cfg, torch.float32)
    assert float(row_w.std(dim=0).min()) > 1e-2
    assert torch.allclose(info.stats["w"].row_weights.double(), row_w, rtol=0, atol=1e-5)
    assert torch.allclose(info.stats["w"].entropy.double(), entropy, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["scale", "small"])
def test_zero_noise_gives_uniform_weights_end_to_end(variant):
    """noise_sigma = 0: every row separates every concept perfectly, so every weight is sigmoid(0)^p, and the
    edit equals the per-row solve with uniform weights 0.5^p."""
    p = 3.0
    cfg = ScaPreConfig(variant=variant, precision="float64", noise_sigma=0.0, p=p, mi_temperature=0.7,
                       entropy_samples=4, seed=3)
    concepts, raw = near_empty_concepts(3, spread=1.0, seed=2)
    weights = random_weights(SHAPES, seed=8, dtype=F64)
    info = informax_weights(weights, concepts, cfg)
    cs, xs, ys, _ = naive.concept_inputs(raw["erase"], raw["erase_last"], raw["guide"], raw["guide_last"],
                                         raw["empty"])
    out = erase(weights, concepts, cfg)
    for name, w0 in weights.items():
        row_w = info.stats[name].row_weights
        assert torch.equal(row_w, torch.full_like(row_w, 0.5**p)), name
        uniform = torch.full((w0.shape[0], 3), 0.5**p, dtype=F64)
        noise = torch.zeros(3, cfg.entropy_samples, DIM, dtype=F64)
        entropy = naive.sampled_entropy(w0, cs, 0.0, noise, cfg.entropy_bins)
        edit = naive.scale_edit if variant == "scale" else naive.small_edit
        expected = edit(w0, cs, xs, ys, [], uniform, entropy, cfg)
        assert float((out[name] - expected).norm() / expected.norm()) < 1e-9, name
