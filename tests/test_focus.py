"""The focus variant (beyond the paper; ``scapre_core.focus``): UCE restricted to the directions where the erased
prompts differ from their guides and the preserve prompts (references) carry little."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.scapre_core import ConceptSet, ScaPreConfig, erase
from comfyui_scapre.scapre_core.focus import (
    binding_guide,
    binds,
    focus_map,
    last_word,
    made_of,
    nearest,
    neighbour_guide,
)
from helpers import random_concepts, random_weights

F64 = torch.float64


def _naive_focus(cs: ConceptSet, cfg: ScaPreConfig) -> torch.Tensor:
    """The module docstring's formula with explicit inverses (float64)."""
    xs = [x.to(F64) for x in cs.contexts]
    ys = [y.to(F64) for y in cs.targets]
    d = cs.dim
    refs = torch.cat([*(z.to(F64) for z in cs.preserve_contexts), cs.empty_vec.to(F64).unsqueeze(0)])
    c = refs.T @ refs
    c = c + cfg.focus_eps * torch.trace(c) / d * torch.eye(d, dtype=F64)
    c_inv_half = torch.linalg.inv(torch.linalg.cholesky(c))
    cols = []
    for x, y in zip(xs, ys, strict=True):
        _vals, vecs = torch.linalg.eigh(c_inv_half @ (x - y).T @ (x - y) @ c_inv_half.T)
        cols.append(c_inv_half.T @ vecs[:, -cfg.focus_rank:])
    v = torch.linalg.qr(torch.cat(cols, dim=1)).Q
    g = cfg.lam * torch.eye(d, dtype=F64) + cfg.erase_scale * sum(x.T @ x for x in xs)
    k = sum((y - x).T @ x for x, y in zip(xs, ys, strict=True))
    return cfg.erase_scale * k @ v @ torch.linalg.inv(v.T @ g @ v) @ v.T


def _concepts(m=2, preserve=6, dim=24, seed=0):
    return random_concepts(m=m, dim=dim, length=10, seed=seed, preserve=preserve, dtype=F64)[0]


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_focus_map_is_the_formula(rank):
    cs = _concepts()
    cfg = ScaPreConfig(variant="focus", focus_rank=rank, erase_scale=1.0)
    a = focus_map(cs, cfg)
    assert torch.allclose(a, _naive_focus(cs, cfg), rtol=1e-8, atol=1e-10)
    assert int(torch.linalg.matrix_rank(a)) == rank * cs.num_concepts


def test_focus_edit_is_w0_times_the_map_in_every_precision():
    cs = _concepts()
    w = random_weights({"k": (40, 24), "v": (16, 24)}, seed=3, dtype=F64)
    cfg = ScaPreConfig(variant="focus", erase_scale=1.0, precision="float64")
    a = focus_map(cs, cfg)
    out = erase(w, cs, cfg)
    assert all(torch.allclose(out[n] - w[n], w[n] @ a, rtol=1e-10, atol=1e-12) for n in w)
    w32 = {n: t.float() for n, t in w.items()}
    out32 = erase(w32, cs, cfg.replace(precision="float32"))
    assert all(torch.allclose(out32[n] - w32[n], (w[n] @ a).float(), rtol=1e-4, atol=1e-5) for n in w)
    half = erase(w, cs, cfg.replace(strength=0.5))
    assert all(torch.allclose(half[n] - w[n], 0.5 * (out[n] - w[n]), rtol=1e-10, atol=1e-12) for n in w)


def test_focus_moves_erased_contexts_and_keeps_the_references():
    """Prompts to keep live in a subspace; the erased concept shares it and adds a part of its own. Against UCE on
    the same inputs the focused edit moves the erased contexts as far towards the guide and the references far
    less."""
    g = torch.Generator().manual_seed(4)
    d, shared, length = 32, 24, 10
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64)).Q
    common, own = basis[:, :shared], basis[:, shared:]

    def prompt(extra: float) -> torch.Tensor:
        tokens = torch.randn(length, shared, generator=g, dtype=F64) @ common.T
        return tokens + extra * torch.randn(length, d - shared, generator=g, dtype=F64) @ own.T

    refs = [prompt(0.0) for _ in range(8)]
    concept, empty = prompt(1.0), prompt(0.0)
    cs = ConceptSet.from_embeddings([concept], [1], [empty], [0], empty, preserve=refs, preserve_last=[1] * 8)
    w = random_weights({"k": (48, d)}, seed=5, dtype=F64)["k"]

    def moves(cfg):
        change = erase({"k": w}, cs, cfg)["k"] - w
        x, y = cs.contexts[0], cs.targets[0]
        toward = float(((change @ x.T) * (w @ (y - x).T)).sum() / (w @ (y - x).T).pow(2).sum())
        kept = max(float((change @ z.T).norm() / (w @ z.T).norm()) for z in cs.preserve_contexts)
        return toward, kept

    focus_toward, focus_kept = moves(ScaPreConfig(variant="focus", erase_scale=1.0, focus_rank=8,
                                                  precision="float64"))
    uce_toward, uce_kept = moves(ScaPreConfig(variant="uce", erase_scale=1.0, preserve_scale=0.0,
                                              precision="float64"))
    assert focus_toward > 0.2 and uce_toward > 0.2
    assert focus_kept < 0.1 * uce_kept, (focus_kept, uce_kept)


def test_neighbour_guide_is_the_mean_of_the_tails():
    a = torch.arange(12.0).reshape(6, 2)
    b = 10 + torch.arange(12.0).reshape(6, 2)
    guide, last = neighbour_guide([a, b], [1, 2])
    assert last == 1 and guide.shape == (5, 2)
    assert torch.equal(guide[1:], (a[1:5] + b[2:6]) / 2)
    with pytest.raises(ValueError, match="at least one"):
        neighbour_guide([], [])


def test_nearest_orders_by_cosine_and_leaves_out():
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[2.0, 0.1], [0.5, 0.5], [0.0, 3.0], [-1.0, 0.0]])
    assert nearest(concepts, candidates, 2) == [[0, 1], [2, 1]]
    assert nearest(concepts, candidates, 2, exclude=[{0}, set()]) == [[1, 2], [2, 1]]


def test_a_binding_is_a_concept_of_several_words_near_one_of_its_own():
    assert made_of("triangle", "green triangle") and made_of("Green", "green  Triangle")
    assert made_of("triangle green", "green triangle") and not made_of("", "green triangle")
    assert not made_of("green bar", "green triangle") and not made_of("tri", "green triangle")
    assert binds("green triangle", "triangle") and binds("green triangle", "green")
    assert binds("teddy bear", "bear")
    assert not binds("red", "red") and not binds("green triangle", "square") and not binds("Van Gogh", "Monet")
    assert last_word("a green  triangle") == "triangle"
    assert binding_guide("green triangle", "bar") == "green bar"
    assert binding_guide("Green  Triangle", "square") == "Green square"


@pytest.mark.parametrize("field,bad", [("focus_rank", 0), ("focus_rank", 1.5), ("focus_eps", 0.0),
                                       ("focus_eps", float("nan"))])
def test_focus_fields_are_validated(field, bad):
    with pytest.raises(ValueError, match=field):
        ScaPreConfig(variant="focus", **{field: bad})
