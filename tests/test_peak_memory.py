"""tests/peak_memory.py, which CI wraps around each ComfyUI suite: both sums see a child's memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "peak_memory.py"


def test_peaks_of_a_child_that_holds_memory(tmp_path):
    peak = tmp_path / "peak.txt"
    child = "import time; x = bytearray(600 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(2)"
    result = subprocess.run([sys.executable, str(SCRIPT), "--peak-file", str(peak), "--", sys.executable, "-c", child],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rss, pss = (float(part.split()[1]) for part in peak.read_text().split(","))
    assert 0.55 <= rss < 2.0 and 0.55 <= pss <= rss + 0.05  # GiB: the 0.6 GiB the child touched, shared pages once
    assert "peak memory of the process tree: RSS" in result.stderr
