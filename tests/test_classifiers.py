"""The optional classifier measures (scapre_core.classifiers) on images whose answer is known.

NudeNet and the EfficientNet-Lite0 packages are optional (``comfyui-scapre[eval]``): their tests skip
without them; the install hints and the summary are tested always."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from comfyui_scapre.scapre_core.evaluation import classifiers


def _have(measure: str) -> bool:
    return classifiers.missing(measure) is None


def test_missing_names_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    hint = classifiers.missing("imagenet")
    assert "pip install efficientnet-lite-pytorch" in hint
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


def test_imagenet_weights_must_be_safetensors(monkeypatch, tmp_path):
    """No pickle is read: without a safetensors file the measure says how to provide one."""
    monkeypatch.setenv(classifiers.WEIGHTS_ENV, str(tmp_path / "absent.safetensors"))
    if importlib.util.find_spec("efficientnet_lite_pytorch") is not None:
        assert "safetensors" in classifiers.missing("imagenet")
    with pytest.raises(ValueError, match="SCAPRE_IMAGENET_WEIGHTS"):
        classifiers._weights_path()


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="efficientnet-lite-pytorch not installed (comfyui-scapre[eval])")
def test_imagenet_classifier_is_deterministic_and_top1_is_the_argmax(monkeypatch, tmp_path):
    """The classifier reads its weights from safetensors (here a seeded random EfficientNet-Lite0)."""
    import safetensors.torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    path = tmp_path / "lite0.safetensors"
    state = {k: v.contiguous() for k, v in EfficientNet.from_name("efficientnet-lite0").state_dict().items()}
    safetensors.torch.save_file(state, str(path))
    monkeypatch.setenv(classifiers.WEIGHTS_ENV, str(path))
    assert classifiers.missing("imagenet") is None
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 96, 80, 3, generator=gen)
    logits = classifiers.imagenet_logits(images)
    assert logits.shape == (3, 1000) and torch.isfinite(logits).all()
    assert torch.equal(logits, classifiers.imagenet_logits(images.clone()))
    assert classifiers.imagenet_top1(images) == logits.argmax(-1).tolist()
    # the network carries exactly the weights of the file
    loaded = classifiers._efficientnet_lite0(str(path)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
