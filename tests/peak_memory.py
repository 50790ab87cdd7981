"""Run a command and report the peak memory of its whole process tree (standard library only, Linux).

    python3 tests/peak_memory.py [--log FILE] [--peak-file FILE] -- COMMAND [ARG ...]

Every 0.5 s it adds up the memory of the command and all its descendants (pytest, the ComfyUI servers and
command-line runs it starts, the browser) from ``/proc``, two ways, and prints the peak of each at the end:
``peak memory of the process tree: RSS 7.9 GiB (at 312 s), PSS 7.1 GiB (at 310 s)``. RSS adds each process's
resident pages, so a page shared by several processes (the same checkpoint file mapped by two ComfyUI servers)
counts once per process; PSS (``/proc/PID/smaps_rollup``) splits each shared page between the processes that
share it, so the sum is the memory the tree occupies. With ``--log`` it also writes ``seconds,RSS GiB,PSS GiB``
samples. The command's exit code is passed on. ``/usr/bin/time -v`` reports only the largest
single process, which misses servers and subprocesses running beside the tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _tree_sum(root: int, of_process) -> int:
    """``of_process(pid)`` summed over ``root`` and every descendant now (a process that is gone counts 0)."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += of_process(Path("/proc") / str(pid))
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(tree.get(pid, []))
    return total


def _rss(proc: Path) -> int:
    return int((proc / "statm").read_text().split()[1]) * PAGE


def _pss(proc: Path) -> int:
    for line in (proc / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and every descendant now."""
    return _tree_sum(root, _rss)


def tree_pss(root: int) -> int:
    """Bytes of ``root`` and every descendant now, shared pages split between their sharers (0 where the kernel has
    no ``smaps_rollup``)."""
    return _tree_sum(root, _pss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", help="write 'seconds,GiB' samples here")
    parser.add_argument("--peak-file", help="write the peaks here ('RSS x, PSS y', GiB)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    start = time.monotonic()
    proc = subprocess.Popen(command)
    peak, peak_at, pss_peak, pss_at, samples, done = 0, 0.0, 0, 0.0, [], threading.Event()

    def sample() -> None:
        nonlocal peak, peak_at, pss_peak, pss_at
        while not done.wait(0.5):
            now, rss, pss = time.monotonic() - start, tree_rss(proc.pid), tree_pss(proc.pid)
            samples.append((now, rss, pss))
            if rss > peak:
                peak, peak_at = rss, now
            if pss > pss_peak:
                pss_peak, pss_at = pss, now

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    done.set()
    sampler.join()
    if args.peak_file:
        Path(args.peak_file).write_text(f"RSS {peak / 2**30:.1f}, PSS {pss_peak / 2**30:.1f}\n", encoding="utf-8")
    if args.log:
        Path(args.log).write_text("".join(f"{t:.1f},{r / 2**30:.3f},{p / 2**30:.3f}\n" for t, r, p in samples),
                                  encoding="utf-8")
    print(f"peak memory of the process tree: RSS {peak / 2**30:.1f} GiB (at {peak_at:.0f} s), PSS "
          f"{pss_peak / 2**30:.1f} GiB (at {pss_at:.0f} s) of {time.monotonic() - start:.0f} s", file=sys.stderr,
          flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
