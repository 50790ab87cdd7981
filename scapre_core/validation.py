"""Input checks shared by the core functions: each error says what to change."""

from __future__ import annotations

from typing import Any

import torch


def check_finite(name: str, tensor: torch.Tensor) -> None:
    # a NaN or inf anywhere makes the sum NaN or inf, so a finite sum proves every entry finite (a few times
    # cheaper than isfinite on a CPU); a non-finite sum (or an overflow of finite values) is looked at exactly
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf); the edit needs finite numbers")


def check_weight(name: str, weight: torch.Tensor, dim: int) -> None:
    """A projection to edit: a finite floating ``[o, d]`` matrix (``o >= 1``) whose input width is the text width."""
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
        raise ValueError(f"weight {name!r} has no output rows (shape {list(weight.shape)}): an empty matrix "
                         "has nothing to edit; leave it out of the weights you pass")
    # float8 has no isfinite kernel on every backend: widen it to look
    probe = weight.detach().to(torch.float32) if weight.element_size() == 1 else weight.detach()
    finite = torch.isfinite(probe)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        kinds = [k for k, hit in (("NaN", torch.isnan(probe).any()), ("inf", torch.isinf(probe).any())) if hit]
        raise ValueError(f"weight {name!r} has {bad} non-finite value(s) ({' and '.join(kinds)}): the model is "
                         "damaged or was overflowed by an earlier step; load an intact model (or a smaller "
                         "LoRA strength) before erasing")


def check_row_stats(stats: Any, config: Any, rows: int, concepts: int, name: str = "the matrix") -> None:
    """Informax output for one ``[rows, d]`` matrix and ``concepts`` erase prompts, as the edit reads it
    (``stats`` a :class:`~scapre_core.informax.RowStats`, ``config`` a :class:`~scapre_core.ScaPreConfig`)."""
    weights, entropy = stats.row_weights, stats.entropy
    if weights is not None:
        if tuple(weights.shape) != (rows, concepts):
            raise ValueError(f"the row weights of {name} have shape {list(weights.shape)} but the edit needs "
                             f"[{rows}, {concepts}] (rows x erase prompts): compute them for these weights and "
                             "concepts")
        check_finite(f"the row weights of {name}", weights)
    if entropy is None:
        if config.needs_entropy:
            needs = ("the small variant's rollback" if config.variant == "small" else
                     " and ".join(w for w, on in (("mu_from_entropy", config.mu_from_entropy),
                                                  ("egbr", config.egbr)) if on))
            raise ValueError(f"no entropy factors were given for {name}, but {needs} needs them: compute them "
                             "with informax_weights (or RowStats(entropy=...)), or turn mu_from_entropy and egbr "
                             "off (the scale variant then uses the constant mu)")
        return
    if tuple(entropy.shape) != (rows,):
        raise ValueError(f"the entropy factors of {name} have shape {list(entropy.shape)} but the edit needs "
                         f"[{rows}] (one per output row): compute them for these weights")
    check_finite(f"the entropy factors of {name}", entropy)
