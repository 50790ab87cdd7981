"""Report measures on hand-computed cases."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.scapre_core import ScaPreConfig, erase
from comfyui_scapre.scapre_core.metrics import Gap, drift_gaps, efficacy_gaps, relative_change
from helpers import random_concepts, random_weights


def test_an_edit_that_moves_nothing_reports_zero():
    concepts, _ = random_concepts(3, dim=8)
    w0 = random_weights({"w": (6, 8)})["w"]
    assert all(g.efficacy == 0.0 for g in efficacy_gaps(w0, w0, concepts.contexts, concepts.targets))
    assert all(g.drift == 0.0 for g in drift_gaps(w0, w0, concepts.contexts))
    assert relative_change(w0, w0) == 0.0


def test_hand_case():
    w0 = torch.eye(2, dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    # W maps x halfway: W x = (0.5, 0.5); gap before = |x - y| = sqrt2, after = |(0.5,-0.5)| = sqrt2/2
    w = torch.tensor([[0.5, 0.0], [0.5, 1.0]], dtype=torch.float64)
    (g,) = efficacy_gaps(w0, w, [x], [y])
    assert g.efficacy == pytest.approx(0.5)
    (d,) = drift_gaps(w0, w, [x])
    assert d.drift == pytest.approx((0.5**2 + 0.5**2) ** 0.5)
    assert (g + g).efficacy == pytest.approx(0.5)
    assert Gap(0.0, 0.0).efficacy == 1.0 and Gap(0.0, 0.0).drift == 0.0


def test_uce_moves_erased_prompts_to_their_guide_and_a_copy_drifts_the_same():
    concepts, _ = random_concepts(2, dim=32, length=6)
    w0 = random_weights({"w": (20, 32)})["w"].double()
    w = erase({"w": w0}, concepts, ScaPreConfig(variant="uce", erase_scale=1e4, precision="float64"))["w"]
    gaps = efficacy_gaps(w0, w, concepts.contexts, concepts.targets)
    assert all(g.efficacy > 0.99 for g in gaps)
    # a probe identical to an erased prompt drifts exactly as far as that prompt moved
    (probe,) = drift_gaps(w0, w, [concepts.contexts[0]])
    moved = float((w0 @ concepts.targets[0].double().T - w0 @ concepts.contexts[0].double().T).norm())
    assert probe.drift == pytest.approx(moved / float((w0 @ concepts.contexts[0].double().T).norm()), rel=1e-2)
