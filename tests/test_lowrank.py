"""The compact change (scapre_core.lowrank): on the span route it equals the dense change of every variant."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.scapre_core import erase_iter
from comfyui_scapre.scapre_core.lowrank import LowRankChange, worth_it
from comfyui_scapre.scapre_core.presets import PRESET_NAMES, preset_config
from comfyui_scapre.scapre_core.solve import route, text_rows
from helpers import random_concepts, random_weights

SHAPES = {"a.to_k": (96, 128), "a.to_v": (80, 128)}


def _both(name: str, strength: float, concepts):
    weights = random_weights(SHAPES, seed=3)
    config = preset_config(name, strength, seed=0)
    dense = dict(erase_iter(weights, concepts, config, changes=True))
    compact = dict(erase_iter(weights, concepts, config, changes=True, compact=True))
    return weights, dense, compact, config


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("strength", [0.5, 1.0, 3.0])
def test_compact_equals_dense_on_the_span_route(name, strength):
    concepts, _ = random_concepts(m=2, dim=128, length=6, seed=5, preserve=2)
    weights, dense, compact, config = _both(name, strength, concepts)
    assert route(concepts, config) == "span"
    for key, change in dense.items():
        got = compact[key]
        if config.variant == "focus":  # no compact form: the same dense change
            assert isinstance(got, torch.Tensor) and torch.equal(got, change)
            continue
        assert isinstance(got, LowRankChange), f"{name}: {key} came back dense"
        assert got.rank < 64 and got.shape == change.shape
        assert (got.row_scale is None) == (config.variant != "scale")
        err = (got.dense(weights[key]) - change).norm() / change.norm()
        assert err < 2e-6, f"{name} x{strength} {key}: compact off the dense change by {err:.2e}"


def test_compact_right_factor_is_shared_and_orthonormal():
    concepts, _ = random_concepts(m=2, dim=128, length=6, seed=5, preserve=2)
    _, _, compact, _ = _both("custom", 1.0, concepts)
    a, b = compact.values()
    assert a.right.data_ptr() == b.right.data_ptr()  # one span for every matrix of the edit
    gram = a.right @ a.right.T
    assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)


def test_text_that_fills_its_space_stays_dense():
    concepts, _ = random_concepts(m=6, dim=32, length=10, seed=2)
    weights = random_weights({"k": (40, 32)}, seed=1)
    config = preset_config("custom", 1.0)
    assert route(concepts, config) != "span"
    (_, got), = erase_iter(weights, concepts, config, changes=True, compact=True)
    assert isinstance(got, torch.Tensor)


def test_strength_zero_and_small_savings_stay_dense():
    config = preset_config("custom", 1.0)
    m = 2
    while text_rows(random_concepts(m=m, dim=128, length=10, seed=5)[0], config) <= 0.6 * 128:
        m += 1  # text spanning more than 3/5 of the 128 columns, still on the span route (at most 3/4)
    concepts, _ = random_concepts(m=m, dim=128, length=10, seed=5)
    weights = random_weights({"k": (40, 128)}, seed=1)
    assert route(concepts, config) == "span"
    (_, got), = erase_iter(weights, concepts, config, changes=True, compact=True)
    assert isinstance(got, torch.Tensor)  # r + 1 numbers per row against 128: not worth it
    concepts, _ = random_concepts(m=2, dim=128, length=6, seed=5)
    zeros = dict(erase_iter(random_weights(SHAPES, seed=3), concepts, preset_config("custom", 0.0), changes=True,
                            compact=True))
    assert all(isinstance(z, torch.Tensor) and not z.any() for z in zeros.values())


def test_dense_checks_the_shape_and_worth_it_counts():
    change = LowRankChange(torch.zeros(8), torch.ones(8, 2), torch.ones(2, 100))
    assert worth_it(change) and change.nbytes() == (8 + 16) * 4 and change.nbytes(shared=False) == (24 + 200) * 4
    assert not worth_it(LowRankChange(None, torch.ones(8, 60), torch.ones(60, 100)))
    with pytest.raises(ValueError, match="weight"):
        change.dense(torch.zeros(8, 99))
    w0 = torch.randn(8, 100)
    scaled = LowRankChange(torch.full((8,), 0.5), torch.ones(8, 2), torch.ones(2, 100))
    assert torch.allclose(scaled.dense(w0), 0.5 * w0 + 2.0)
    assert torch.allclose(scaled.scaled(0.5).dense(w0), 0.25 * w0 + 1.0)
