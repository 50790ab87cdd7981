"""How much of an edit reaches the weights a model samples with (docs/model-formats.md).

An edit is computed in float32 on the model's weights read as real numbers (fp8 and GGUF blocks
dequantized). What the sampler multiplies with differs: the change is rounded into the storage format
when it is baked into the weights (stochastic rounding into fp8), or added in the compute dtype when it is
applied at compute time. For one matrix with intended change ``C`` (the edit as computed) and realised
change ``D = W1 - W0`` (the weights the edited and the unedited model sample with):

* surviving fraction ``s = <D, C> / ||C||^2``: how much of the intended change is there, measured along it
  (1 all of it, 0 none; the component of ``D`` along ``C``);
* error ``e = ||D - C|| / ||C||``: everything in which the realised change differs from the intended one,
  relative to the edit (rounding noise included; ``e >= |1 - s|``, so a small error means both).

Pooled over matrices, as for one matrix made of all of them: ``sum <D, C> / sum ||C||^2`` and
``sqrt(sum ||D - C||^2 / sum ||C||^2)``. Pure torch; the ComfyUI side (which weights, which format, how the
edit is applied) is ``nodes/glue/formats.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .report import short_name

#: The report warns when the pooled error is above this: the model samples with weights that differ from
#: the edit by more than 5 % of the edit.
WARN_ERROR = 0.05


@dataclass(frozen=True)
class Survival:
    """The three sums behind one matrix's (or a pooled) figure; they add over matrices."""

    inner: float  # <D, C>
    intended: float  # ||C||^2
    error2: float  # ||D - C||^2

    def __add__(self, other: Survival) -> Survival:
        return Survival(self.inner + other.inner, self.intended + other.intended, self.error2 + other.error2)

    @property
    def fraction(self) -> float:
        """``<D, C> / ||C||^2``; 1 for an empty edit that stayed empty."""
        if self.intended <= 0.0:
            return 1.0 if self.error2 <= 0.0 else 0.0
        return self.inner / self.intended

    @property
    def error(self) -> float:
        """``||D - C|| / ||C||``; infinite when an empty edit changed the weights."""
        if self.intended <= 0.0:
            return 0.0 if self.error2 <= 0.0 else math.inf
        return math.sqrt(self.error2 / self.intended)


def survival(intended: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> Survival:
    """The sums for one matrix: intended change ``intended``, sampled weights ``before`` and ``after``
    (any dtypes; the arithmetic is float64)."""
    c = intended.detach().to(torch.float64)
    d = after.detach().to(device=c.device, dtype=torch.float64) - before.detach().to(device=c.device,
                                                                                        dtype=torch.float64)
    return Survival(float((d * c).sum()), float(c.pow(2).sum()), float((d - c).pow(2).sum()))


@dataclass
class SurvivalMeter:
    """Collects :class:`Survival` per matrix while an edit runs; pools them at the end."""

    matrices: dict[str, Survival] = field(default_factory=dict)

    def add(self, name: str, intended: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> Survival:
        self.matrices[name] = survival(intended, before, after)
        return self.matrices[name]

    def pooled(self) -> Survival:
        total = Survival(0.0, 0.0, 0.0)
        for value in self.matrices.values():
            total = total + value
        return total

    def summary(self, threshold: float = WARN_ERROR) -> dict[str, Any]:
        """``surviving``, ``error`` (pooled), ``threshold`` and ``per_matrix`` (name -> [surviving, error])."""
        pooled = self.pooled()
        return {"surviving": _finite(pooled.fraction), "error": _finite(pooled.error), "threshold": threshold,
                "per_matrix": {k: [_finite(v.fraction), _finite(v.error)] for k, v in self.matrices.items()}}


def weights_markdown(weights: Mapping[str, Any] | None, computed_on: Mapping[str, Any] | None = None,
                     worst: int = 5, patches: Mapping[str, Any] | None = None) -> str:
    """The report table's section on the model's weights: what the edit was computed on, the format, how
    the edit was applied, what the edited MODEL holds for it (``patches``: ``nodes/glue/edit.patch_memory``), and
    how much of it the sampled weights carry (pooled and the matrices that carry the least). Empty without data."""
    if not weights:
        return ""
    lines = ["", "### Weights the model samples with", ""]
    if computed_on and computed_on.get("text"):
        lines.append(f"- edit computed on: {computed_on['text']}")
    lines.append(f"- format: {weights.get('format', '?')}; compute dtype {weights.get('compute_dtype', '?')}")
    lines.append(f"- edit applied: {weights.get('applied', '?')}")
    if patches:
        lines.append(f"- held by the edited MODEL: {patches['mb']:.1f} MB ({patches['compact']} of "
                     f"{patches['weights']} weights as a row rescaling plus a low-rank factor; "
                     f"{patches['dense_mb']:.1f} MB as dense float32 matrices)")
    s, e = weights.get("surviving"), weights.get("error")
    if s is not None or e is not None:
        threshold = weights.get("threshold", WARN_ERROR)
        verdict = "above the warning threshold" if e is None or e > threshold else "below the warning threshold"
        lines.append(f"- surviving fraction of the edit: {_fmt(s)}; error {_pct(e)} of the edit "
                     f"({verdict} of {_pct(threshold)})")
    per = weights.get("per_matrix") or {}
    if per:
        rows = sorted(per.items(), key=lambda kv: (kv[1][1] is not None, -(kv[1][1] or 0.0)))[:worst]
        lines += ["", "| matrix (largest error first) | surviving | error |", "|---|---:|---:|"]
        lines += [f"| {short_name(name)} | {_fmt(v[0])} | {_pct(v[1])} |" for name, v in rows]
    return "\n".join(lines) + "\n"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    if value is None:
        return "inf"
    return f"{100 * value:.3g} %"
