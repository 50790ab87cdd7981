"""Image measures for judging an edit: how much each prompt's images changed from the original
model to the edited one, and the erasure/retention summary over erased and kept prompts.

Shared by the ScaPre Compare node and the command line; pure torch (no ComfyUI import). Images are
ComfyUI's layout, float ``[N, H, W, 3]`` in ``[0, 1]``.

Similarity measure: SSIM (Wang et al. 2004), written here in a few lines of torch (batched, runs on the GPU,
float64 arithmetic, no weights to download, unlike learned perceptual metrics such as LPIPS); it equals
``pytorch_msssim.ssim`` (same window and constants, valid filtering) up to float32 rounding.
``change = clip(1 - SSIM, 0, 1)``: 0 for identical images, about 1 for structurally unrelated ones.

API:
    :func:`image_change`, :func:`embedding_cosine` per image pair;
    :func:`evaluation_prompts`, :func:`compare_prompts` to build the prompt list;
    :func:`summarize` for the per-kind, per-class and pooled figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..prompts import PLACEHOLDER, normalize, split_lines

#: Evaluation prompt templates per concept type. They differ on purpose from the erase templates of
#: :data:`scapre_core.prompts.TEMPLATES`: an edit that only removed the exact erased phrasing would
#: otherwise look perfect.
EVAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": ("an image of {c}", "{c} in a scene"),
    "style": ("a painting in the style of {c}", "a city street in the style of {c}"),
    "explicit": ("a photo of a person, {c}", "a painting of a person, {c}"),
    "custom": ("an image of {c}", "{c} in a scene"),
}
ERASED, KEPT = "erased", "kept"
KINDS = (ERASED, KEPT)

#: SSIM settings: the standard 11-px Gaussian window (sigma 1.5), shrunk for images smaller than it.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


@dataclass(frozen=True)
class ComparePrompt:
    """One prompt to sample: its text, whether it should change (``erased``) or not (``kept``), and
    the concept (class) it belongs to ("" for a prompt typed in by hand)."""

    prompt: str
    kind: str
    concept: str = ""


def evaluation_prompts(concept: str, concept_type: str = "object") -> list[str]:
    """The evaluation prompts of one concept: each of its type's :data:`EVAL_TEMPLATES` filled in."""
    templates = EVAL_TEMPLATES.get(concept_type, EVAL_TEMPLATES["object"])
    return [t.replace(PLACEHOLDER, concept) for t in templates]


def compare_prompts(erased_concepts: Iterable[str] = (), kept_concepts: Iterable[str] = (),
                    concept_type: str = "object", erased_prompts: str = "", kept_prompts: str = "",
                    ) -> list[ComparePrompt]:
    """Prompts to compare: evaluation prompts of the erased and kept concepts (e.g. a concept payload's
    concepts, and its probes and preserve prompts), then the typed prompts (one per line, used as
    written). Duplicates are dropped (first wins); a prompt both erased and kept counts as erased."""
    items = [ComparePrompt(p, ERASED, c) for c in erased_concepts for p in evaluation_prompts(c, concept_type)]
    items += [ComparePrompt(p, ERASED) for p in split_lines(erased_prompts)]
    items += [ComparePrompt(p, KEPT, c) for c in kept_concepts for p in evaluation_prompts(c, concept_type)]
    items += [ComparePrompt(p, KEPT) for p in split_lines(kept_prompts)]
    seen: set[str] = set()
    unique = []
    for item in items:
        key = normalize(item.prompt)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _check_images(original: torch.Tensor, edited: torch.Tensor) -> None:
    if original.shape != edited.shape or original.ndim != 4 or original.shape[-1] != 3:
        raise ValueError(f"expected two [N, H, W, 3] image batches of one shape, got {tuple(original.shape)} "
                         f"and {tuple(edited.shape)}")


def _window(size: int) -> int:
    """The SSIM window for an image side of ``size`` px: 11, or the largest odd size that fits."""
    return max(1, min(SSIM_WINDOW, size if size % 2 else size - 1))


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter over each channel of ``[N, C, H, W]``, no padding ("valid")."""
    c = x.shape[1]
    x = torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair, ``[N]`` in ``[-1, 1]`` (1 for identical images), averaged over RGB.

    Wang et al. 2004: Gaussian window (11 px, sigma 1.5; smaller for small images), ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2`` with data range ``L = 1``, the map averaged over the valid positions and channels."""
    _check_images(original, edited)
    x = original.detach().double().clamp(0, 1).permute(0, 3, 1, 2)
    y = edited.detach().to(x.device).double().clamp(0, 1).permute(0, 3, 1, 2)
    g = _gaussian(_window(min(x.shape[-2:])), SSIM_SIGMA, x.dtype, x.device)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = _blur(x, g), _blur(y, g)
    vx, vy = _blur(x * x, g) - mx * mx, _blur(y * y, g) - my * my
    cov = _blur(x * y, g) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    value = value.flatten(1).mean(dim=1).float()
    same = (x == y).flatten(1).all(dim=1)  # identical pairs are exactly 1, whatever the filter's rounding
    return torch.where(same, torch.ones_like(value), value)


def image_change(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """How much each image changed, ``[N]`` in ``[0, 1]``: ``clip(1 - SSIM, 0, 1)`` (0: identical)."""
    return (1.0 - ssim(original, edited)).clamp(0.0, 1.0).cpu()


def embedding_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of paired embeddings ``[N, D]`` (e.g. CLIP vision image embeddings), ``[N]``."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] embedding batches of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    return torch.nn.functional.cosine_similarity(a64, b64, dim=-1, eps=1e-12).float()


def _mean(values: Sequence[float]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pooled figures over per-prompt records ``{"prompt", "kind", "change", ["concept"],
    ["clip_cosine"]}``:

    * ``erasure``: mean ``change`` over erased prompts (higher: the erased concept's images moved more);
    * ``retention``: mean ``1 - change`` over kept prompts (higher: kept prompts stayed as they were);
    * ``gap``: ``erasure - (1 - retention)``, how much more erased prompts changed than kept ones;
    * ``per_kind``: count, mean change and (with embeddings) mean CLIP cosine per kind;
    * ``per_concept``: the same per concept (prompts typed by hand pool under "").

    A missing kind gives None for its figure (and for the gap)."""
    for record in records:
        if record["kind"] not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {record['kind']!r}")

    def group(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        out = {"prompts": len(rows), "change": _mean([r["change"] for r in rows])}
        cos = [r["clip_cosine"] for r in rows if r.get("clip_cosine") is not None]
        if cos:
            out["clip_cosine"] = _mean(cos)
        return out

    per_kind = {kind: group([r for r in records if r["kind"] == kind]) for kind in KINDS}
    per_concept: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        for concept in dict.fromkeys(r.get("concept", "") for r in records if r["kind"] == kind):
            rows = [r for r in records if r["kind"] == kind and r.get("concept", "") == concept]
            per_concept.setdefault(concept, {})[kind] = group(rows)
    erasure = per_kind[ERASED]["change"]
    kept_change = per_kind[KEPT]["change"]
    retention = None if kept_change is None else 1.0 - kept_change
    gap = None if erasure is None or kept_change is None else erasure - kept_change
    return {"erasure": erasure, "retention": retention, "gap": gap, "per_kind": per_kind,
            "per_concept": per_concept}
