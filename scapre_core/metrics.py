"""What an edit did, read off the projections (the report's measures; no sampling needed).

For a matrix ``W0 -> W`` and a prompt's context tokens ``X`` (``[t, d]``):

* efficacy of an erased prompt with guide targets ``Y``: the share of the gap to the guide that the
  edit closed, ``1 - ||W X^T - W0 Y^T|| / ||W0 X^T - W0 Y^T||``, clipped to [0, 1]
  (0: nothing moved; 1: the erased prompt now projects exactly like its guide);
* drift of any other prompt ``Z``: the relative change of its projections
  ``||(W - W0) Z^T|| / ||W0 Z^T||`` (0: untouched).

Aggregates over matrices pool the squared norms (one number for the whole edit), so large
matrices weigh as their share of the projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Gap:
    """Squared norms behind one efficacy or drift figure; they add over matrices."""

    residual: float  # ||W X^T - W0 Y^T||^2 (efficacy) or ||(W - W0) Z^T||^2 (drift)
    reference: float  # ||W0 X^T - W0 Y^T||^2 (efficacy) or ||W0 Z^T||^2 (drift)

    def __add__(self, other: Gap) -> Gap:
        return Gap(self.residual + other.residual, self.reference + other.reference)

    @property
    def efficacy(self) -> float:
        if self.reference <= 0.0:
            return 1.0 if self.residual <= 0.0 else 0.0
        return float(min(1.0, max(0.0, 1.0 - (self.residual / self.reference) ** 0.5)))

    @property
    def drift(self) -> float:
        if self.reference <= 0.0:
            return 0.0 if self.residual <= 0.0 else float("inf")
        return float((self.residual / self.reference) ** 0.5)


def efficacy_gaps(w0: torch.Tensor, w: torch.Tensor, contexts, targets) -> list[Gap]:
    """One :class:`Gap` per erased prompt (``contexts[j]`` = ``X_j``, ``targets[j]`` = ``Y_j``)."""
    w0, w = w0.double(), w.double()
    out = []
    for x, y in zip(contexts, targets, strict=True):
        x, y = x.to(w0), y.to(w0)
        goal = w0 @ y.T
        out.append(Gap(float((w @ x.T - goal).pow(2).sum()), float((w0 @ x.T - goal).pow(2).sum())))
    return out


def drift_gaps(w0: torch.Tensor, w: torch.Tensor, sequences) -> list[Gap]:
    """One :class:`Gap` per prompt in ``sequences`` (each ``[t, d]``)."""
    w0, w = w0.double(), w.double()
    delta = w - w0
    out = []
    for z in sequences:
        z = z.to(w0)
        out.append(Gap(float((delta @ z.T).pow(2).sum()), float((w0 @ z.T).pow(2).sum())))
    return out


def relative_change(w0: torch.Tensor, w: torch.Tensor) -> float:
    """``||W - W0|| / ||W0||`` (Frobenius)."""
    w0, w = w0.double(), w.double()
    base = float(w0.norm())
    return float((w - w0).norm()) / base if base > 0 else float((w - w0).norm())
