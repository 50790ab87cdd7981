"""Terminal progress bars (tqdm, which ComfyUI already requires) as ``step(done, total)`` callbacks."""

from __future__ import annotations

import sys
from collections.abc import Callable


class Bars:
    """One tqdm bar per stage label, created on the first step and closed when the stage is done."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr is not None
        self._bars: dict = {}

    def step(self, label: str) -> Callable[[int, int], None]:
        def update(done: int, total: int) -> None:
            if not self.enabled:
                return
            bar = self._bars.get(label)
            if bar is None:
                from tqdm import tqdm

                bar = self._bars[label] = tqdm(total=total, desc=label, unit="step", leave=True, dynamic_ncols=True)
            bar.total = total
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()

        return update

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
