"""ConceptSet.from_aligned: contexts aligned by the caller (any encoder layout), exact merging of repeated
padding, and one reference (empty) vector per erase prompt."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from comfyui_scapre.scapre_core import ConceptSet, ScaPreConfig, erase
from comfyui_scapre.scapre_core.concepts import merge_runs
from comfyui_scapre.scapre_core.report import ReportBuilder
from helpers import clip_like_concepts, random_concepts, random_weights

SHAPES = {"a.k": (24, 16), "a.v": (20, 16)}


def _aligned_like(cs: ConceptSet) -> ConceptSet:
    return ConceptSet.from_aligned(cs.concept_vecs, cs.empty_vec, cs.contexts, cs.targets, cs.preserve_contexts)


@pytest.mark.parametrize("variant", ["scale", "small", "uce"])
def test_from_aligned_reproduces_from_embeddings_bit_for_bit(variant):
    cs, _ = random_concepts(4, preserve=2, seed=3)
    weights = random_weights(SHAPES)
    config = ScaPreConfig(variant=variant, ased=True, seed=5)
    a = erase(weights, cs, config)
    b = erase(weights, _aligned_like(cs), config)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _padded_set(pad_runs: list[int], merge: bool) -> ConceptSet:
    """Contexts ending in a run of one padding vector p (and targets ending in p too), as Wan's zero-padded
    umT5 conditioning reads after the model's text projection."""
    g = torch.Generator().manual_seed(11)
    d = 16
    pad = torch.randn(d, generator=g, dtype=torch.float64)
    contexts, targets = [], []
    guide_head = torch.randn(2, d, generator=g, dtype=torch.float64)
    for n in pad_runs:
        words = torch.randn(3, d, generator=g, dtype=torch.float64)
        contexts.append(torch.cat([words, pad.expand(n, d)]))
        targets.append(torch.cat([guide_head, pad.expand(n + 1, d)]))
    vecs = torch.stack([x[0] for x in contexts])
    empty = guide_head[0]
    if merge:
        return ConceptSet.from_aligned(vecs, empty, contexts, targets, erase_texts=[f"p{n}" for n in pad_runs])
    # the same set without merging: built field by field, each target its own guide
    return ConceptSet(concept_vecs=vecs, empty_vec=empty, contexts=tuple(contexts), targets=tuple(targets),
                      guides=tuple(targets), guide_index=tuple(range(len(targets))),
                      erase_texts=tuple(f"p{n}" for n in pad_runs))


def test_merged_padding_gives_the_same_edit_and_report():
    runs = [200, 120, 47]
    merged, full = _padded_set(runs, True), _padded_set(runs, False)
    assert [x.shape[0] for x in merged.contexts] == [4, 4, 4]  # 3 words + one merged padding row
    assert [x.shape[0] for x in full.contexts] == [n + 3 for n in runs]
    weights = random_weights(SHAPES, dtype=torch.float64)
    config = ScaPreConfig(precision="float64", seed=2)
    a, b = erase(weights, merged, config), erase(weights, full, config)
    for k in a:
        change = (b[k] - weights[k]).norm()
        assert float((a[k] - b[k]).norm() / change) < 1e-10
    reports = []
    for cs, edited in ((merged, a), (full, b)):
        # every token: merged runs stand for all their tokens (the key scope counts tokens, not runs)
        builder = ReportBuilder({"erase": cs}, dtype=torch.float64, tokens="full")
        for k in weights:
            builder.add(k, weights[k], edited[k])
        reports.append(builder.build())
    for p, q in zip(reports[0].prompts, reports[1].prompts, strict=True):
        assert p.text == q.text and p.efficacy == pytest.approx(q.efficacy, rel=1e-8)
        assert p.drift == pytest.approx(q.drift, rel=1e-8)


def test_merge_runs_only_merges_identical_pairs():
    x = torch.tensor([[1.0, 0], [2, 0], [2, 0], [2, 0], [3, 0], [3, 0]])
    y = torch.tensor([[5.0, 0], [6, 0], [6, 0], [7, 0], [8, 0], [8, 0]])
    mx, my = merge_runs(x, y)
    # rows 1-2 are a run in both; row 3 differs in y; rows 4-5 are a run in both
    assert mx[:, 0].tolist() == pytest.approx([1, 2 * 2**0.5, 2, 3 * 2**0.5])
    assert my[:, 0].tolist() == pytest.approx([5, 6 * 2**0.5, 7, 8 * 2**0.5])
    assert torch.allclose(mx.T @ mx, x.T @ x) and torch.allclose(my.T @ mx, y.T @ x)
    lone = torch.randn(5, 3)
    assert merge_runs(lone)[0] is lone


def test_one_reference_vector_per_prompt():
    cs, _ = random_concepts(3, seed=4)
    weights = random_weights(SHAPES)
    for estimator in ("sampled", "expected"):
        config = ScaPreConfig(mi_estimator=estimator, seed=1)
        one = erase(weights, cs, config)
        per = erase(weights, dataclasses.replace(cs, empty_vec=cs.empty_vec.expand(3, -1).clone()), config)
        for k in one:
            assert torch.allclose(one[k], per[k], rtol=0, atol=1e-6)
    # different reference vectors change the Informax weights, hence the edit
    other = torch.stack([cs.empty_vec, cs.concept_vecs[0], cs.empty_vec])
    moved = erase(weights, ConceptSet.from_aligned(cs.concept_vecs, other, cs.contexts, cs.targets),
                  ScaPreConfig(mi_estimator="expected"))
    assert any(not torch.allclose(moved[k], one[k]) for k in one)


def test_bad_aligned_inputs_say_what_to_change():
    cs, _ = random_concepts(2, seed=1)
    with pytest.raises(ValueError, match="token by token"):
        ConceptSet.from_aligned(cs.concept_vecs, cs.empty_vec, cs.contexts, [t[:-1] for t in cs.targets])
    with pytest.raises(ValueError, match="one concept vector per erase prompt"):
        ConceptSet.from_aligned(cs.concept_vecs[:1], cs.empty_vec, cs.contexts, cs.targets)
    with pytest.raises(ValueError, match=r"one per erase prompt"):
        ConceptSet.from_aligned(cs.concept_vecs, torch.zeros(5, 16), cs.contexts, cs.targets)
    with pytest.raises(ValueError, match="no concepts"):
        ConceptSet.from_aligned(cs.concept_vecs, cs.empty_vec, [], [])


@pytest.mark.parametrize("options", [
    {"variant": "scale"}, {"variant": "scale", "ased": True, "egbr": True, "mu_from_entropy": False},
    {"variant": "small", "svd_residual": True}, {"variant": "uce"}, {"variant": "scale", "technique": "tensor"},
])
def test_short_text_solves_on_its_span_as_on_the_whole_space(monkeypatch, options):
    """Few short contexts in a wide text space (Wan's merged padding): the solve on the text's span (r << d)
    equals the full eigendecomposition."""
    from comfyui_scapre.scapre_core import solve

    cs, _ = random_concepts(3, dim=64, length=6, preserve=1, seed=7, dtype=torch.float64)
    assert 4 * solve.text_rows(cs, ScaPreConfig(**options)) <= 3 * 64
    weights = random_weights({"a.k": (40, 64), "a.v": (24, 64)}, dtype=torch.float64)
    config = ScaPreConfig(precision="float64", seed=1, **options)
    partial = erase(weights, cs, config)
    assert solve.prepare_text_side(cs, config, torch.device("cpu"), torch.float64).partial
    monkeypatch.setattr(solve, "text_rows", lambda *_: 10**9)
    assert not solve.prepare_text_side(cs, config, torch.device("cpu"), torch.float64).partial
    full = erase(weights, cs, config)
    for k in weights:
        change = (full[k] - weights[k]).norm()
        assert float(change) > 0 and float((partial[k] - full[k]).norm() / change) < 1e-9


@pytest.mark.parametrize("options", [
    {"variant": "scale"}, {"variant": "scale", "ased": True, "egbr": True, "mu_from_entropy": False},
    {"variant": "small", "svd_residual": True}, {"variant": "uce"}, {"variant": "scale", "technique": "tensor"},
])
def test_wide_text_solved_directly_equals_the_eigenbasis_solve(monkeypatch, options):
    """Text that fills a wide space (T5 rows before Flux's txt_in): the direct float64 route (a Cholesky
    factorization per matrix, no eigendecomposition) equals the eigenbasis solve, in float64 and, for the
    default float32 edit, to float32 rounding; on CLIP-like ill-conditioned statistics, with preserve prompts
    and guides."""
    from comfyui_scapre.scapre_core import solve

    cs = clip_like_concepts(12, 64, preserve=2, guided=True, seed=3)
    weights = random_weights({"a.k": (40, 64), "a.v": (24, 64)})
    wide = {k: w.double() for k, w in weights.items()}
    config = ScaPreConfig(seed=1, **options)
    assert solve.route(cs, config) == "eigen"
    reference = erase(wide, cs, config.replace(precision="float64"))
    monkeypatch.setattr(solve, "DIRECT_MIN_DIM", 64)
    assert solve.route(cs, config) == "direct"
    assert solve.prepare_text_side(cs, config, torch.device("cpu"), torch.float32).direct
    direct64 = erase(wide, cs, config.replace(precision="float64"))
    direct32 = erase(weights, cs, config)
    for k in weights:
        change = (reference[k] - wide[k]).norm()
        assert float(change) > 0
        assert float((direct64[k] - reference[k]).norm() / change) < 1e-9
        assert direct32[k].dtype == torch.float32
        assert float((direct32[k].double() - reference[k]).norm() / change) < 1e-6
    # the route depends on the text only: a matrix edited alone gets the same bits
    alone = erase({"a.v": weights["a.v"]}, cs, config)
    assert torch.equal(alone["a.v"], direct32["a.v"])


def test_route_follows_the_text():
    from comfyui_scapre.scapre_core import solve

    config = ScaPreConfig()
    short, _ = random_concepts(3, dim=64, length=6, seed=7)
    assert solve.route(short, config) == "span"
    sd = clip_like_concepts(12, 64)
    assert solve.route(sd, config) == "eigen"
    t5 = ConceptSet.from_aligned(torch.randn(2, solve.DIRECT_MIN_DIM), torch.randn(solve.DIRECT_MIN_DIM),
                                 [torch.randn(2000, solve.DIRECT_MIN_DIM)] * 2,
                                 [torch.randn(2000, solve.DIRECT_MIN_DIM)] * 2)
    assert solve.route(t5, config) == "direct"


def test_sym_gram_is_the_exactly_symmetric_gram():
    from comfyui_scapre.scapre_core.solve import sym_gram

    k = torch.randn(50, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = sym_gram(k, block=8)
    assert torch.equal(g, g.T)
    assert torch.allclose(g, k.T @ k, rtol=0, atol=1e-12)
