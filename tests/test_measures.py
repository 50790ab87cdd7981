"""The image measures shared by the compare node and the command line (scapre_core.measures)."""

from __future__ import annotations

import math

import pytest
import torch
from comfyui_scapre.scapre_core.evaluation import measures
from comfyui_scapre.scapre_core.prompts import TEMPLATES, normalize


def _images(n=3, h=32, w=40, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_identical_images_have_zero_change():
    a = _images()
    change = measures.image_change(a, a.clone())
    assert change.shape == (3,) and torch.equal(change, torch.zeros(3))


def test_change_grows_with_the_edit_and_stays_in_range():
    a = _images(h=64, w=64)
    b = _images(h=64, w=64, seed=1)
    small = measures.image_change(a, (a + 0.02 * (b - a)).clamp(0, 1))
    large = measures.image_change(a, b)
    assert (small > 0).all() and (small < large).all()
    assert (large <= 1).all() and (large > 0.8).all()  # independent noise is structurally unrelated
    inverted = measures.image_change(a, 1 - a)
    assert (inverted == 1).all()  # anti-correlated: clipped to 1


def test_only_the_changed_pair_changes_and_tiny_images_work():
    a = _images(h=8, w=6)
    b = a.clone()
    b[1] = 1 - b[1]
    change = measures.image_change(a, b)
    assert change[0] == 0 and change[2] == 0 and change[1] > 0.5
    with pytest.raises(ValueError, match="one shape"):
        measures.image_change(a, a[:, :4])


def test_change_is_deterministic():
    a, b = _images(seed=3), _images(seed=4)
    assert torch.equal(measures.image_change(a, b), measures.image_change(a.clone(), b.clone()))


def test_embedding_cosine():
    a = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    cos = measures.embedding_cosine(a, a * 3)
    assert torch.allclose(cos, torch.ones(4))
    assert torch.allclose(measures.embedding_cosine(a, -a), -torch.ones(4))
    b = torch.zeros(4, 16)
    b[:, 0], a2 = 1.0, torch.zeros(4, 16)
    a2[:, 1] = 1.0
    assert torch.allclose(measures.embedding_cosine(a2, b), torch.zeros(4))


def test_evaluation_prompts_differ_from_the_erase_templates():
    for kind, templates in measures.EVAL_TEMPLATES.items():
        erase = {normalize(t.replace("{c}", "cat")) for t in (*TEMPLATES.get(kind, ()), "{c}")}
        got = measures.evaluation_prompts("cat", kind)
        assert len(got) == len(templates) >= 2 and all("cat" in p for p in got)
        assert not {normalize(p) for p in got} & erase
    assert measures.evaluation_prompts("Van Gogh", "style")[0] == "a painting in the style of Van Gogh"


def test_compare_prompts_kinds_order_and_duplicates():
    items = measures.compare_prompts(["cat"], ["dog"], "object", erased_prompts="a cat on a sofa\n\nan image of cat",
                                     kept_prompts="a red car\nAn image of  DOG")
    assert [(i.prompt, i.kind, i.concept) for i in items] == [
        ("an image of cat", "erased", "cat"), ("cat in a scene", "erased", "cat"),
        ("a cat on a sofa", "erased", ""),
        ("an image of dog", "kept", "dog"), ("dog in a scene", "kept", "dog"), ("a red car", "kept", "")]
    assert measures.compare_prompts() == []


def test_summarize():
    records = [
        {"prompt": "a", "kind": "erased", "concept": "cat", "change": 0.8, "clip_cosine": 0.5},
        {"prompt": "b", "kind": "erased", "concept": "cat", "change": 0.6, "clip_cosine": 0.7},
        {"prompt": "c", "kind": "kept", "concept": "dog", "change": 0.1},
        {"prompt": "d", "kind": "kept", "concept": "", "change": 0.3},
    ]
    s = measures.summarize(records)
    assert s["erasure"] == pytest.approx(0.7) and s["retention"] == pytest.approx(0.8)
    assert s["gap"] == pytest.approx(0.5)
    assert s["per_kind"]["erased"] == {"prompts": 2, "change": pytest.approx(0.7), "clip_cosine": pytest.approx(0.6)}
    assert s["per_concept"]["dog"]["kept"]["change"] == pytest.approx(0.1)
    assert s["per_concept"][""]["kept"]["prompts"] == 1
    only_kept = measures.summarize(records[2:])
    assert only_kept["erasure"] is None and only_kept["gap"] is None and not math.isnan(only_kept["retention"])
    with pytest.raises(ValueError, match="kind"):
        measures.summarize([{"prompt": "x", "kind": "probe", "change": 0.0}])
