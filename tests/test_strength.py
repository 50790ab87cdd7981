"""The strength dial (``ScaPreConfig.strength``, ``preset_config(name, strength)``): 0 is no edit, 1 the published
edit bit for bit, between them a share of its change, above 1 the method itself goes further (erase scale up, what
pulls the change back and Informax's p down, the erased prompts aimed past their guides by ``overshoot`` per unit
above 1, their guides moved towards look-alikes by ``look_alike_pull`` per unit where look-alikes were found)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from comfyui_scapre.scapre_core import ConceptSet, ScaPreConfig, erase, erase_iter
from comfyui_scapre.scapre_core.focus import toward_look_alikes
from comfyui_scapre.scapre_core.presets import PRESET_NAMES, PRESETS, preset_config
from comfyui_scapre.scapre_core.report import ReportBuilder
from helpers import clip_like_concepts, random_concepts, random_weights

#: Every preset's float64 edit of the inputs below as the code computed it before the strength dial existed
#: (main at 7d061a6): (Frobenius norm of the change, its inner product with a fixed random matrix).
BEFORE_STRENGTH = {
    "custom": (6.4551617712468605, -10.265220714722536),
    "few-objects": (7.264941607152789, -11.565486298288016),
    "many-objects": (5.9968153189503015, -6.967875604139373),
    "artists": (5.917399368227541, -6.472959947008785),
    "explicit": (10.373089218762985, -19.905992000933182),
    "uce": (12.906871017962528, -24.06231861060454),
}
PAPER_PRESETS = tuple(BEFORE_STRENGTH)


def _inputs():
    cs, _ = random_concepts(m=2, dim=24, length=12, seed=3)
    w = random_weights({"a.to_k": (40, 24), "b.to_v": (56, 24)}, seed=4, dtype=torch.float64)
    probe = torch.Generator().manual_seed(9)
    proj = {k: torch.randn(v.shape, generator=probe, dtype=torch.float64) for k, v in w.items()}
    return cs, w, proj


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_strength_one_is_the_edit_from_before_the_dial(name):
    cs, w, proj = _inputs()
    out = erase(w, cs, preset_config(name, 1.0, seed=5).replace(precision="float64"))
    norm = sum(float((out[k] - w[k]).pow(2).sum()) for k in w) ** 0.5
    dot = sum(float(((out[k] - w[k]) * proj[k]).sum()) for k in w)
    assert (norm, dot) == pytest.approx(BEFORE_STRENGTH[name], rel=1e-9)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_strength_one_is_the_published_config_and_its_bits(name):
    published = PRESETS[name].config
    assert preset_config(name, 1.0, seed=3) == published.replace(seed=3)
    assert preset_config(name, 1, seed=3).strength == 1.0
    cs = clip_like_concepts(3, 48, seed=1)
    w = random_weights({"k": (64, 48), "v": (32, 48)}, seed=2)
    unscaled = erase(w, cs, published.replace(seed=3))
    dialled = erase(w, cs, preset_config(name, 1.0, seed=3))
    assert all(torch.equal(unscaled[k], dialled[k]) for k in w)


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_strength_zero_returns_the_weights_unchanged(name, dtype):
    cs, _ = random_concepts(m=2, dim=16, seed=1)
    w = random_weights({"k": (24, 16), "v": (8, 16)}, seed=2, dtype=dtype)
    out = erase(w, cs, preset_config(name, 0.0))
    assert all(torch.equal(out[k], w[k]) and out[k] is not w[k] for k in w)
    changes = dict(erase_iter(w, cs, preset_config(name, 0.0), changes=True))
    assert all(not bool(changes[k].any()) and changes[k].shape == w[k].shape for k in w)


def test_strength_zero_reports_progress_and_can_cancel():
    cs, _ = random_concepts(m=1, dim=16, seed=1)
    w = random_weights({"a": (8, 16), "b": (8, 16), "c": (8, 16)}, seed=2)
    seen = []

    def step(done, total):
        seen.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        erase(w, cs, ScaPreConfig(strength=0.0), progress=step)
    assert seen == [(1, 3), (2, 3)]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_strength_below_one_multiplies_the_change(name):
    cs, w, _ = _inputs()
    one = erase(w, cs, preset_config(name, 1.0).replace(precision="float64"))
    for s in (0.25, 0.5, 0.9):
        out = erase(w, cs, preset_config(name, s).replace(precision="float64"))
        for k in w:
            assert torch.allclose(out[k] - w[k], s * (one[k] - w[k]), rtol=1e-12, atol=1e-12), (name, s, k)


def _further(config: ScaPreConfig, s: float) -> ScaPreConfig:
    """What strength ``s`` > 1 means, written as the published fields: erase scale times ``s``, what pulls back
    (a constant mu, the small variant's rollback 1 - alpha_min) and Informax's exponent p divided by ``s``."""
    return config.replace(erase_scale=config.erase_scale * s, mu=config.mu / s,
                          alpha_min=1.0 - (1.0 - config.alpha_min) / s, p=config.p / s)


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("s", [1.5, 4.0])
def test_strength_above_one_raises_the_erase_scale_and_lowers_the_pull_back(name, s):
    cs, w, _ = _inputs()
    config = preset_config(name, 1.0).replace(precision="float64", mu_from_entropy=False, mu=0.2, overshoot=0.0)
    out = erase(w, cs, config.replace(strength=s))
    same = erase(w, cs, _further(config, s))
    # identical arithmetic except the small variant's rollback, written differently (1 - (1 - keep) / s), and
    # Informax's weights, sigmoid^p then ^(1/s) against sigmoid^(p/s)
    exact = config.variant != "small" and not config.needs_row_weights
    for k in w:
        if exact:
            assert torch.equal(out[k], same[k]), (name, k)
        else:
            assert torch.allclose(out[k], same[k], rtol=1e-12, atol=1e-12), (name, k)
    assert not all(torch.allclose(out[k] - w[k], s * (erase(w, cs, config)[k] - w[k])) for k in w)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_without_overshoot_strength_stops_at_the_guide(name):
    """With ``overshoot`` 0, large strengths approach a limit (the erased prompts mapped onto their guides) instead
    of growing without bound as a multiplied change would."""
    cs, w, _ = _inputs()

    def change(s):
        out = erase(w, cs, preset_config(name, s, seed=1).replace(precision="float64", overshoot=0.0))
        return torch.cat([(out[k] - w[k]).flatten() for k in w])

    one, big, bigger = change(1.0), change(1e4), change(1e5)
    assert float((bigger - big).norm()) < 1e-2 * float(big.norm())
    assert float(big.norm()) < 10 * float(one.norm())


def _past_guides(cs, o: float):
    """``cs`` with each erase prompt's guide moved past it by ``o``: ``Y_j + o (Y_j - X_j)``, one guide per prompt."""
    moved = tuple((1 + o) * y - o * x for x, y in zip(cs.contexts, cs.targets, strict=True))
    return dataclasses.replace(cs, guides=moved, guide_index=tuple(range(len(moved))))


@pytest.mark.parametrize("name", [n for n in PRESET_NAMES if n != "precise"])
@pytest.mark.parametrize("path", ["span", "eigen", "direct"])
@pytest.mark.parametrize("s", [1.0, 2.5])
def test_strength_above_one_aims_past_the_guide(monkeypatch, name, path, s):
    """Above strength 1 the edit is the one whose guides lie ``overshoot * (strength - 1)`` past the published
    ones, on every route of the solve (the data term alone reads the guides); at 1 and with overshoot 0 nothing
    moves."""
    from comfyui_scapre.scapre_core import solve

    monkeypatch.setattr(solve, "DIRECT_MIN_DIM", 24)
    monkeypatch.setattr(solve, "route", lambda *_: path)
    cs, w, _ = _inputs()
    config = preset_config(name, s, seed=2).replace(precision="float64", overshoot=0.4)
    assert config.past_guide == pytest.approx(0.4 * (s - 1))
    assert config.replace(strength=10.0).past_guide == pytest.approx(0.4 * 4)  # grows up to strength 5 only
    m = len(cs.contexts)
    assert m == 2 and config.past_guide_for(m) == pytest.approx(config.past_guide / 2)  # shared by the prompts
    out = erase(w, cs, config)
    same = erase(w, _past_guides(cs, config.past_guide / m), config.replace(overshoot=0.0))
    for k in w:  # the moved guides are rounded to the float32 of the inputs; the edit moves them in float64
        assert float((out[k] - same[k]).norm()) <= 1e-6 * float((out[k] - w[k]).norm()), (name, path, k)
    if s > 1:
        stopped = erase(w, cs, config.replace(overshoot=0.0))
        assert not all(torch.allclose(out[k], stopped[k], rtol=1e-6) for k in w)


def test_the_overshoot_is_shared_among_the_erased_prompts():
    """Each of ``m`` erased prompts is aimed ``past_guide / m`` past its guide, not ``past_guide`` (the full
    overshoot for each of several concepts pushes the rows they all share that many times as far): the edit of two
    prompts is the one whose guides lie half the overshoot past, and differs from the one with the full overshoot
    each; a single prompt gets it all."""
    cs, w, _ = _inputs()
    config = preset_config("uce", 3.0).replace(precision="float64", overshoot=0.5)
    out = erase(w, cs, config)
    half = erase(w, _past_guides(cs, config.past_guide / 2), config.replace(overshoot=0.0))
    full = erase(w, _past_guides(cs, config.past_guide), config.replace(overshoot=0.0))
    for k in w:
        assert float((out[k] - half[k]).norm()) <= 1e-6 * float((out[k] - w[k]).norm()), k
        assert float((out[k] - full[k]).norm()) > 1e-3 * float((out[k] - w[k]).norm()), k
    one, _ = random_concepts(m=1, dim=24, length=12, seed=3)
    alone = erase(w, one, config)
    moved = erase(w, _past_guides(one, config.past_guide), config.replace(overshoot=0.0))
    for k in w:
        assert float((alone[k] - moved[k]).norm()) <= 1e-6 * float((alone[k] - w[k]).norm()), k
    assert config.past_guide_for(1) == config.past_guide
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="prompts"):
            config.past_guide_for(bad)


def test_overshoot_is_not_read_by_precise_and_is_refused_below_zero():
    cs, w, _ = _inputs()
    a = erase(w, cs, preset_config("precise", 3.0).replace(precision="float64"))
    b = erase(w, cs, preset_config("precise", 3.0).replace(precision="float64", overshoot=0.0))
    assert all(torch.equal(a[k], b[k]) for k in w)
    with pytest.raises(ValueError, match="overshoot"):
        ScaPreConfig(overshoot=-0.1)


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("prompts", [1, 3])
def test_efficacy_grows_with_strength(name, prompts):
    """The report's efficacy is non-decreasing in strength, from 0 at strength 0: every prompt's when one prompt is
    erased, their mean when several are (above 1 the joint solve may trade a little between prompts)."""
    cs = clip_like_concepts(prompts, 48, seed=4)
    w = random_weights({"k": (64, 48), "v": (32, 48)}, seed=5)
    last = None
    for s in (0.0, 0.5, 1.0, 1.5, 2.0, 4.0, 10.0):
        builder = ReportBuilder({"erase": cs}, tokens="full")  # every token the edit reads
        for key, edited in erase(w, cs, preset_config(name, s)).items():
            builder.add(key, w[key], edited)
        eff = torch.tensor([p.efficacy for p in builder.build().group("erase")])
        if prompts > 1:
            eff = eff.mean(dim=0, keepdim=True)
        if last is None:
            assert bool((eff == 0).all())
        else:
            assert bool((eff >= last - 1e-5).all()), (name, s, eff, last)
        last = eff
    assert bool((last > 0).all())


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "1", True])
def test_bad_strength_field_is_refused(bad):
    with pytest.raises(ValueError, match="strength"):
        ScaPreConfig(strength=bad)


# --- beyond the paper: above strength 1 the guides move towards the look-alikes, Informax's p is divided -------
def _guided_pair(m: int = 3, preserve: int = 2):
    """The same erase prompts guided to the empty prompt (as published) and to "look-alikes" whose last word sits
    later (so their aligned contexts are shorter), with preserve prompts on the published side."""
    _, raw = random_concepts(m=m, dim=24, length=12, seed=7, guided=True, preserve=preserve)
    empty = raw["empty"]
    published = ConceptSet.from_embeddings(raw["erase"], raw["erase_last"], [empty] * m, [0] * m, empty,
                                            raw["preserve"], raw["preserve_last"])
    later = [f + 1 + j % 2 for j, f in enumerate(raw["erase_last"])]  # some look-alikes end their words later
    look = ConceptSet.from_embeddings(raw["erase"], raw["erase_last"], raw["guide"], later, empty)
    return published, look


def test_toward_look_alikes_moves_each_target_and_keeps_the_rest():
    published, look = _guided_pair()
    assert toward_look_alikes(published, look, 0.0) is published
    assert any(len(y) > len(z) for y, z in zip(published.targets, look.targets, strict=True))  # the prefix rule runs
    for share in (0.25, 1.0):
        moved = toward_look_alikes(published, look, share)
        assert moved.contexts == published.contexts and moved.preserve_contexts == published.preserve_contexts
        for y, z, t in zip(published.targets, look.targets, moved.targets, strict=True):
            n = len(z)
            torch.testing.assert_close(t[:n], y[:n] + share * (z[:n] - y[:n]), rtol=0, atol=1e-6)
            assert torch.equal(t[n:], y[n:])  # rows the look-alike does not reach keep the published target
    with pytest.raises(ValueError, match="between 0 and 1"):
        toward_look_alikes(published, look, 1.5)
    other, _ = _guided_pair(m=2)
    with pytest.raises(ValueError, match="other erase prompts"):
        toward_look_alikes(published, other, 0.5)


@pytest.mark.parametrize("name", ["uce", "custom", "few-objects"])
def test_all_the_way_to_the_look_alikes_is_the_edit_guided_to_them(name):
    """At share 1 the edit is the one whose guides are the look-alikes (the rows past a look-alike's end keep the
    published target, so the look-alike set is given those rows too)."""
    published, look = _guided_pair()
    w = random_weights({"k": (40, 24), "v": (30, 24)}, seed=5, dtype=torch.float64)
    moved = toward_look_alikes(published, look, 1.0)
    by_hand = dataclasses.replace(published, guides=tuple(
        torch.cat([z, y[len(z):]]) for y, z in zip(published.targets, look.targets, strict=True)),
        guide_index=tuple(range(published.num_concepts)))
    config = preset_config(name, 3.0, seed=1).replace(precision="float64")
    a, b = erase(w, moved, config), erase(w, by_hand, config)
    for k in w:
        assert float((a[k] - b[k]).norm()) <= 1e-6 * float((a[k] - w[k]).norm())
    assert float((a["k"] - erase(w, published, config)["k"]).norm()) > 1e-3 * float((a["k"] - w["k"]).norm())


def test_the_share_towards_the_look_alikes_grows_with_strength():
    assert preset_config("uce", 1.0).to_look_alike == 0.0
    assert preset_config("custom", 0.5).to_look_alike == 0.0
    assert preset_config("custom", 2.0).to_look_alike == pytest.approx(0.5)
    assert preset_config("artists", 3.0).to_look_alike == 1.0
    assert preset_config("artists", 10.0).to_look_alike == 1.0
    assert preset_config("uce", 2.0).replace(look_alike_pull=0.0).to_look_alike == 0.0
    assert preset_config("precise", 3.0).to_look_alike == 0.0  # its guide already is the look-alike
    with pytest.raises(ValueError, match="look_alike_pull"):
        ScaPreConfig(look_alike_pull=-1.0)


def test_above_one_informax_exponent_is_divided_by_the_reach():
    """The row weights the data term reads are ``m^(1/reach)``: ``p / reach`` for Informax's ``sigmoid^p``; at 1
    they are Informax's exactly, and uce reads none."""
    from comfyui_scapre.scapre_core.erase import _row_weights
    from comfyui_scapre.scapre_core.informax import RowStats

    weights = torch.rand(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 8
    stats = RowStats(row_weights=weights, entropy=None)
    like = torch.zeros(6, 3, dtype=torch.float64)
    assert torch.equal(_row_weights(stats, preset_config("artists", 1.0), 6, 2, like), weights)
    torch.testing.assert_close(_row_weights(stats, preset_config("artists", 4.0), 6, 2, like), weights ** 0.25)
    assert torch.equal(_row_weights(stats, preset_config("uce", 4.0), 6, 2, like), torch.ones(6, 2, dtype=like.dtype))
