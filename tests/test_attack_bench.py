"""The miniworld attack benchmark's bookkeeping without a world: what a part costs, the estimate, pooling over
worlds, parts saved and reused, merging runs (``benchmarks/miniworld/attack_bench.py``; its attacks are tested in
``tests/test_attacks_miniworld.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the miniworld benchmark package

from miniworld import attack_bench as ab


def test_every_preset_is_measured_and_a_part_records_its_config():
    from scapre_core.presets import PRESETS

    assert set(ab.METHODS) == set(PRESETS) and "uce" in ab.METHODS
    s = ab.Settings()
    record = ab.unit_record("k", "1 colour", "uce", s)
    assert record["config"]["variant"] == "uce" and record["settings"]["search_steps"] == s.search_steps
    assert ab.unit_record("k", "1 colour", ab.UNEDITED, s)["config"] is None
    assert record != ab.unit_record("k", "1 colour", "custom", s)
    assert record != ab.unit_record("k", "1 colour", "uce", ab.Settings(search_steps=s.search_steps + 1))
    json.dumps(record)  # saved as JSON


def test_part_costs_follow_the_settings():
    s = ab.Settings()
    one, five = ab.unit_ops("1 colour", "uce", s), ab.unit_ops("5 mixed", "uce", s)
    soft_per_concept = sum(1 for a in s.attacks if a in ab.SOFT_ATTACKS) * s.search_steps
    assert one.search_conditioning + one.search_input == soft_per_concept
    assert five.search_conditioning + five.search_input == 5 * soft_per_concept
    assert one.search_input == s.search_steps  # soft input is the one search through the text encoder
    unedited = ab.unit_ops("1 colour", ab.UNEDITED, s)
    assert unedited.pictures < one.pictures  # the unedited model's plain pictures are the original's
    assert unedited.search_conditioning == one.search_conditioning
    doubled = ab.unit_ops("1 colour", "uce", ab.Settings(images=2 * s.images))
    assert doubled.pictures == 2 * one.pictures and doubled.calls == one.calls
    fewer = ab.unit_ops("1 colour", "uce", ab.Settings(attacks=("plain", "vector x4")))
    assert fewer.search_conditioning == fewer.search_input == 0 and 0 < fewer.pictures < one.pictures
    assert ab.set_ops("1 colour", s).pictures > 0 and ab.set_ops("1 colour", s).search_conditioning == 0


def test_estimate_adds_parts_and_schedules_worlds_over_jobs():
    s = ab.Settings(search_steps=10)
    rates = ab.Rates(step=0.01, picture_step=0.001, search_conditioning=0.05, search_input=0.1)
    units = [("1 colour", ab.UNEDITED), ("1 colour", "uce"), ("5 mixed", "uce")]
    todo = {w: list(units) for w in ("a", "b", "c", "d")}
    est = ab.estimate(todo, s, rates, jobs=2)
    one_world = (sum(ab.unit_ops(*u, s).seconds(rates) for u in units)
                 + ab.set_ops("1 colour", s).seconds(rates) + ab.set_ops("5 mixed", s).seconds(rates))
    assert est["parts"] == 12 and est["per_world"]["a"] == pytest.approx(one_world)
    assert est["cpu_seconds"] == pytest.approx(4 * one_world)
    assert est["wall_seconds"] == pytest.approx(2 * one_world)
    assert ab.schedule({"a": 5.0, "b": 3.0, "c": 2.0}, 2) == 5.0
    assert ab.schedule({"a": 5.0, "b": 3.0, "c": 2.0}, 1) == 10.0
    assert "12 part(s)" in ab.describe(est)


def _entry(hits: int, n: int, forget: tuple[int, int]) -> dict:
    from miniworld.bench import _finish

    counts = {"forget": {"k": forget[0], "n": forget[1]}, "keep_look": {"k": 1, "n": 2},
              "keep_other": {"k": 2, "n": 2}, "quality": {"sum": 1.0, "sumsq": 1.0, "n": 2}}
    c = ab.Counts(hits, n, ssim_agree=n, ssim_n=n, ssim_hits=hits)
    return {"retention": _finish(counts), "attacks": {"plain": ab.Counts(forget[0], forget[1]).summary(),
                                                      "soft": c.summary()}}


def test_pooled_counts_every_world_s_pictures():
    results = {"w1": {"1 colour": {"uce": _entry(3, 10, (1, 4))}}, "w2": {"1 colour": {"uce": _entry(7, 10, (3, 4))}}}
    pooled = ab.pooled(results)["1 colour"]["uce"]
    assert (pooled["attacks"]["soft"]["hits"], pooled["attacks"]["soft"]["n"]) == (10, 20)
    assert pooled["attacks"]["soft"]["rate"] == 0.5 and pooled["attacks"]["soft"]["lo"] < 0.5
    assert (pooled["retention"]["forget"]["k"], pooled["retention"]["forget"]["n"]) == (4, 8)
    assert pooled["worlds"] == 2
    text = ab.table({"pooled": ab.pooled(results)})
    assert "| uce | 0.50 [" in text and "keep look-alike" in text


def test_parts_are_reused_only_when_measured_alike(tmp_path):
    s = ab.Settings()
    record = ab.unit_record("k", "1 colour", "uce", s)
    path = ab.part_path(tmp_path, "clip64", "1 colour", "uce")
    assert ab.load_part(path, record) is None
    ab.save_part(path, record, _entry(1, 2, (1, 2)))
    assert ab.load_part(path, record)["attacks"]["soft"]["hits"] == 1
    assert ab.load_part(path, ab.unit_record("k", "1 colour", "uce", ab.Settings(seeds=(0,)))) is None
    assert ab.load_part(path, ab.unit_record("other world", "1 colour", "uce", s)) is None
    assert not list(path.parent.glob("*.tmp"))
    found = ab.collect(tmp_path, {"clip64": "k"}, ["1 colour", "5 mixed"], ["uce", "custom"], s)
    assert list(found) == ["clip64"] and list(found["clip64"]["1 colour"]) == ["uce"]


def test_merge_joins_runs_and_refuses_mixed_settings(tmp_path):
    s = ab.Settings()
    for folder, world in (("a", "clip64"), ("b", "blind64")):
        for method in (ab.UNEDITED, "uce"):
            ab.save_part(ab.part_path(tmp_path / folder, world, "1 colour", method),
                         ab.unit_record(world, "1 colour", method, s), _entry(2, 4, (1, 4)))
    (tmp_path / "m").mkdir()
    ab.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    report = json.loads((tmp_path / "m" / "results.json").read_text())
    assert set(report["results"]) == {"clip64", "blind64"}
    assert report["pooled"]["1 colour"]["uce"]["attacks"]["soft"]["n"] == 8
    assert (tmp_path / "m" / "table.md").read_text().count("| uce |") == 3  # two worlds and the pool
    ab.save_part(ab.part_path(tmp_path / "c", "clip128", "1 colour", "uce"),
                 ab.unit_record("clip128", "1 colour", "uce", ab.Settings(images=1)), _entry(1, 2, (1, 2)))
    with pytest.raises(SystemExit, match="different settings"):
        ab.merge([tmp_path / "a", tmp_path / "c"], tmp_path / "m")
