"""ScaPreConfig: defaults from the issue, and a ValueError naming the field for each bad value."""

from __future__ import annotations

import dataclasses

import pytest
from comfyui_scapre.scapre_core import FIELD_HELP, ScaPreConfig

DEFAULTS = dict(
    variant="scale", lam=0.5, erase_scale=2.0, preserve_scale=1.0, technique="replace", p=2.0,
    mi_temperature=0.7, mi_samples=5, noise_sigma=0.01, use_informax=True, entropy_samples=20,
    entropy_bins=20, mu_from_entropy=True, mu=0.1, ased=False, t_sigma=1.0, p_sigma=1.0, bures_iters=1,
    egbr=False, alpha_min=0.8, svd_residual=False, seed=0,
)


def test_defaults_are_the_published_ones():
    cfg = ScaPreConfig()
    for name, value in DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert cfg.mi_estimator == "sampled" and cfg.precision == "float32"


def test_frozen_and_every_field_documented():
    cfg = ScaPreConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lam = 1.0  # type: ignore[misc]
    assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(ScaPreConfig)}


BAD = [
    ("variant", "huge"), ("technique", "blend"), ("mi_estimator", "exact"), ("precision", "float16"),
    ("lam", 0.0), ("lam", -1.0), ("lam", float("nan")), ("erase_scale", -0.1), ("preserve_scale", -2.0),
    ("erase_scale", float("inf")), ("p", -1.0), ("mi_temperature", 0.0), ("noise_sigma", -0.01), ("mu", -0.5),
    ("t_sigma", 0.0), ("p_sigma", -1.0), ("alpha_min", 1.5), ("alpha_min", -0.1), ("mi_samples", 0),
    ("mi_samples", 2.5), ("entropy_samples", 0), ("entropy_bins", 1), ("bures_iters", -1), ("seed", -1),
    ("seed", 2**64), ("use_informax", 1), ("ased", "yes"), ("lam", "0.5"), ("lam", True),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ScaPreConfig(**{field: value})


def test_replace_validates_and_from_dict_rejects_unknown():
    assert ScaPreConfig().replace(p=5.0).p == 5.0
    with pytest.raises(ValueError, match="p"):
        ScaPreConfig().replace(p=-5.0)
    with pytest.raises(ValueError, match="lambda_"):
        ScaPreConfig.from_dict({"lambda_": 0.5})
    assert ScaPreConfig.from_dict(ScaPreConfig(p=3.0).to_dict()) == ScaPreConfig(p=3.0)


def test_what_each_variant_needs():
    assert ScaPreConfig().needs_entropy and ScaPreConfig().needs_row_weights
    assert not ScaPreConfig(mu_from_entropy=False).needs_entropy
    assert ScaPreConfig(mu_from_entropy=False, egbr=True).needs_entropy
    assert ScaPreConfig(variant="small", mu_from_entropy=False).needs_entropy
    assert not ScaPreConfig(variant="uce").needs_entropy and not ScaPreConfig(variant="uce").needs_row_weights
