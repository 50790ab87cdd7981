"""Presets: the authors' published runs (SPEC "Published settings"), checked field by field."""

from __future__ import annotations

import dataclasses

import pytest
from comfyui_scapre.scapre_core import ScaPreConfig
from comfyui_scapre.scapre_core.presets import PRESET_NAMES, PRESETS, preset_config

# Every field of every preset, written out: a preset that drifts from the published run fails here.
BASE = dict(
    variant="scale", lam=0.5, erase_scale=2.0, preserve_scale=1.0, technique="replace", p=2.0,
    mi_temperature=0.7, mi_samples=5, noise_sigma=0.01, use_informax=True, entropy_samples=20,
    entropy_bins=20, mu_from_entropy=True, mu=0.1, ased=False, t_sigma=1.0, p_sigma=1.0, bures_iters=1,
    egbr=False, alpha_min=0.8, svd_residual=False, seed=0, mi_estimator="sampled", precision="float32", strength=1.0,
    focus_rank=2, focus_eps=1e-3, overshoot=0.3, look_alike_pull=0.5,
)
EXPECTED = {
    "custom": BASE,
    # Imagenette-10: small, p 2, alpha_min 0.8, entropy_samples 20 (erase_scale 1 as in the README table)
    "few-objects": {**BASE, "variant": "small", "erase_scale": 1.0, "p": 2.0, "alpha_min": 0.8,
                    "entropy_samples": 20},
    # 50 objects: scale, MI on, erase_scale 3, p 5, bures_iters 1, ASED on, entropy_samples 30, bins 20
    "many-objects": {**BASE, "erase_scale": 3.0, "p": 5.0, "use_informax": True, "bures_iters": 1, "ased": True,
                     "entropy_samples": 30, "entropy_bins": 20},
    # 50 artists: scale, MI on, erase_scale 2, p 8, bures_iters 1, ASED on, entropy_samples 30, bins 20
    "artists": {**BASE, "erase_scale": 2.0, "p": 8.0, "use_informax": True, "bures_iters": 1, "ased": True,
                "entropy_samples": 30, "entropy_bins": 20},
    # explicit content: scale, erase_scale 2, p 3, mu from entropy, bures_iters 1, MI weights OFF
    "explicit": {**BASE, "erase_scale": 2.0, "p": 3.0, "mu_from_entropy": True, "bures_iters": 1,
                 "use_informax": False},
    # UCE baseline: lambda 0.5, erase_scale 1
    "uce": {**BASE, "variant": "uce", "erase_scale": 1.0},
    # beyond the paper: the focus variant (UCE in the concept's own directions), erase_scale 1
    "precise": {**BASE, "variant": "focus", "erase_scale": 1.0},
}


def test_expected_lists_every_field():
    names = {f.name for f in dataclasses.fields(ScaPreConfig)}
    for preset, values in EXPECTED.items():
        assert set(values) == names, preset


def test_every_preset_is_listed_and_described():
    assert set(PRESET_NAMES) == set(EXPECTED)
    assert PRESET_NAMES[0] == "custom"
    assert all(PRESETS[name].description for name in PRESET_NAMES)


def test_presets_beyond_the_paper_say_so():
    from comfyui_scapre.scapre_core.presets import BEYOND_THE_PAPER

    assert set(BEYOND_THE_PAPER) == {"precise"}
    for name in PRESET_NAMES:
        labelled = "BEYOND THE PAPER" in PRESETS[name].description
        assert labelled == (name in BEYOND_THE_PAPER), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_is_the_published_config_field_by_field(name):
    cfg = preset_config(name)
    for field, value in EXPECTED[name].items():
        got = getattr(cfg, field)
        assert got == value and type(got) is type(value), (name, field, got, value)
    assert cfg == PRESETS[name].config


def test_custom_is_the_config_defaults():
    assert preset_config("custom") == ScaPreConfig()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strength_scales_only_the_strength_and_seed_only_the_seed(name):
    base = preset_config(name)
    cfg = preset_config(name, strength=1.5, seed=7)
    assert cfg.strength == pytest.approx(1.5 * base.strength)
    assert cfg.seed == 7
    assert cfg.replace(strength=base.strength, seed=0) == base
    assert preset_config(name, strength=0.0).strength == 0.0
    assert preset_config(name, strength=0.0).erase_scale == base.erase_scale


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "1"])
def test_bad_strength_is_refused(bad):
    with pytest.raises(ValueError, match="strength"):
        preset_config("custom", strength=bad)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*many-objects"):
        preset_config("huge")


def test_bad_seed_is_refused_by_the_config():
    with pytest.raises(ValueError, match="seed"):
        preset_config("custom", seed=-1)


def test_erase_settings_from_a_mapping():
    from comfyui_scapre.scapre_core.presets import EraseSettings

    settings = EraseSettings.from_dict({"p": 5.0, "ased": True, "edit": "values only"})
    assert settings.config == ScaPreConfig(p=5.0, ased=True) and settings.edit == "values only"
    assert settings.to_dict() == {**ScaPreConfig(p=5.0, ased=True).to_dict(), "edit": "values only"}
    assert EraseSettings.from_dict({}, base=preset_config("artists")).config == preset_config("artists")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['pp'\]"):
        EraseSettings.from_dict({"pp": 1})
    with pytest.raises(ValueError, match="edit must be one of"):
        EraseSettings.from_dict({"edit": "both"})
    with pytest.raises(ValueError, match="lam"):
        EraseSettings.from_dict({"lam": 0})
