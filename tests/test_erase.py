"""The public ``erase`` / ``informax_weights`` API: determinism, dtypes, reuse, progress, bad input."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.scapre_core import ScaPreConfig, erase, informax_weights
from helpers import random_concepts, random_weights

SHAPES = {"down.to_k": (24, 16), "down.to_v": (24, 16), "mid.to_k": (40, 16), "mid.to_v": (40, 16)}


def _bits_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("variant", ["scale", "small", "uce"])
def test_same_seed_same_bits_and_other_seed_differs(variant):
    concepts, _ = random_concepts(4, dim=16)
    weights = random_weights(SHAPES)
    cfg = ScaPreConfig(variant=variant, seed=7)
    first, second = erase(weights, concepts, cfg), erase(weights, concepts, cfg)
    assert _bits_equal(first, second)
    other = erase(weights, concepts, cfg.replace(seed=8))
    if variant == "uce":  # no randomness at all
        assert _bits_equal(first, other)
    else:
        assert not _bits_equal(first, other)


@pytest.mark.parametrize("variant", ["scale", "small"])
def test_zero_noise_is_deterministic_without_a_seed(variant):
    concepts, _ = random_concepts(4, dim=16)
    weights = random_weights(SHAPES)
    a = erase(weights, concepts, ScaPreConfig(variant=variant, noise_sigma=0.0, seed=1))
    b = erase(weights, concepts, ScaPreConfig(variant=variant, noise_sigma=0.0, seed=999))
    assert _bits_equal(a, b)


def test_expected_estimator_with_constant_mu_ignores_the_seed():
    concepts, _ = random_concepts(4, dim=16)
    weights = random_weights(SHAPES)
    cfg = ScaPreConfig(mi_estimator="expected", mu_from_entropy=False)
    assert _bits_equal(erase(weights, concepts, cfg.replace(seed=1)), erase(weights, concepts, cfg.replace(seed=2)))


def test_a_matrix_does_not_depend_on_the_others():
    concepts, _ = random_concepts(3, dim=16)
    weights = random_weights(SHAPES)
    together = erase(weights, concepts)
    alone = erase({"mid.to_v": weights["mid.to_v"]}, concepts)
    assert torch.equal(together["mid.to_v"], alone["mid.to_v"])


def test_inputs_are_not_modified():
    concepts, _ = random_concepts(3, dim=16)
    weights = random_weights(SHAPES)
    before = {k: v.clone() for k, v in weights.items()}
    vecs = concepts.concept_vecs.clone()
    out = erase(weights, concepts, ScaPreConfig(ased=True, egbr=True))
    assert _bits_equal(weights, before) and torch.equal(concepts.concept_vecs, vecs)
    assert all(out[k].data_ptr() != weights[k].data_ptr() for k in weights)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
if hasattr(torch, "float8_e4m3fn"):
    DTYPES.append(torch.float8_e4m3fn)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_storage_dtype_round_trip(dtype):
    concepts, _ = random_concepts(3, dim=16)
    weights = {k: v.to(dtype) for k, v in random_weights(SHAPES).items()}
    out = erase(weights, concepts)
    reference = erase({k: v.to(torch.float32) for k, v in weights.items()}, concepts)
    for k in weights:
        assert out[k].dtype == dtype and out[k].shape == weights[k].shape and out[k].device == weights[k].device
        # the arithmetic ran in float32 on the widened weights; only the final cast differs
        assert torch.equal(out[k], reference[k].to(dtype))
        assert not torch.equal(out[k], weights[k])


def test_float64_precision_on_request():
    concepts, _ = random_concepts(3, dim=16)
    weights = random_weights(SHAPES)
    # expected MI and a constant mu: no sampled quantity, so the two precisions solve one problem
    cfg = ScaPreConfig(mi_estimator="expected", mu_from_entropy=False)
    f32 = erase(weights, concepts, cfg)
    f64 = erase({k: v.double() for k, v in weights.items()}, concepts, cfg.replace(precision="float64"))
    for k in weights:
        assert f64[k].dtype == torch.float64
        assert float((f32[k].double() - f64[k]).norm() / f64[k].norm()) < 1e-5


@pytest.mark.parametrize("overrides", [dict(), dict(variant="small"), dict(use_informax=False),
                                       dict(mi_estimator="expected", egbr=True),
                                       dict(mu_from_entropy=False)])
def test_precomputed_informax_gives_identical_bits(overrides):
    concepts, _ = random_concepts(5, dim=16)
    weights = random_weights(SHAPES)
    cfg = ScaPreConfig(seed=3, **overrides)
    info = informax_weights(weights, concepts, cfg)
    assert set(info.stats) == set(weights)
    assert _bits_equal(erase(weights, concepts, cfg, informax=info), erase(weights, concepts, cfg))


def test_informax_mismatches_are_refused():
    concepts, _ = random_concepts(3, dim=16)
    weights = random_weights(SHAPES)
    info = informax_weights(weights, concepts, ScaPreConfig(p=2.0))
    with pytest.raises(ValueError, match=r"p: informax 2\.0 vs config 5\.0"):
        erase(weights, concepts, ScaPreConfig(p=5.0), informax=info)
    other, _ = random_concepts(3, dim=16, seed=9)
    with pytest.raises(ValueError, match="other concepts"):
        erase(weights, other, informax=info)
    changed = dict(weights, **{"mid.to_k": weights["mid.to_k"] * 1.5})
    with pytest.raises(ValueError, match="different weights"):
        erase(changed, concepts, informax=info)
    with pytest.raises(ValueError, match="no row weights"):
        erase({**weights, "extra": torch.randn(8, 16)}, concepts, informax=info)


def test_progress_is_reported_per_matrix_and_can_cancel():
    concepts, _ = random_concepts(3, dim=16)
    weights = random_weights(SHAPES)
    seen = []
    erase(weights, concepts, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    class Cancelled(Exception):
        pass

    def cancel_after_two(done, total):
        if done == 2:
            raise Cancelled

    before = {k: v.clone() for k, v in weights.items()}
    with pytest.raises(Cancelled):
        erase(weights, concepts, progress=cancel_after_two)
    assert _bits_equal(weights, before)


def test_edit_moves_erased_contexts_towards_the_guide():
    """The defining effect: W X_j^T ends closer to W0 Y_j^T than W0 X_j^T was."""
    concepts, _ = random_concepts(3, dim=16, length=12)
    weights = random_weights(SHAPES)
    for variant in ("scale", "small", "uce"):
        out = erase(weights, concepts, ScaPreConfig(variant=variant, erase_scale=3.0))
        for k, w0 in weights.items():
            for x, y in zip(concepts.contexts, concepts.targets, strict=False):
                before = (w0 @ x.T - w0 @ y.T).norm()
                after = (out[k] @ x.T - w0 @ y.T).norm()
                assert after < before, (variant, k)


BAD_WEIGHTS = {
    "width": ({"a": torch.randn(8, 12)}, "input width 12 but the text embeddings have width 16"),
    "vector": ({"a": torch.randn(16)}, "matrix"),
    "nan": ({"a": torch.full((8, 16), float("nan"))}, r"128 non-finite value\(s\) \(NaN\).*load an intact model"),
    "inf": ({"a": torch.eye(8, 16).index_put((torch.tensor([2]), torch.tensor([3])), torch.tensor(float("inf")))},
            r"'a' has 1 non-finite value\(s\) \(inf\).*load an intact model"),
    "-inf half": ({"a": torch.full((8, 16), -float("inf"), dtype=torch.float16)}, r"128 non-finite value\(s\) \(inf\)"),
    "zero rows": ({"a": torch.zeros(0, 16)}, r"'a' has no output rows \(shape \[0, 16\]\).*leave it out"),
    "integer": ({"a": torch.ones(8, 16, dtype=torch.int32)}, "floating"),
    "not a tensor": ({"a": [[0.0] * 16]}, "torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS), ids=list(BAD_WEIGHTS))
def test_bad_weights_are_refused_before_any_work(case):
    concepts, _ = random_concepts(3, dim=16)
    bad, message = BAD_WEIGHTS[case]
    good = random_weights({"first": (8, 16)})
    calls = []
    with pytest.raises(ValueError, match=message):
        erase({**good, **bad}, concepts, progress=lambda *a: calls.append(a))
    assert calls == []
    with pytest.raises(ValueError, match=message):
        informax_weights({**good, **bad}, concepts)


def test_no_weights_is_refused():
    concepts, _ = random_concepts(3, dim=16)
    with pytest.raises(ValueError, match="no weights"):
        erase({}, concepts)


def test_concepts_must_be_a_concept_set():
    with pytest.raises(ValueError, match="ConceptSet"):
        erase(random_weights({"a": (4, 16)}), {"cat": torch.randn(16)})


def test_explicit_compute_device_returns_to_source_device():
    concepts, _ = random_concepts(3, dim=16)
    weights = random_weights(SHAPES)
    out = erase(weights, concepts, device="cpu")
    assert _bits_equal(out, erase(weights, concepts))


def _text(concepts, cfg):
    from comfyui_scapre.scapre_core.solve import prepare_text_side

    return prepare_text_side(concepts, cfg, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("overrides,needs", [(dict(), "mu_from_entropy needs them"),
                                             (dict(egbr=True, mu_from_entropy=False), "egbr needs them"),
                                             (dict(variant="small"), "the small variant's rollback needs them")])
def test_edit_without_entropy_factors_says_what_to_change(overrides, needs):
    from comfyui_scapre.scapre_core import RowStats, edit_matrix

    concepts, _ = random_concepts(3, dim=16)
    w0 = random_weights({"w": (8, 16)})["w"]
    cfg = ScaPreConfig(**overrides)
    stats = RowStats(row_weights=torch.full((8, 3), 0.25), entropy=None)
    message = rf"no entropy factors were given .*{needs}.*turn mu_from_entropy and egbr off"
    with pytest.raises(ValueError, match=message):
        edit_matrix(w0, _text(concepts, cfg), stats, cfg)
    # with a constant mu and no EGBR the scale variant needs no entropy at all
    plain = ScaPreConfig(mu_from_entropy=False)
    assert torch.isfinite(edit_matrix(w0, _text(concepts, plain), stats, plain)).all()


def test_row_stats_of_the_wrong_shape_or_not_finite_are_refused():
    from comfyui_scapre.scapre_core import RowStats, edit_matrix

    concepts, _ = random_concepts(3, dim=16)
    w0 = random_weights({"w": (8, 16)})["w"]
    cfg = ScaPreConfig()
    text = _text(concepts, cfg)
    with pytest.raises(ValueError, match=r"row weights of the matrix have shape \[8, 2\] but the edit needs \[8, 3\]"):
        edit_matrix(w0, text, RowStats(torch.ones(8, 2), torch.zeros(8)), cfg)
    with pytest.raises(ValueError, match=r"entropy factors of the matrix have shape \[7\] but the edit needs \[8\]"):
        edit_matrix(w0, text, RowStats(torch.ones(8, 3), torch.zeros(7)), cfg)
    with pytest.raises(ValueError, match="entropy factors of the matrix has 1 non-finite"):
        edit_matrix(w0, text, RowStats(torch.ones(8, 3), torch.tensor([0.5] * 7 + [float("nan")])), cfg)


def test_precomputed_informax_without_entropy_is_refused_before_any_work():
    import dataclasses

    from comfyui_scapre.scapre_core import RowStats

    concepts, _ = random_concepts(3, dim=16)
    weights = random_weights(SHAPES)
    info = informax_weights(weights, concepts)
    stripped = dataclasses.replace(info, stats={k: RowStats(s.row_weights, None) for k, s in info.stats.items()})
    calls = []
    with pytest.raises(ValueError, match=r"no entropy factors were given for 'down.to_k'.*mu_from_entropy"):
        erase(weights, concepts, informax=stripped, progress=lambda *a: calls.append(a))
    assert calls == []
