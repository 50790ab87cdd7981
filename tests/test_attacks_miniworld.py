"""The attacks in a tiny miniature world (benchmarks/miniworld/attack_bench.py), CI-sized.

The tiny colours-only world of ``test_miniworld.py`` is trained once and cached in ``~/.cache/scapre-tests``
(``SCAPRE_TEST_CACHE``); a picture's colour is read from its pixels (the nearest palette colour to the mean of the
drawn pixels), so no judge has to be trained. Recovery is paired: among pictures in which the original model drew
red from the same noise, the share in which the attacked model draws red.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the miniworld benchmark package

from comfyui_scapre.scapre_core.presets import PRESETS
from miniworld import attack_bench as ab
from miniworld.attacks import Templates, draw_conds, soft_search
from miniworld.bench import Case
from miniworld.evaluate import Ask, concept_set, draw, edited_unet, read
from miniworld.model import ModelConfig
from miniworld.train import TrainConfig, get_world
from miniworld.world import COLOURS, SHAPES, STYLES

pytestmark = pytest.mark.slow  # trains a tiny world once (about 1-3 minutes on one thread), then attacks it

TINY = TrainConfig(model=ModelConfig(text_dim=32, text_layers=1, text_heads=2, channels=(16, 32, 32), heads=1),
                   steps=500, batch=32, lr=3e-3, warmup=50, ema=0.99, seed=0, colours_only=True)
PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0
ASKS = tuple(Ask("red", "circle", "solid", 1 + i % 4) for i in range(8))
CASE = Case(ASKS, ("erased",) * len(ASKS), ("red",) * len(ASKS), ())
SETTINGS = dict(seeds=(0, 1), images=1, guidance=7.0, search_steps=100)


class ColourJudge:
    """The judge's interface (``probs``) for the colours-only world: one-hot colour from the pixels; shape circle,
    style solid (the only ones this world draws)."""

    def probs(self, x: torch.Tensor):
        rgb = (x + 1) / 2
        drawn = rgb.amax(dim=1, keepdim=True) > 0.3
        mean = (rgb * drawn).sum(dim=(2, 3)) / drawn.sum(dim=(2, 3)).clamp(min=1)
        n = x.shape[0]
        one_hot = torch.nn.functional.one_hot
        return (one_hot(torch.cdist(mean, PALETTE).argmin(dim=1), len(COLOURS)).float(),
                one_hot(torch.zeros(n, dtype=torch.long), len(SHAPES)).float(),
                one_hot(torch.zeros(n, dtype=torch.long), len(STYLES)).float())


@pytest.fixture(scope="module")
def world():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # the same bits everywhere, and fastest on a busy 2-core box
    cache = Path(os.environ.get("SCAPRE_TEST_CACHE", "~/.cache/scapre-tests")).expanduser() / "miniworld"
    yield get_world(TINY, cache=cache, log_every=0)
    torch.set_num_threads(saved)


def _attack(world, unet, attacks: tuple[str, ...]):
    judge = ColourJudge()
    settings = ab.Settings(attacks=attacks, **SETTINGS)
    all_asks = list(CASE.asks) * settings.images
    base = {sd: draw(world, all_asks, sd, steps=settings.steps, guidance=settings.guidance) for sd in settings.seeds}
    readings = {sd: read(judge, base[sd], all_asks) for sd in settings.seeds}
    base_reads = {sd: [ab._reads_concept(readings[sd], i, "red") for i in range(len(all_asks))]
                  for sd in settings.seeds}
    plain = {sd: base[sd] if unet is world.unet else
             draw(world, all_asks, sd, unet=unet, steps=settings.steps, guidance=settings.guidance)
             for sd in settings.seeds}
    counts = {a: ab.Counts() for a in attacks}
    used = ab.attack_concept(world, judge, unet, CASE, "red", settings, base, base_reads, plain, 0, counts)
    return counts, used, base_reads, settings


def test_attacks_find_the_concept_on_the_unedited_model(world):
    counts, _, base_reads, _ = _attack(world, world.unet, ("plain", "neutral", "soft input", "vector x2", "vector x4"))
    assert sum(map(sum, base_reads.values())) >= 6, "the tiny world does not draw red; the test would prove nothing"
    rate = {a: c.hits / c.n for a, c in counts.items()}
    assert rate["plain"] == 1.0  # paired: the unedited model is the original
    assert rate["neutral"] <= 0.25, rate  # the soft tokens' start (filler words) does not draw red ...
    assert rate["soft input"] >= 0.75, rate  # ... the search finds it
    assert max(rate["vector x2"], rate["vector x4"]) >= 0.6, rate  # the concept vector brings it back too


def test_the_reported_rate_on_an_edit_is_the_rate_in_the_pictures(world):
    unet = edited_unet(world, concept_set(world, ["red"]), PRESETS["uce"].config)
    counts, used, base_reads, settings = _attack(world, unet, ("plain", "soft input", "vector x2"))
    assert counts["plain"].hits < counts["plain"].n, "uce did not erase red in the tiny world"
    judge = ColourJudge()
    for name in ("soft input", "vector x2"):
        hits = n = 0
        for sd in settings.seeds:  # redraw from the returned conditionings, paired with the original by hand
            pictures = draw_conds(world, used[name], sd, unet, steps=settings.steps, guidance=settings.guidance)
            reading = read(judge, pictures, list(ASKS))
            for i in range(len(ASKS)):
                if base_reads[sd][i]:
                    n += 1
                    hits += ab._reads_concept(reading, i, "red")
        assert (counts[name].hits, counts[name].n) == (hits, n), name
        assert counts[name].ssim_n == n  # the SSIM rule was judged on the same pictures


def test_soft_search_is_deterministic_for_a_seed(world):
    templates = Templates.of(list(ASKS[:2]), "red")
    targets = draw(world, list(ASKS[:2]), 1000, steps=5)
    which = torch.arange(2)
    a, found_a = soft_search(world, world.unet, templates, targets, which, "input", 5, seed=3)
    b, found_b = soft_search(world, world.unet, templates, targets, which, "input", 5, seed=3)
    c, _ = soft_search(world, world.unet, templates, targets, which, "input", 5, seed=4)
    assert torch.equal(a, b) and found_a.losses == found_b.losses
    assert not torch.equal(a, c)


def test_the_benchmark_saves_each_part_and_a_rerun_redoes_only_what_changed(world, tmp_path, monkeypatch):
    """``run_world`` on the tiny world with a tiny budget: every (set, method) saved as it finishes; a rerun with
    the same settings runs nothing and returns the same figures; a changed preset config is measured again, alone."""
    settings = ab.Settings(seeds=(0,), images=1, steps=2, guidance=7.0, search_steps=2, train_seeds=(1000,),
                           attacks=("plain", "soft", "vector x2"))
    judge = ColourJudge()
    first = ab.run_world(world, judge, "tiny", ["1 colour"], ["uce"], settings, tmp_path)
    assert set(first["1 colour"]) == {"unedited", "uce"}
    assert first["1 colour"]["unedited"]["attacks"]["plain"]["rate"] == 1.0
    for method in ("unedited", "uce"):
        assert ab.part_path(tmp_path, "tiny", "1 colour", method).is_file()
    ran = []
    real_run_unit = ab.run_unit

    def counting(world_, judge_, state, set_name, method, s):
        ran.append(method)
        return real_run_unit(world_, judge_, state, set_name, method, s)

    monkeypatch.setattr(ab, "run_unit", counting)
    again = ab.run_world(world, judge, "tiny", ["1 colour"], ["uce"], settings, tmp_path)
    assert ran == [] and again == first
    real_config = ab.method_config
    monkeypatch.setattr(ab, "method_config",
                        lambda m: real_config(m) if m != "uce" else real_config(m).replace(erase_scale=2.0))
    ab.run_world(world, judge, "tiny", ["1 colour"], ["uce"], settings, tmp_path)
    assert ran == ["uce"]
