"""The default float32 edit equals the float64 edit (issue: exact by default).

CLIP-like text makes ``G0`` ill-conditioned (eigenvalues ~1e6-1e7 times lambda); a float32 solve that
forms its right-hand side in the standard basis was off by 1e-3..1e-1 of the edit here. Tolerance:
1e-4 of the edit, relative Frobenius norm, every matrix.
"""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.scapre_core import ScaPreConfig, erase, informax_weights
from comfyui_scapre.scapre_core.solve import prepare_text_side
from helpers import clip_like_concepts, random_weights

F64 = torch.float64
TOL = 1e-4

CASES = {
    "scale default (sampled Informax, entropy mu)": dict(),
    "scale, many objects": dict(erase_scale=3.0, p=5.0, ased=True, entropy_samples=30),
    "scale, artists": dict(erase_scale=2.0, p=8.0, ased=True, entropy_samples=30),
    "scale, explicit (Informax off)": dict(p=3.0, use_informax=False),
    "scale, expected MI, constant mu": dict(mi_estimator="expected", mu_from_entropy=False, mu=0.3),
    "scale, EGBR, 2 Bures rounds": dict(egbr=True, bures_iters=2, ased=True),
    "scale, no Bures": dict(bures_iters=0),
    "scale, tensor": dict(technique="tensor"),
    "small": dict(variant="small", p=2.0),
    "small, SVD residual": dict(variant="small", svd_residual=True),
    "uce": dict(variant="uce"),
    "uce, tensor": dict(variant="uce", technique="tensor"),
}


def _rel_edit_err(w0: dict, ours: dict, ref: dict) -> dict[str, float]:
    return {k: float((ours[k].to(F64) - ref[k]).norm() / (ref[k] - w0[k].to(F64)).norm()) for k in w0}


def _condition(concepts, cfg) -> float:
    ev = prepare_text_side(concepts, cfg.replace(precision="float64"), torch.device("cpu"), F64).eigvals64
    return float(ev.max() / ev.min())


@pytest.mark.parametrize("overrides", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("dim,preserve,guided", [(96, 0, False), (160, 3, True)])
def test_float32_edit_equals_float64_edit(overrides, dim, preserve, guided):
    concepts = clip_like_concepts(8, dim, seed=dim, preserve=preserve, guided=guided)
    cfg = ScaPreConfig(**overrides)
    assert _condition(concepts, cfg) > 1e5  # the case is ill-conditioned, as with CLIP
    w0 = random_weights({"k": (48, dim), "v": (80, dim)}, seed=dim)
    ours = erase(w0, concepts, cfg)
    ref = erase({k: v.to(F64) for k, v in w0.items()}, concepts, cfg.replace(precision="float64"))
    assert all(ours[k].dtype == torch.float32 for k in ours)
    errors = _rel_edit_err(w0, ours, ref)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("variant", ["scale", "uce"])
def test_float32_equals_float64_with_1000_concepts(variant):
    concepts = clip_like_concepts(1000, 48, seed=5, length=20)
    cfg = ScaPreConfig(variant=variant, erase_scale=3.0, p=5.0)
    w0 = random_weights({"k": (40, 48)}, seed=2)
    ours = erase(w0, concepts, cfg)
    ref = erase({k: v.to(F64) for k, v in w0.items()}, concepts, cfg.replace(precision="float64"))
    errors = _rel_edit_err(w0, ours, ref)
    assert max(errors.values()) < TOL, errors


def test_half_precision_weights_edit_in_float32_like_float64():
    """fp16 weights (as on a GPU): the float32 edit equals the float64 edit up to the fp16 rounding of
    the result (2^-11 of the weight, stated as a share of the edit below)."""
    concepts = clip_like_concepts(4, 128, seed=9)
    w0 = {k: v.half() for k, v in random_weights({"k": (64, 128)}, seed=3).items()}
    ours = erase(w0, concepts, ScaPreConfig())
    ref = erase({k: v.to(F64) for k, v in w0.items()}, concepts, ScaPreConfig(precision="float64"))
    rounding = float(ref["k"].abs().max()) * 2.0**-11 * ref["k"].numel() ** 0.5
    assert float((ours["k"].to(F64) - ref["k"]).norm()) <= rounding


def test_statistics_are_the_same_in_both_precisions():
    """Row weights and entropy factors are measured identically whatever ``precision`` says, so a
    rounding can never flip a row's weight between the two."""
    concepts = clip_like_concepts(6, 64, seed=1)
    w0 = random_weights({"k": (32, 64)}, seed=1)
    a = informax_weights(w0, concepts, ScaPreConfig())
    b = informax_weights({k: v.to(F64) for k, v in w0.items()}, concepts, ScaPreConfig(precision="float64"))
    assert torch.equal(a.stats["k"].row_weights, b.stats["k"].row_weights)
    assert torch.equal(a.stats["k"].entropy, b.stats["k"].entropy)


def test_changes_are_the_edit_without_weight_rounding():
    """``erase_iter(changes=True)`` yields ``W - W0`` (float32 for fp16 weights), equal to the
    float64 change to 1e-4 of itself, where ``edited - original`` in fp16 would not be."""
    from comfyui_scapre.scapre_core import erase_iter

    concepts = clip_like_concepts(4, 96, seed=4)
    w0 = {k: v.half() for k, v in random_weights({"k": (40, 96)}, seed=4).items()}
    (name, change), = erase_iter(w0, concepts, ScaPreConfig(), changes=True)
    assert name == "k" and change.dtype == torch.float32
    ref = erase({k: v.to(F64) for k, v in w0.items()}, concepts, ScaPreConfig(precision="float64"))
    ref_change = ref["k"] - w0["k"].to(F64)
    assert float((change.to(F64) - ref_change).norm() / ref_change.norm()) < TOL
    edited = erase(w0, concepts, ScaPreConfig())["k"]
    assert edited.dtype == torch.float16
    assert torch.equal(edited, (w0["k"].float() + change).half())
