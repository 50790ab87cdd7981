"""The calibration of the report against pictures (benchmarks/miniworld/calibrate.py): its bookkeeping, on made-up
points (nothing is trained or drawn here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the miniworld benchmark package

from miniworld.calibrate import parse_method, separation, thresholds, verdict_table, without_concept
from miniworld.evaluate import Ask


def _point(efficacy: float, forget: float, counts: bool = True) -> dict:
    return {"efficacy": efficacy, "efficacy_context": 1.0 - efficacy, "forget": forget, "counts": counts}


def test_thresholds_find_where_every_point_agrees():
    points = [_point(0.2, 1.0), _point(0.3, 0.9), _point(0.5, 0.3), _point(0.8, 0.05), _point(0.9, 0.0),
              _point(0.95, 0.8, counts=False)]  # a concept the unedited model does not draw: left out
    t = thresholds(points)
    assert (t["forgotten_at"], t["drawn_below"]) == (0.8, 0.5)
    assert (t["points"], t["gone"], t["drawn"]) == (5, 2, 2)
    worse = thresholds([*points, _point(0.99, 0.6)])  # the most effective edit left the concept: no threshold
    assert worse["forgotten_at"] is None
    other = thresholds(points, "efficacy_context")  # the other predictor reads its own key
    assert other["forgotten_at"] is None and other["drawn_below"] == pytest.approx(0.1)


def test_separation_counts_both_sides_of_each_threshold():
    rows = {r["threshold"]: r for r in separation([_point(0.45, 1.0), _point(0.65, 0.0), _point(0.92, 0.3)],
                                                  "efficacy")}
    assert (rows[0.5]["above"], rows[0.5]["above_gone"], rows[0.5]["above_drawn"]) == (2, 1, 0)
    assert (rows[0.5]["below"], rows[0.5]["below_drawn"], rows[0.5]["below_gone"]) == (1, 1, 0)
    assert rows[0.99]["above"] == 0 and rows[0.99]["below"] == 3


def test_context_guides_drop_the_concept_words_only():
    assert without_concept(Ask("red", "square", "striped", 3), "red") == "a photo of a striped square"
    assert without_concept(Ask("green", "triangle", "solid", 1), "green triangle") == ""
    assert without_concept(Ask("blue", "circle", "dotted", 2), "dotted") == "a picture of a blue circle"


def test_methods_are_written_preset_and_strength():
    m = parse_method("precise x1.5")
    assert (m.preset, m.strength, m.label) == ("precise", 1.5, "precise x1.5")
    with pytest.raises(ValueError, match="custom x1"):
        parse_method("custom")


def test_verdict_table_counts_what_the_shipped_verdict_said_against_the_pictures():
    from comfyui_scapre.scapre_core.report import DRAWN_BELOW, FORGOTTEN_AT

    hi, mid, lo = FORGOTTEN_AT + 0.01, (FORGOTTEN_AT + DRAWN_BELOW) / 2, DRAWN_BELOW - 0.01
    table = verdict_table({"w1": [_point(hi, 0.0), _point(hi, 0.75), _point(mid, 0.3), _point(lo, 1.0)],
                           "w2": [_point(hi, 0.05), _point(lo, 0.0, counts=False)]})
    assert table["w1"]["likely forgotten"] == {"points": 2, "gone": 1, "between": 0, "drawn": 1}
    assert table["w1"]["unsure"] == {"points": 1, "gone": 0, "between": 1, "drawn": 0}
    assert table["w1"]["likely still drawn"] == {"points": 1, "gone": 0, "between": 0, "drawn": 1}
    assert table["w2"]["likely still drawn"]["points"] == 0  # a concept the unedited world does not draw
    assert table["all worlds"]["likely forgotten"] == {"points": 3, "gone": 2, "between": 0, "drawn": 1}
