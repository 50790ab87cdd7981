"""Low-rank factors of an edit's differences (what a rank-``r`` LoRA stores) and their error.

The file layout and key names of a LoRA are ComfyUI's concern: ``nodes/glue/lora_file.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRank:
    """``up @ down`` approximates a difference; ``rel_error`` is ``||D - up down|| / ||D||`` as stored."""

    up: torch.Tensor  # [o, r]
    down: torch.Tensor  # [r, d]
    rel_error: float


def low_rank(diff: torch.Tensor, rank: int, dtype: torch.dtype = torch.float16) -> LowRank:
    """Best rank-``rank`` factors of ``diff`` (truncated SVD, singular values split evenly between
    the factors so neither overflows in half precision), stored in ``dtype``."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1 for a low-rank LoRA, got {rank}")
    d = diff.detach().to(torch.float32)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    up = (u[:, :r] * root).to(dtype)
    down = (root.unsqueeze(1) * vh[:r]).to(dtype)
    norm = float(d.norm())
    err = float((d - up.float() @ down.float()).norm())
    return LowRank(up=up, down=down, rel_error=err / norm if norm > 0 else 0.0)


def pooled_error(diffs: dict[str, torch.Tensor], errors: dict[str, float]) -> float:
    """Relative error of the whole edit: ``sqrt(sum err_k^2 ||D_k||^2 / sum ||D_k||^2)``."""
    num = den = 0.0
    for key, diff in diffs.items():
        n2 = float(diff.detach().double().pow(2).sum())
        num += errors.get(key, 0.0) ** 2 * n2
        den += n2
    return (num / den) ** 0.5 if den > 0 else 0.0
