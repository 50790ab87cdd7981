"""Speed, memory and exactness of the whole ScaPre edit on SD-shaped random data.

Prints one JSON line per case::

    case, device, matrices, concepts, d, seconds, node_seconds, report_seconds, node_over_edit,
    solve_seconds, naive_seconds, speedup, whole_edit_speedup, rel_diff_vs_naive, solve_rel_err_vs_float64,
    rel_err_vs_float64, weights_mb, peak_rss_mb (or peak_cuda_mb), peak_above_weights_mb

* ``seconds``: the whole ``scapre_core.erase`` call (text statistics, Informax weights, entropy, data
  term, solve, Bures) with the default scale-variant config, float32.
* ``node_seconds``: what ScaPre Erase and ``python -m <pack> erase`` run (``nodes/glue/edit.py``): the same
  edit one matrix at a time (``erase_iter(changes=True)``) with its report (``ReportBuilder``: efficacy and
  drift of every erased prompt, per matrix); ``report_seconds`` the report's share of it. ComfyUI's own
  work around it (reading the weights, patching the clone) is not included. ``node_over_edit`` =
  ``node_seconds / (node_seconds - report_seconds)``: the node path against its own edit part, timed in
  the same loop (robust to a machine whose load changes).
* ``solve_seconds``: our batched solve alone (one factorization per matrix), timed on one matrix per
  shape and scaled by the number of matrices of that shape.
* ``naive_seconds``: the same solve done the reference way, one Cholesky factorization per output
  row (float32, as the reference runs), timed on a few rows per shape and extrapolated to every row.
* ``speedup``: ``naive_seconds / solve_seconds``, solve against solve.
* ``whole_edit_speedup``: the whole edit with the per-row solve in place of ours, over the whole edit
  (``(seconds - solve_seconds + naive_seconds) / seconds``); every other part as fast as ours, so
  this understates what the reference code takes.
* ``rel_diff_vs_naive``: our rows against that per-row solve (same precision); ``solve_rel_err_vs_float64``
  our solved rows against a float64 per-row solve.
* ``rel_err_vs_float64``: the whole default float32 edit against the float64 edit (``precision="float64"``)
  of the same weights, relative to the edit (``||W32 - W64|| / ||W64 - W0||``, worst matrix; one
  matrix per shape).

The text is CLIP-like (``tests/helpers.py: clip_like_concepts``): token norms near 28, a few outlier
dimensions 20-40x the typical entry (``*_clipg`` cases: 20-100x, as in CLIP-G), end and padding
tokens shared by every prompt up to a small drift. That makes ``G`` as ill-conditioned as with a real
text encoder (eigenvalues ~1e6-1e7 times lambda).

Each case runs in a fresh subprocess so that peak memory is its own. Usage::

    python benchmarks/bench_solve.py                  # all CPU cases
    python benchmarks/bench_solve.py --cases sd15_50 --device cuda
    python benchmarks/bench_solve.py --exactness-only # only rel_err_vs_float64 (public API only: it also
                                                      # runs against another checkout with SCAPRE_ROOT=...)
    python benchmarks/bench_solve.py --node-only      # only seconds, node_seconds, report_seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: pack.py (reads SCAPRE_ROOT)
import pack  # noqa: E402, F401  (registers scapre_core)
from helpers import clip_like_concepts  # noqa: E402

from scapre_core import ScaPreConfig, erase  # noqa: E402

TOKENS = 77


def sd15_shapes() -> dict[str, tuple[int, int]]:
    """SD1.5's 16 cross-attention blocks, keys and values (32 matrices, d = 768)."""
    blocks = [("input_blocks.1", 320), ("input_blocks.2", 320), ("input_blocks.4", 640), ("input_blocks.5", 640),
              ("input_blocks.7", 1280), ("input_blocks.8", 1280), ("middle_block", 1280)]
    blocks += [(f"output_blocks.{i}", o) for i, o in
               zip(range(3, 12), (1280, 1280, 1280, 640, 640, 640, 320, 320, 320), strict=True)]
    return {f"{b}.1.transformer_blocks.0.attn2.to_{kv}.weight": (o, 768) for b, o in blocks for kv in "kv"}


def sdxl_shapes() -> dict[str, tuple[int, int]]:
    """SDXL's 70 cross-attention blocks (140 matrices, d = 2048)."""
    groups = [("input_blocks.4", 2, 640), ("input_blocks.5", 2, 640), ("input_blocks.7", 10, 1280),
              ("input_blocks.8", 10, 1280), ("middle_block", 10, 1280)]
    groups += [(f"output_blocks.{i}", 10, 1280) for i in (0, 1, 2)]
    groups += [(f"output_blocks.{i}", 2, 640) for i in (3, 4, 5)]
    return {f"{b}.1.transformer_blocks.{t}.attn2.to_{kv}.weight": (o, 2048)
            for b, n, o in groups for t in range(n) for kv in "kv"}


#: name: (shapes, concepts, outlier dimensions in multiples of the typical entry)
CASES = {
    "sd15_50": (sd15_shapes, 50, (20.0, 40.0)),
    "sdxl_50": (sdxl_shapes, 50, (20.0, 40.0)),
    "sdxl_50_clipg": (sdxl_shapes, 50, (20.0, 40.0, 70.0, 100.0)),
    "sdxl_1000": (sdxl_shapes, 1000, (20.0, 40.0)),
}


def synthetic_weights(shapes: dict[str, tuple[int, int]], device: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(*s, generator=g) / s[1] ** 0.5).half().to(device) for k, s in shapes.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def naive_rows(w0, text, stats, cfg, concepts, rows: int, dtype):
    """The reference solve for the first ``rows`` rows: one Cholesky per row. Returns
    (seconds per row, seconds of our batched solve, naive rows, float64 naive rows, our rows)."""
    from scapre_core.solve import data_term, rhs_eig, solve_rows

    dev = w0.device
    lin = torch.float64
    d = w0.shape[1]
    c = concepts.concept_vecs.to(dev, lin).T
    s_mat = cfg.erase_scale * sum(x.to(dev, lin).T @ x.to(dev, lin) for x in concepts.contexts)
    mu = float(stats.spread.mean())
    g = ((cfg.lam + mu) * torch.eye(d, dtype=lin, device=dev) + c @ c.T + s_mat)
    proj = c @ torch.linalg.inv(c.T @ c + 1e-8 * torch.eye(c.shape[1], dtype=lin, device=dev)) @ c.T
    row_w = stats.weights_or_ones(w0.shape[0], c.shape[1], w0)
    rhs_e = rhs_eig(w0, text, data_term(w0, text, row_w, cfg.erase_scale, cfg.technique), cfg.lam + mu, 0.0)
    rhs = rhs_e.to(lin) @ text.basis.to(lin).T  # b in the standard basis, for the per-row solves
    alpha = cfg.erase_scale * row_w.max(dim=1).values
    ours = solve_rows(rhs_e, text, mu, alpha)[:rows]
    g_d, proj_d, rhs_d = g.to(dtype), proj.to(dtype), rhs.to(dtype)
    out = torch.empty(rows, d, dtype=dtype, device=dev)
    out64 = torch.empty(rows, d, dtype=lin, device=dev)
    _sync(str(dev))
    start = time.perf_counter()
    for i in range(rows):
        chol = torch.linalg.cholesky(g_d + float(alpha[i]) * proj_d)
        out[i] = torch.cholesky_solve(rhs_d[i].unsqueeze(1), chol).squeeze(1)
    _sync(str(dev))
    per_row = (time.perf_counter() - start) / rows
    for i in range(rows):
        out64[i] = torch.linalg.solve(g + float(alpha[i]) * proj, rhs[i])
    _sync(str(dev))
    start = time.perf_counter()
    solve_rows(rhs_e, text, mu, alpha)
    _sync(str(dev))
    ours_seconds = time.perf_counter() - start
    return per_row, ours_seconds, out, out64, ours


def one_per_shape(shapes: dict[str, tuple[int, int]]) -> list[str]:
    seen: dict[tuple[int, int], str] = {}
    for key, shape in shapes.items():
        seen.setdefault(shape, key)
    return list(seen.values())


def exactness(weights, concepts, cfg, keys: list[str], device: str, out32=None) -> float:
    """Worst ``||W32 - W64|| / ||W64 - W0||`` over ``keys`` (public ``erase`` only)."""
    subset = {k: weights[k] for k in keys}
    if out32 is None:
        out32 = erase(subset, concepts, cfg, device=device)
    ref = erase({k: w.double() for k, w in subset.items()}, concepts, cfg.replace(precision="float64"),
                device=device)
    return max(float((out32[k].double() - ref[k]).norm() / (ref[k] - subset[k].double()).norm()) for k in keys)


def case_inputs(name: str, device: str):
    shapes_fn, m, outliers = CASES[name]
    shapes = shapes_fn()
    d = next(iter(shapes.values()))[1]
    return shapes, m, d, clip_like_concepts(m, d, outliers=outliers), synthetic_weights(shapes, device)


def run_exactness(name: str, device: str) -> dict:
    shapes, m, d, concepts, weights = case_inputs(name, device)
    keys = one_per_shape(shapes)
    weights = {k: weights[k].float() for k in keys}
    cfg = ScaPreConfig()
    return {"case": name, "device": device, "matrices": len(keys), "concepts": m, "d": d,
            "rel_err_vs_float64": exactness(weights, concepts, cfg, keys, device)}


def node_path(weights, concepts, cfg, device: str) -> tuple[float, float]:
    """(seconds of the edit with its report as ``nodes/glue/edit.py: run_erase`` runs them, seconds of the
    report alone within it)."""
    from comfyui_scapre.scapre_core import erase_iter
    from comfyui_scapre.scapre_core.report import ReportBuilder

    _sync(device)
    start = time.perf_counter()
    report = 0.0
    builder = ReportBuilder({"erase": concepts}, device=device)
    for name, change in erase_iter(weights, concepts, cfg, device=device, changes=True):
        t0 = time.perf_counter()
        original = weights[name].float()  # the node reads float32 copies and patches the change as computed
        builder.add(name, original, original + change.to(original.dtype))
        _sync(device)
        report += time.perf_counter() - t0
    t0 = time.perf_counter()
    builder.build()
    report += time.perf_counter() - t0
    return time.perf_counter() - start, report


def timing(seconds: float, node: tuple[float, float]) -> dict:
    """``node_over_edit`` compares the node path with its own edit part (same run, same load on the machine):
    ``node_seconds / (node_seconds - report_seconds)``."""
    return {"seconds": round(seconds, 3), "node_seconds": round(node[0], 3), "report_seconds": round(node[1], 3),
            "node_over_edit": round(node[0] / (node[0] - node[1]), 3)}


def run_node_only(name: str, device: str) -> dict:
    """The edit alone, then the node path (edit + report), on the same inputs."""
    shapes, m, d, concepts, weights = case_inputs(name, device)
    cfg = ScaPreConfig()
    _sync(device)
    start = time.perf_counter()
    erase(weights, concepts, cfg, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"case": name, "device": device, "matrices": len(shapes), "concepts": m, "d": d,
            **timing(seconds, node_path(weights, concepts, cfg, device)), "threads": torch.get_num_threads()}


def run_case(name: str, device: str, naive_rows_per_shape: int) -> dict:
    from scapre_core.informax import row_stats
    from scapre_core.solve import prepare_text_side

    shapes, m, d, concepts, weights = case_inputs(name, device)
    weights_mb = sum(w.numel() * w.element_size() for w in weights.values()) / 2**20
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cfg = ScaPreConfig()
    _sync(device)
    start = time.perf_counter()
    out = erase(weights, concepts, cfg, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    assert len(out) == len(shapes)
    del out
    node = node_path(weights, concepts, cfg, device)

    # naive per-row solve on a few rows of one matrix per distinct shape
    dtype = torch.float32
    text = prepare_text_side(concepts, cfg, torch.device(device), dtype)
    per_row_by_shape, solve_by_shape, diffs, errs = {}, {}, [], []
    for key in one_per_shape(shapes):
        shape = shapes[key]
        w0 = weights[key].to(device=device, dtype=dtype)
        stats = row_stats(key, w0, text.concept_vecs, text.empty_vec, cfg, with_weights=True, with_entropy=True)
        per_row, ours_seconds, naive32, naive64, ours = naive_rows(w0, text, stats, cfg, concepts,
                                                                    naive_rows_per_shape, dtype)
        per_row_by_shape[shape], solve_by_shape[shape] = per_row, ours_seconds
        diffs.append(float((ours - naive32).norm() / naive32.norm()))
        errs.append(float((ours.double() - naive64).norm() / naive64.norm()))
    naive_seconds = sum(per_row_by_shape[s] * s[0] for s in shapes.values())
    solve_seconds = sum(solve_by_shape[s] for s in shapes.values())
    keys = one_per_shape(shapes)
    # the float32 edit of fp16 weights is compared on float32 copies (same values) against float64
    exact = exactness({k: weights[k].float() for k in keys}, concepts, cfg, keys, device)
    return {
        "case": name, "device": device, "matrices": len(shapes), "concepts": m, "d": d,
        **timing(seconds, node), "solve_seconds": round(solve_seconds, 3),
        "naive_seconds": round(naive_seconds, 1),
        "speedup": round(naive_seconds / solve_seconds, 1),
        "whole_edit_speedup": round((seconds - solve_seconds + naive_seconds) / seconds, 1),
        "rel_diff_vs_naive": max(diffs), "solve_rel_err_vs_float64": max(errs),
        "rel_err_vs_float64": exact,
        "weights_mb": round(weights_mb, 1),
        "peak_rss_mb" if not device.startswith("cuda") else "peak_cuda_mb": round(peak, 1),
        "peak_above_weights_mb": round(peak - (rss_before if not device.startswith("cuda") else weights_mb), 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive-rows", type=int, default=4, help="rows per shape timed with the per-row solve")
    parser.add_argument("--exactness-only", action="store_true",
                        help="only rel_err_vs_float64, through the public erase API (no timing)")
    parser.add_argument("--node-only", action="store_true",
                        help="only the edit alone and the node path (edit + report), no per-row solve or exactness")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.exactness_only:
            result = run_exactness(args.one, args.device)
        elif args.node_only:
            result = run_node_only(args.one, args.device)
        else:
            result = run_case(args.one, args.device, args.naive_rows)
        print(json.dumps(result), flush=True)
        return
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one", case, "--device", args.device, "--naive-rows", str(args.naive_rows)]
        cmd += ["--exactness-only"] if args.exactness_only else []
        subprocess.run(cmd + (["--node-only"] if args.node_only else []), check=True)


if __name__ == "__main__":
    main()
