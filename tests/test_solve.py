"""The batched closed-form solve against a plain per-row restatement of SPEC (float64)."""

from __future__ import annotations

import naive
import pytest
import torch
from comfyui_scapre.scapre_core import ScaPreConfig, edit_matrix
from comfyui_scapre.scapre_core.informax import RowStats
from comfyui_scapre.scapre_core.solve import prepare_text_side
from helpers import random_concepts, random_weights

F64 = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _stats(rows: int, m: int, seed: int) -> RowStats:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(rows, m, generator=g, dtype=F64) ** 2
    entropy = torch.rand(rows, generator=g, dtype=F64)
    return RowStats(row_weights=weights, entropy=entropy)


def _naive_inputs(raw):
    cs, xs, ys, _ = naive.concept_inputs(raw["erase"], raw["erase_last"], raw["guide"], raw["guide_last"],
                                         raw["empty"])
    zs = [z[f:].to(F64) for z, f in zip(raw["preserve"], raw["preserve_last"], strict=False)]
    return cs, xs, ys, zs


SCALE_CASES = [
    dict(),
    dict(ased=True),
    dict(ased=True, egbr=True, bures_iters=2),
    dict(technique="tensor", mu_from_entropy=False, mu=0.3),
    dict(bures_iters=0, erase_scale=3.0, lam=0.2),
    dict(egbr=True, t_sigma=0.3, p_sigma=2.0, ased=True),
]


@pytest.mark.parametrize("overrides", SCALE_CASES, ids=[str(c) for c in SCALE_CASES])
@pytest.mark.parametrize("m,guided,preserve", [(1, False, 0), (4, True, 0), (6, False, 2), (30, True, 1)])
def test_scale_solve_matches_per_row_solve(overrides, m, guided, preserve):
    cfg = ScaPreConfig(precision="float64", **overrides)
    concepts, raw = random_concepts(m, dim=20, length=9, seed=m, guided=guided, preserve=preserve, dtype=F64)
    w0 = random_weights({"w": (13, 20)}, seed=m, dtype=F64)["w"]
    stats = _stats(13, m, seed=3)
    text = prepare_text_side(concepts, cfg, torch.device("cpu"), F64)
    ours = edit_matrix(w0, text, stats, cfg)
    cs, xs, ys, zs = _naive_inputs(raw)
    ref = naive.scale_edit(w0, cs, xs, ys, zs, stats.row_weights, stats.entropy, cfg)
    assert _rel(ours, ref) < 1e-8
    # the edit is not trivial: it moved the weights by a visible amount
    assert _rel(ours, w0) > 1e-3


def test_solved_rows_zero_the_gradient_of_the_quadratic():
    """Before the Bures step, row i minimises (1/2) w^T (G + s r_i P) w - b_i^T w: zero gradient."""
    cfg = ScaPreConfig(precision="float64", bures_iters=0, ased=True)
    concepts, raw = random_concepts(5, dim=24, length=11, seed=7, guided=True, preserve=1, dtype=F64)
    w0 = random_weights({"w": (17, 24)}, seed=2, dtype=F64)["w"]
    stats = _stats(17, 5, seed=9)
    solved = edit_matrix(w0, prepare_text_side(concepts, cfg, torch.device("cpu"), F64), stats, cfg)

    cs, xs, ys, zs = _naive_inputs(raw)
    mu = float((1 - stats.entropy).clamp(0, 1).mean())
    c = torch.stack(cs, 1)
    pres = cfg.preserve_scale * sum(z.T @ z for z in zs)
    g = ((cfg.lam + mu) * torch.eye(24, dtype=F64) + naive.ased(cs, mu, cfg.t_sigma, cfg.p_sigma) + c @ c.T
         + cfg.erase_scale * sum(x.T @ x for x in xs) + pres)
    v = naive.data_term(w0, xs, ys, stats.row_weights, cfg.erase_scale, "replace") + w0 @ pres
    p = naive.projector(cs)
    r = stats.row_weights.max(dim=1).values
    for i in range(17):
        hess = g + cfg.erase_scale * float(r[i]) * p
        grad = hess @ solved[i] - ((cfg.lam + mu) * w0[i] + v[i])
        assert float(grad.norm()) < 1e-9 * float(hess.norm() * solved[i].norm())


@pytest.mark.parametrize("svd_residual", [False, True])
@pytest.mark.parametrize("technique", ["replace", "tensor"])
def test_small_variant_matches_naive(svd_residual, technique):
    cfg = ScaPreConfig(variant="small", precision="float64", svd_residual=svd_residual, technique=technique,
                       alpha_min=0.6, erase_scale=1.0)
    concepts, raw = random_concepts(5, dim=18, length=8, seed=11, guided=True, preserve=1, dtype=F64)
    w0 = random_weights({"w": (15, 18)}, seed=5, dtype=F64)["w"]
    stats = _stats(15, 5, seed=4)
    ours = edit_matrix(w0, prepare_text_side(concepts, cfg, torch.device("cpu"), F64), stats, cfg)
    cs, xs, ys, zs = _naive_inputs(raw)
    ref = naive.small_edit(w0, cs, xs, ys, zs, stats.row_weights, stats.entropy, cfg)
    assert _rel(ours, ref) < 1e-9


@pytest.mark.parametrize("technique", ["replace", "tensor"])
def test_uce_matches_naive(technique):
    cfg = ScaPreConfig(variant="uce", precision="float64", technique=technique, preserve_scale=0.5)
    concepts, raw = random_concepts(4, dim=18, length=8, seed=12, guided=True, preserve=2, dtype=F64)
    w0 = random_weights({"w": (11, 18)}, seed=6, dtype=F64)["w"]
    ours = edit_matrix(w0, prepare_text_side(concepts, cfg, torch.device("cpu"), F64),
                       RowStats(None, None), cfg)
    _cs, xs, ys, zs = _naive_inputs(raw)
    assert _rel(ours, naive.uce_edit(w0, xs, ys, zs, cfg)) < 1e-10


def test_more_concepts_than_width():
    """m > d: the projector has full rank and the Woodbury step uses the whole space."""
    cfg = ScaPreConfig(precision="float64", ased=True)
    concepts, raw = random_concepts(20, dim=8, length=6, seed=13, dtype=F64)
    w0 = random_weights({"w": (7, 8)}, seed=7, dtype=F64)["w"]
    stats = _stats(7, 20, seed=5)
    ours = edit_matrix(w0, prepare_text_side(concepts, cfg, torch.device("cpu"), F64), stats, cfg)
    cs, xs, ys, zs = _naive_inputs(raw)
    assert _rel(ours, naive.scale_edit(w0, cs, xs, ys, zs, stats.row_weights, stats.entropy, cfg)) < 1e-8


def test_duplicate_concepts_are_stable():
    """A repeated prompt makes C rank-deficient; the projector must not blow up."""
    _concepts, raw = random_concepts(3, dim=12, length=7, seed=14, dtype=F64)
    raw["erase"] = [raw["erase"][0]] * 2 + [raw["erase"][1]]
    raw["erase_last"] = [raw["erase_last"][0]] * 2 + [raw["erase_last"][1]]
    from comfyui_scapre.scapre_core import ConceptSet

    dup = ConceptSet.from_embeddings(**raw)
    cfg = ScaPreConfig(precision="float64")
    w0 = random_weights({"w": (9, 12)}, seed=8, dtype=F64)["w"]
    stats = _stats(9, 3, seed=6)
    ours = edit_matrix(w0, prepare_text_side(dup, cfg, torch.device("cpu"), F64), stats, cfg)
    assert torch.isfinite(ours).all()
    cs, xs, ys, zs = _naive_inputs(raw)
    ref = naive.scale_edit(w0, cs, xs, ys, zs, stats.row_weights, stats.entropy, cfg)
    assert _rel(ours, ref) < 1e-6


def test_float32_tracks_float64():
    concepts, _ = random_concepts(10, dim=64, length=20, seed=15)
    w0 = random_weights({"w": (48, 64)}, seed=9, dtype=F64)["w"]
    stats = _stats(48, 10, seed=7)
    out = {}
    for precision, dtype in (("float32", torch.float32), ("float64", F64)):
        cfg = ScaPreConfig(precision=precision, ased=True, egbr=True)
        text = prepare_text_side(concepts, cfg, torch.device("cpu"), dtype)
        st = RowStats(stats.row_weights.to(dtype), stats.entropy.to(dtype))
        out[precision] = edit_matrix(w0.to(dtype), text, st, cfg).to(F64)
    assert _rel(out["float32"], out["float64"]) < 1e-4


@pytest.mark.parametrize("technique", ["replace", "tensor"])
def test_shared_guides_are_projected_once_and_match_naive(technique):
    """One guide for every prompt (the common case): grouped, and the edit is unchanged."""
    _, raw = random_concepts(5, dim=16, length=9, seed=21, dtype=F64)
    raw["guide"] = [raw["guide"][0]] * 3 + [raw["guide"][0].clone(), raw["guide"][1]]
    raw["guide_last"] = [0, 0, 0, 0, 2]
    from comfyui_scapre.scapre_core import ConceptSet

    concepts = ConceptSet.from_embeddings(**raw)
    assert len(concepts.guides) == 2 and concepts.guide_index == (0, 0, 0, 0, 1)
    cfg = ScaPreConfig(precision="float64", technique=technique)
    w0 = random_weights({"w": (11, 16)}, seed=3, dtype=F64)["w"]
    stats = _stats(11, 5, seed=8)
    ours = edit_matrix(w0, prepare_text_side(concepts, cfg, torch.device("cpu"), F64), stats, cfg)
    cs, xs, ys, zs = _naive_inputs(raw)
    assert _rel(ours, naive.scale_edit(w0, cs, xs, ys, zs, stats.row_weights, stats.entropy, cfg)) < 1e-8


@pytest.mark.parametrize("technique", ["replace", "tensor"])
def test_data_term_in_concept_blocks_matches_naive(technique):
    """More erase prompts than one block (CONCEPT_BLOCK): the blocked sum equals the plain one
    (``data_term`` returns it in the eigenbasis of ``G0``; rotated back here)."""
    from comfyui_scapre.scapre_core.solve import CONCEPT_BLOCK, data_term

    m = CONCEPT_BLOCK * 2 + 17
    concepts, raw = random_concepts(m, dim=12, length=6, seed=31, guided=True, dtype=F64)
    cfg = ScaPreConfig(precision="float64", technique=technique)
    w0 = random_weights({"w": (7, 12)}, seed=4, dtype=F64)["w"]
    weights = _stats(7, m, seed=2).row_weights
    text = prepare_text_side(concepts, cfg, torch.device("cpu"), F64)
    ours = data_term(w0, text, weights, 2.0, technique) @ text.basis.T
    _, xs, ys, _ = _naive_inputs(raw)
    assert _rel(ours, naive.data_term(w0, xs, ys, weights, 2.0, technique)) < 1e-12


@pytest.mark.parametrize("levels", [3, None])
def test_direct_data_term_by_most_common_weight_matches_naive(monkeypatch, levels):
    """The direct route's data term (each concept's most common row weight taken once per guide, the other rows
    apart) equals the plain sum, for weights with a few distinct values per concept (Informax's) and for weights
    that all differ, with several guides."""
    from comfyui_scapre.scapre_core import solve

    m = 9
    concepts, raw = random_concepts(m, dim=12, length=6, seed=5, guided=True, dtype=F64)
    monkeypatch.setattr(solve, "DIRECT_MIN_DIM", 12)
    monkeypatch.setattr(solve, "route", lambda *_: "direct")
    cfg = ScaPreConfig(precision="float64")
    text = prepare_text_side(concepts, cfg, torch.device("cpu"), F64)
    assert text.direct and len(set(concepts.guide_index)) > 1
    w0 = random_weights({"w": (40, 12)}, seed=4, dtype=F64)["w"]
    weights = _stats(40, m, seed=2).row_weights
    if levels is not None:  # a few values per column, most rows at one of them
        g = torch.Generator().manual_seed(3)
        pick = torch.randint(0, 8, weights.shape, generator=g).clamp(max=levels - 1)
        weights = torch.rand(levels, m, generator=g, dtype=F64).gather(0, pick)
        assert int((weights == solve.column_modes(weights)).sum()) > weights.numel() // 2
    ours = solve.data_term(w0, text, weights, 2.0, "replace")
    _, xs, ys, _ = _naive_inputs(raw)
    assert _rel(ours, naive.data_term(w0, xs, ys, weights, 2.0, "replace")) < 1e-12


def test_column_modes_pick_the_most_common_value():
    from comfyui_scapre.scapre_core.solve import column_modes

    w = torch.tensor([[0.5, 1.0], [0.5, 2.0], [0.1, 2.0], [0.5, 1.0]], dtype=F64)
    assert column_modes(w).tolist() == [0.5, 1.0]  # a tie goes to the smaller value
