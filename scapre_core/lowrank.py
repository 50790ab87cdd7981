"""A change ``W - W0`` in compact form: a per-row rescaling of the original rows plus a low-rank factor.

On the span route (short text in a wide space: :func:`~scapre_core.solve.route` ``"span"``) every solved row
keeps its part off the text's span ``B`` (``[d, r]``, orthonormal) and changes only inside it: the solve's change
is ``(X - W0 B) B^T``, of rank ``r``. The Bures step and EGBR then combine each row of ``W0`` with its change
by two scalars (``scapre_core.geometry``), so the method's whole change is::

    W - W0 = diag(row_scale) W0 + left @ right        (left = [o, r], right = B^T, [r, d])

It holds ``o + o r`` numbers per matrix (``right`` is one tensor shared by every matrix of the edit) where the
dense change holds ``o d``: for a 14B video model's 5120-wide maps and about a hundred span directions, 50 times
fewer. The form is exact in arithmetic; in float32 it equals the dense change to a few ``1e-7`` of the change
(``tests/test_lowrank.py``), like any two orders of the same float32 sums. Outside the span route (text that
fills its space, the focus variant) the change has no such form and stays dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: A compact change is used only when its own numbers (``o + o r``) are at most this fraction of the dense
#: change's ``o d``: below it the dense matrix is small enough and simpler for every consumer.
MAX_FRACTION = 0.5


@dataclass(frozen=True, eq=False)
class LowRankChange:
    """``W - W0 = diag(row_scale) W0 + left @ right`` for the ``W0`` the change was computed on.

    ``row_scale`` ``[o]`` (``None``: no rescaling, as for ``uce`` and the small variant), ``left`` ``[o, r]``,
    ``right`` ``[r, d]``; all in the compute precision. The change depends on ``W0`` through ``row_scale``:
    :meth:`dense` needs the weight it is applied to."""

    row_scale: torch.Tensor | None
    left: torch.Tensor
    right: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.left.shape[0], self.right.shape[1]))

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.left.dtype

    def nbytes(self, shared: bool = True) -> int:
        """Bytes held by this change (``right`` left out when ``shared``: one tensor for every matrix of an edit)."""
        parts = [self.left] + ([] if shared else [self.right]) + ([self.row_scale] if self.row_scale is not None
                                                                   else [])
        return sum(t.numel() * t.element_size() for t in parts)

    def dense(self, w0: torch.Tensor) -> torch.Tensor:
        """The change as one ``[o, d]`` matrix, for the weight ``w0`` it applies to (in ``w0``'s dtype and device,
        at least float32)."""
        if tuple(w0.shape) != tuple(self.shape):
            raise ValueError(f"this change is {tuple(self.shape)}, the weight {tuple(w0.shape)}")
        dtype = w0.dtype if w0.dtype in (torch.float32, torch.float64) else torch.float32
        left, right = self.left.to(device=w0.device, dtype=dtype), self.right.to(device=w0.device, dtype=dtype)
        out = left @ right
        if self.row_scale is not None:
            out += self.row_scale.to(device=w0.device, dtype=dtype).unsqueeze(1) * w0.to(dtype)
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LowRankChange:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return LowRankChange(move(self.row_scale), move(self.left), move(self.right))

    def scaled(self, factor: float) -> LowRankChange:
        """This change times ``factor``."""
        return LowRankChange(None if self.row_scale is None else self.row_scale * factor, self.left * factor,
                             self.right)


def worth_it(change: LowRankChange) -> bool:
    """Whether the compact form saves enough over a dense ``[o, d]`` change (:data:`MAX_FRACTION`)."""
    o, d = change.shape
    return o + o * change.rank <= MAX_FRACTION * o * d
