"""The registry of miniature worlds and the end-token probe (benchmarks/miniworld): fast, nothing is trained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the miniworld benchmark package

from miniworld.bench import UNNAMED, concept_table, merge, pool, unnamed_prompt
from miniworld.evaluate import Ask
from miniworld.model import TEXT_ENCODER_KINDS, ModelConfig, build_text_encoder
from miniworld.probe import end_token_share
from miniworld.train import TrainConfig
from miniworld.world import COLOUR_NAMES, tokenize
from miniworld.worlds import WORLDS, world_spec


def test_registry_spans_what_matters():
    specs = list(WORLDS.values())
    assert len(specs) >= 3
    assert len({s.train.key() for s in specs}) == len(specs), "two worlds would share a cache file"
    assert {64, 128} <= {s.text_dim for s in specs}
    assert len({s.train.seed for s in specs}) >= 2
    assert set(TEXT_ENCODER_KINDS) <= {s.text_encoder for s in specs}
    assert all(s.name == name and s.about for name, s in WORLDS.items())


def test_unknown_world_and_kind_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="registered worlds"):
        world_spec("nope")
    with pytest.raises(ValueError, match="text_encoder must be one of"):
        ModelConfig(text_encoder="bidirectional-typo")


def test_new_model_fields_keep_old_cache_keys():
    """Fields added after the first world change the key only when they differ from their defaults."""
    cfg = TrainConfig()
    assert "text_encoder" not in cfg.model.key_dict() and "denoiser" not in cfg.model.key_dict()
    blind = TrainConfig(model=ModelConfig(text_encoder="causal-blind-end"))
    assert blind.key() != cfg.key()
    assert ModelConfig.from_dict(blind.model.to_dict()) == blind.model


@torch.no_grad()
def test_blind_end_tokens_carry_no_word_and_causal_ones_do():
    torch.manual_seed(0)
    ids = torch.stack([tokenize(c)[0] for c in COLOUR_NAMES])
    shares = {}
    for kind in ("causal", "causal-blind-end"):  # CLIP's layout (the T5-like kinds: test_miniworld_dit.py)
        encoder = build_text_encoder(ModelConfig(text_encoder=kind)).eval()
        shares[kind] = end_token_share(encoder(ids), last=1)
    assert bool((shares["causal-blind-end"] == 0).all()), shares
    assert bool((shares["causal"] > 0.01).all()), shares


def test_end_token_share_reads_the_specific_part():
    """Two words whose end tokens carry half of what their word tokens carry, plus a part shared by both."""
    d = 4
    shared = torch.randn(1, 5, d, dtype=torch.float64)
    word = torch.zeros(2, 5, d, dtype=torch.float64)
    word[0, 1, 0], word[1, 1, 1] = 2.0, 2.0
    word[0, 2:, 0], word[1, 2:, 1] = 1.0, 1.0
    share = end_token_share(shared + word, last=1)
    assert torch.allclose(share, torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="two sibling"):
        end_token_share(word[:1], last=1)


def test_pool_adds_counts():
    one = {"forget": {"k": 1, "n": 4}, "keep_look": {"k": 2, "n": 2}, "keep_other": {"k": 0, "n": 0},
           "quality": {"sum": 1.0, "sumsq": 0.5, "n": 2}}
    two = {"forget": {"k": 3, "n": 4}, "keep_look": {"k": 0, "n": 2}, "keep_other": {"k": 1, "n": 1},
           "quality": {"sum": 2.0, "sumsq": 2.0, "n": 2}}
    both = pool([one, two])
    assert both["forget"]["rate"] == 0.5 and both["forget"]["n"] == 8
    assert both["keep_look"]["rate"] == 0.5 and both["keep_other"]["rate"] == 1.0
    assert both["quality"]["mean"] == 0.75 and both["quality"]["n"] == 4
    assert 0 < both["forget"]["lo"] < 0.5 < both["forget"]["hi"] < 1


def test_pool_adds_each_concepts_forget_and_the_table_shows_them():
    def summary(red: tuple[int, int], pair: tuple[int, int]) -> dict:
        by = {"red": {"k": red[0], "n": red[1]}, "green triangle": {"k": pair[0], "n": pair[1]}}
        return {"forget": {"k": red[0] + pair[0], "n": red[1] + pair[1]}, "keep_look": {"k": 1, "n": 1},
                "keep_other": {"k": 1, "n": 1}, "quality": {"sum": 1.0, "sumsq": 1.0, "n": 1},
                "forget_by_concept": by}
    a, b = pool([summary((0, 4), (4, 4))]), pool([summary((2, 4), (3, 4))])
    both = pool([a, b])
    assert both["forget_by_concept"]["red"] == {"k": 2, "n": 8, "rate": 0.25}
    assert both["forget_by_concept"]["green triangle"]["rate"] == 0.875
    text = concept_table({"w1": {"5": {"m": a}}, "w2": {"5": {"m": b}}}, {"5": {"m": both}}, "5")
    assert "| method | red | green triangle |" in text
    assert "| m | 0.25 (0.00 / 0.50) | 0.88 (1.00 / 0.75) |" in text
    # one concept, or summaries without the per-concept counts (older runs): no table, and pooling still works
    one = {k: v for k, v in summary((1, 2), (0, 0)).items() if k != "forget_by_concept"}
    assert "forget_by_concept" not in pool([one, a])
    assert concept_table({"w1": {"5": {"m": pool([one])}}}, {"5": {"m": pool([one])}}, "5") is None


def test_the_floor_row_draws_each_erased_prompt_without_the_concepts_words():
    assert UNNAMED == "concept unnamed"
    assert unnamed_prompt(Ask("red", "circle", "solid", 1), "circle") == "a red"
    assert unnamed_prompt(Ask("red", "circle", "striped", 2), "red") == "a picture of a striped circle"
    assert unnamed_prompt(Ask("blue", "square", "striped", 3), "striped") == "a photo of a blue square"
    assert unnamed_prompt(Ask("green", "triangle", "solid", 1), "green triangle") == ""


def _row(forget: int) -> dict:
    rate = {"k": forget, "n": 10, "rate": forget / 10, "lo": 0.0, "hi": 1.0}
    keep = {"k": 10, "n": 10, "rate": 1.0, "lo": 0.7, "hi": 1.0}
    return {"forget": rate, "keep_look": keep, "keep_other": keep,
            "quality": {"sum": 9.0, "sumsq": 8.1, "n": 10, "mean": 0.9, "half": 0.0}}


def _world(train: str) -> dict:
    probe = {k: {"mean": 0.5} for k in ("colour", "shape", "style")}
    return {"train": train, "text_encoder": "t5", "denoiser": "mmdit", "text_dim": 64, "seed": 0, "steps": 10,
            "seconds": 60.0, "accuracy": {}, "meets_targets": None, "probe": probe}


def test_merge_joins_the_methods_of_one_world_and_set_from_several_runs(tmp_path):
    """Runs split by method (same world and set) merge into one table with every method, not the last run's."""
    def run(folder: str, methods: dict) -> Path:
        out = tmp_path / folder
        out.mkdir()
        report = {"judge": {"colour": 1.0}, "settings": {}, "concept_sets": {"1 colour": ["red"]},
                  "preserve": {"1 colour": []}, "worlds": {"w": _world("abc")},
                  "results": {"w": {"1 colour": {"unedited": _row(10), **methods}}}}
        (out / "results.json").write_text(json.dumps(report))
        return out

    a, b = run("a", {"uce": _row(1)}), run("b", {"custom": _row(9)})
    (tmp_path / "merged").mkdir()  # as main() makes --out
    merge([a, b], tmp_path / "merged")
    rows = json.loads((tmp_path / "merged" / "results.json").read_text())["results"]["w"]["1 colour"]
    assert list(rows) == ["unedited", "uce", "custom"]
    assert rows["uce"]["forget"]["k"] == 1 and rows["custom"]["forget"]["k"] == 9
    (tmp_path / "c").mkdir()
    bad = json.loads((a / "results.json").read_text())
    bad["worlds"]["w"]["train"] = "other"
    (tmp_path / "c" / "results.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="differs"):
        merge([a, tmp_path / "c"], tmp_path / "merged2")
