"""What an edit did, read off the projections (the report's measures; no sampling needed).

For a matrix ``W0 -> W`` and a prompt's context tokens ``X`` (``[t, d]``):

* efficacy of an erased prompt with guide targets ``Y``: how far its projections moved onto the
  guide's, measured along the way from where they were to where the guide's are,
  ``<(W - W0) X^T, W0 (Y - X)^T> / ||W0 (Y - X)^T||^2`` clipped to [0, 1] (0: nothing moved towards the
  guide; 1: it got all the way). Movement sideways does not count; it shows in the prompt's drift.
  (ScaPre's Informax weights scale the guide targets of a row by ``m_ij``, so on rows with small
  weights the erased contexts go towards zero rather than onto the guide: partly along the way.)
* drift of any other prompt ``Z``: the relative change of its projections
  ``||(W - W0) Z^T|| / ||W0 Z^T||`` (0: untouched).

Aggregates over matrices pool the sums (one number for the whole edit), so large matrices weigh as
their share of the projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Gap:
    """The two sums behind one figure; they add over matrices.

    For efficacy ``num = <(W - W0) X^T, W0 (Y - X)^T>`` and ``den = ||W0 (Y - X)^T||^2``; for drift
    ``num = ||(W - W0) Z^T||^2`` and ``den = ||W0 Z^T||^2``."""

    num: float
    den: float

    def __add__(self, other: Gap) -> Gap:
        return Gap(self.num + other.num, self.den + other.den)

    @property
    def efficacy(self) -> float:
        if self.den <= 0.0:  # the prompt already projects like its guide
            return 1.0
        return float(min(1.0, max(0.0, self.num / self.den)))

    @property
    def drift(self) -> float:
        if self.den <= 0.0:
            return 0.0 if self.num <= 0.0 else float("inf")
        return float(max(self.num, 0.0) / self.den) ** 0.5


def efficacy_gaps(w0: torch.Tensor, w: torch.Tensor, contexts, targets) -> list[Gap]:
    """One :class:`Gap` per erased prompt (``contexts[j]`` = ``X_j``, ``targets[j]`` = ``Y_j``)."""
    w0, w = w0.double(), w.double()
    out = []
    for x, y in zip(contexts, targets, strict=True):
        x, y = x.to(w0), y.to(w0)
        way = w0 @ (y - x).T  # from where the prompt projects to where its guide does
        moved = (w - w0) @ x.T
        out.append(Gap(float((moved * way).sum()), float(way.pow(2).sum())))
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
