"""Input checks shared by the core functions: each error says what to change."""

from __future__ import annotations

import torch


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf); the edit needs finite numbers")


def check_weight(name: str, weight: torch.Tensor, dim: int) -> None:
    """A projection to edit: a finite floating ``[o, d]`` matrix whose input width is the text width."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight {name!r} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight {name!r} must be a matrix [out, in], got shape {list(weight.shape)}")
    if weight.shape[1] != dim:
        raise ValueError(
            f"weight {name!r} has input width {weight.shape[1]} but the text embeddings have width {dim}: "
            "edit only cross-attention key/value projections of a model that reads this text encoder"
        )
    if not weight.is_floating_point():
        raise ValueError(f"weight {name!r} must be floating point, got {weight.dtype}")
    if weight.shape[0] == 0:
        raise ValueError(f"weight {name!r} has no output rows")
