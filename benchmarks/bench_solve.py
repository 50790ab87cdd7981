"""Speed, memory and exactness of the whole ScaPre edit on SD-shaped random data.

Prints one JSON line per case::

    case, device, matrices, concepts, d, seconds, node_seconds, report_seconds, node_over_edit,
    node_seconds_full, report_seconds_full, node_over_edit_full, solve_seconds, naive_seconds, speedup,
    whole_edit_speedup, rel_diff_vs_naive, solve_rel_err_vs_float64, rel_err_vs_float64, weights_mb,
    peak_rss_mb (or peak_cuda_mb), peak_above_weights_mb

* ``seconds``: the whole ``scapre_core.erase`` call (text statistics, Informax weights, entropy, data
  term, solve, Bures) with the default scale-variant config, float32.
* ``node_seconds``: what ScaPre Erase and ``python -m <pack> erase`` run (``nodes/glue/edit.py``): the same
  edit one matrix at a time (``erase_iter(changes=True)``) with its report (``ReportBuilder``: efficacy and
  drift of every erased prompt, per matrix) on the default ``report_tokens="key"`` (each prompt's last word
  token and the ``KEY_TOKENS`` after it); ``report_seconds`` the report's share of it. ComfyUI's own
  work around it (reading the weights, patching the clone) is not included. ``node_over_edit`` =
  ``node_seconds / (node_seconds - report_seconds)``: the node path against its own edit part, timed in
  the same loop (robust to a machine whose load changes). ``*_full``: the same with ``report_tokens="full"``
  (every token). ``--report-tokens key`` or ``full`` times one of them only.
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
    python benchmarks/bench_solve.py --node-only      # only seconds and the node path, both report scopes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: pack.py (reads SCAPRE_ROOT)
import pack  # noqa: E402, F401  (registers scapre_core)
from helpers import clip_like_concepts  # noqa: E402

from scapre_core import ConceptSet, ScaPreConfig, erase  # noqa: E402

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


def node_path(weights, concepts, cfg, device: str, tokens: str = "key") -> tuple[float, float]:
    """(seconds of the edit with its report on ``tokens`` as ``nodes/glue/edit.py: run_erase`` runs them,
    seconds of the report alone within it)."""
    from comfyui_scapre.scapre_core import erase_iter
    from comfyui_scapre.scapre_core.report import ReportBuilder

    _sync(device)
    start = time.perf_counter()
    report = 0.0
    builder = ReportBuilder({"erase": concepts}, device=device, tokens=tokens)
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


def timing(seconds: float, nodes: dict[str, tuple[float, float]]) -> dict:
    """``node_over_edit`` compares the node path with its own edit part (same run, same load on the machine):
    ``node_seconds / (node_seconds - report_seconds)``; no suffix for the default scope (key), ``_full`` for full."""
    out = {"seconds": round(seconds, 3)}
    for tokens, (node, report) in nodes.items():
        suffix = "" if tokens == "key" else f"_{tokens}"
        out.update({f"node_seconds{suffix}": round(node, 3), f"report_seconds{suffix}": round(report, 3),
                    f"node_over_edit{suffix}": round(node / (node - report), 3)})
    return out


def node_paths(weights, concepts, cfg, device: str, scopes: list[str]) -> dict[str, tuple[float, float]]:
    return {tokens: node_path(weights, concepts, cfg, device, tokens) for tokens in scopes}


def run_node_only(name: str, device: str, scopes: list[str]) -> dict:
    """The edit alone, then the node path (edit + report) for each report scope, on the same inputs."""
    from comfyui_scapre.scapre_core.report import KEY_TOKENS

    shapes, m, d, concepts, weights = case_inputs(name, device)
    cfg = ScaPreConfig()
    _sync(device)
    start = time.perf_counter()
    erase(weights, concepts, cfg, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"case": name, "device": device, "matrices": len(shapes), "concepts": m, "d": d,
            **timing(seconds, node_paths(weights, concepts, cfg, device, scopes)), "key_tokens": KEY_TOKENS,
            "threads": torch.get_num_threads()}


def run_case(name: str, device: str, naive_rows_per_shape: int, scopes: list[str]) -> dict:
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
    node = node_paths(weights, concepts, cfg, device, scopes)

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


# ---------------------------------------------------------------------------------------------------
# DiT cases: the matrix shapes of real models, T5-like long text through the pack's own alignment
# ---------------------------------------------------------------------------------------------------

#: name: (blocks, edited matrices per block (rows, width), text rows per prompt, real tokens per prompt (min, max),
#:        padding ("zeros": Wan's zeroed umT5 padding; "masked": padding the model masks out; "distinct":
#:        T5 padding that the model reads, every row different), text projection (in, hidden, out) or None,
#:        pooled matrix (rows, width) or None)
DIT_CASES = {
    "wan13b_50": (30, ((1536, 1536), (1536, 1536)), 512, (4, 24), "zeros", (4096, 1536, 1536), None),
    "wan14b_50": (40, ((5120, 5120), (5120, 5120)), 512, (4, 24), "zeros", (4096, 5120, 5120), None),
    "ltxv2b_50": (28, ((2048, 2048), (2048, 2048)), 128, (4, 24), "masked", (4096, 2048, 2048), None),
    "ltxv13b_50": (48, ((4096, 4096), (4096, 4096)), 128, (4, 24), "masked", (4096, 4096, 4096), None),
    "pixart_50": (28, ((1152, 1152), (1152, 1152)), 300, (4, 24), "masked", (4096, 1152, 1152), None),
    "flux_50": (1, ((3072, 4096),), 256, (4, 24), "distinct", None, (3072, 768)),
    "sd35l_50": (1, ((2432, 4096),), 154, (4, 24), "distinct", None, (2432, 2048)),
    "qwen_50": (1, ((3072, 3584),), 40, (4, 24), "masked", None, None),
    # HiDream I1: caption_projection.48 (T5, 128 rows) here; the 48 projections over Llama-3.1 layers (128 rows
    # each, HIDREAM_LLAMA_LAYERS) are streams of their own, added by run_dit_case
    "hidream_50": (1, ((2560, 4096),), 128, (4, 24), "distinct", None, (2560, 2048)),
    "hidream_10": (1, ((2560, 4096),), 128, (4, 24), "distinct", None, (2560, 2048)),
}
#: HiDream I1's llama_layers (ComfyUI's detection): caption_projection.<i> reads Llama layer HIDREAM_LLAMA_LAYERS[i].
HIDREAM_LLAMA_LAYERS = tuple(range(32)) + (31,) * 16


class LazyWeights(dict):
    """fp16 random matrices made on first access and dropped after (a model's weights are read one at a
    time; holding 80 Wan-14B matrices would add 4 GB that the pack never holds)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], seed: int = 1) -> None:
        super().__init__({k: None for k in shapes})
        self.shapes, self.seed, self._last = shapes, seed, None

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._last is None or self._last[0] != key:
            g = torch.Generator().manual_seed(self.seed + zlib.crc32(key.encode()))
            rows, cols = self.shapes[key]
            self._last = (key, (torch.randn(rows, cols, generator=g) / cols**0.5).half())
        return self._last[1]

    def values(self):
        return (self[k] for k in self)

    def items(self):
        return ((k, self[k]) for k in self)


def t5_like_encodings(name: str, seed: int = 0):
    """Synthetic encodings as the pack's encode step stores them: per prompt ``rows`` real tokens with T5-like
    statistics (small entries, a few outlier dimensions), then the case's padding."""
    from comfyui_scapre.nodes.glue.encode import Encoding, Segment, compress_tail
    from comfyui_scapre.scapre_core.prompts import plan_prompts

    _, _, length, (low, high), padding, _, _ = DIT_CASES[name]
    d = 4096 if name != "qwen_50" else 3584
    g = torch.Generator().manual_seed(seed)
    outliers = torch.randperm(d, generator=g)[:6]
    plan = plan_prompts(", ".join(f"concept {j}" for j in range(int(name.rsplit("_", 1)[1]))))  # the case's count

    def encoding(words: int) -> Encoding:
        rows = 0.15 * torch.randn(length, d, generator=g)
        rows[:, outliers] *= 20.0
        real = words + 1  # words and the end token
        if padding == "zeros":
            rows[real:] = 0.0
        last = words - 1 if words else None
        seg = Segment(("t5xxl",), 0, length, real if padding == "masked" else length, last, False)
        pooled = torch.randn(768 if name == "flux_50" else 2048, generator=g) if DIT_CASES[name][6] else None
        if name.startswith("hidream"):  # Llama-3.1 on a GPU runs in bfloat16: its outputs are bfloat16 values
            rows = rows.to(torch.bfloat16).float()
        return Encoding(compress_tail(rows), length, (seg,), pooled)

    encodings = {"": encoding(0)}
    for text in plan.prompts:
        encodings[text] = encoding(int(torch.randint(low, high + 1, (1,), generator=g)))
    return plan, encodings


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): on a busy machine, wall time / threads understates nothing."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_dit_case(name: str, device: str, merge: bool = True, exact: bool = False, compact: bool = True) -> dict:
    """The whole DiT edit as the pack runs it: the model's text projection on each distinct row, alignment
    and (with ``merge``) merging of repeated padding, then every matrix one at a time (read as float32,
    changed, dropped). ``merge=False`` builds the same contexts without merging (every padding row kept)."""
    from comfyui_scapre.nodes.glue.architectures import mlp_gelu_tanh
    from comfyui_scapre.nodes.glue.encode import Encoding, lossless_narrow, stream_sets
    from comfyui_scapre.scapre_core import erase_iter
    from comfyui_scapre.scapre_core.lowrank import LowRankChange
    from comfyui_scapre.scapre_core.solve import route

    blocks, per_block, length, _, padding, projection, pooled = DIT_CASES[name]
    load0 = round(os.getloadavg()[0], 2)  # the machine's 1-minute load before this case (other processes)
    plan, encodings = t5_like_encodings(name)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    project = None
    if projection is not None:
        _, fn = mlp_gelu_tanh("p.", "0", "2")
        gen = torch.Generator().manual_seed(7)
        d_in, hidden, out = projection
        proj = {"p.0.weight": torch.randn(hidden, d_in, generator=gen) / d_in**0.5, "p.0.bias": torch.zeros(hidden),
                "p.2.weight": torch.randn(out, hidden, generator=gen) / hidden**0.5, "p.2.bias": torch.zeros(out)}
        project = lambda rows: fn(proj, rows)  # noqa: E731
    start, text_cpu = time.perf_counter(), _cpu_seconds()
    if merge:
        sets = stream_sets(plan, encodings, "cond", project, padding == "masked").erase
    else:
        sets = _unmerged(plan, encodings, project, padding)
    text_seconds, text_cpu = time.perf_counter() - start, _cpu_seconds() - text_cpu
    shapes = {f"blocks.{b}.m{i}.weight": s for b in range(blocks) for i, s in enumerate(per_block)}
    streams = [("text", sets, LazyWeights(shapes))]
    if name.startswith("hidream"):  # one stream per Llama-3.1 layer, with the projections that read it; as the pack
        # does, each stream's text side is built when its matrices are edited and dropped after
        for layer in sorted(set(HIDREAM_LLAMA_LAYERS)):
            plan_k, encoded_k = t5_like_encodings(name, seed=1 + layer)
            # the encoder's output, held for the whole edit as the pack holds a per-layer output (lossless_narrow)
            held = {t: Encoding(e.rows[:1].clone(), e.length, e.segments, None,
                                lossless_narrow(e.slice(0, e.length)[None]), e.segments[0])
                    for t, e in encoded_k.items()}
            del encoded_k
            mine = {f"caption_projection.{i}.weight": per_block[0]
                    for i, k in enumerate(HIDREAM_LLAMA_LAYERS) if k == layer}
            build = (lambda p, h: lambda: stream_sets(p, h, "layers:0").erase)(plan_k, held)
            streams.append((f"llama layer {layer}", build, LazyWeights(mine)))
    if pooled is not None:
        pooled_sets = stream_sets(plan, encodings, "pooled").erase
        streams.append(("pooled", pooled_sets, LazyWeights({"pooled.weight": pooled})))
    cfg = ScaPreConfig()
    patch_mb = dense_mb = 0.0
    held: list = []
    rights: list = []
    _sync(device)
    start = time.perf_counter()
    cpu0 = _cpu_seconds()
    lazy_seconds, lazy_cpu = 0.0, 0.0
    for _, cs, weights in streams:
        if callable(cs):  # built now: text-side time, counted with the text side
            built, built_cpu = time.perf_counter(), _cpu_seconds()
            cs = cs()
            lazy_seconds += time.perf_counter() - built
            lazy_cpu += _cpu_seconds() - built_cpu
        for _, change in erase_iter(weights, cs, cfg, device=device, changes=True, compact=compact):
            # the pack keeps each change as a patch for as long as the edited MODEL lives: held here too, so that
            # the peak counts them; a compact change's right factor is one tensor for every matrix of a stream
            dense_mb += math.prod(change.shape) * 4 / 2**20
            if isinstance(change, LowRankChange):
                patch_mb += change.nbytes(shared=True) / 2**20
                if all(r is not change.right for r in rights):
                    rights.append(change.right)
                    patch_mb += change.right.numel() * change.right.element_size() / 2**20
            else:
                patch_mb += change.numel() * change.element_size() / 2**20
            held.append(change)
        del cs
    _sync(device)
    seconds = time.perf_counter() - start - lazy_seconds
    cpu = _cpu_seconds() - cpu0 - lazy_cpu
    text_seconds, text_cpu = text_seconds + lazy_seconds, text_cpu + lazy_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "case": name, "device": device, "merge": merge, "matrices": sum(len(w) for _, _, w in streams),
        "streams": len(streams),
        "concepts": sets.num_concepts, "d": sets.dim, "text_rows": length,
        "context_rows_mean": round(sum(x.shape[0] for x in sets.contexts) / sets.num_concepts, 1),
        "route": route(sets, cfg), "load_before": load0, "load_after": round(os.getloadavg()[0], 2),
        "text_seconds": round(text_seconds, 2), "seconds": round(seconds, 2),
        "total_seconds": round(text_seconds + seconds, 2), "text_cpu_seconds": round(text_cpu, 2),
        "cpu_seconds": round(cpu, 2),
        "peak_rss_above_start_mb": round(peak - rss0, 1), "patches_mb": round(patch_mb, 1),
        "patches_dense_float32_mb": round(dense_mb, 1), "compact": compact,
        "threads": torch.get_num_threads(),
    }
    if exact:
        key = next(iter(shapes))
        w = {key: streams[0][2][key].float()}
        result["rel_err_vs_float64"] = exactness(w, sets, cfg, [key], device)
        (_, dense), = erase_iter(w, sets, cfg, device=device, changes=True)
        (_, small), = erase_iter(w, sets, cfg, device=device, changes=True, compact=True)
        if isinstance(small, LowRankChange):  # the compact form against the dense change, made dense
            result["compact_rank"] = small.rank
            result["compact_rel_err_vs_dense"] = float((small.dense(w[key]) - dense).norm() / dense.norm())
    if not merge:  # the merged edit of the first matrix against this one
        key = next(iter(shapes))
        w = {key: streams[0][2][key].float()}
        merged = stream_sets(plan, encodings, "cond", project, padding == "masked").erase
        a, b = erase(w, merged, cfg, device=device)[key], erase(w, sets, cfg, device=device)[key]
        result["rel_diff_vs_merged"] = float((a - b).norm() / (b - w[key]).norm())
    return result


def _unmerged(plan, encodings, project, padding) -> ConceptSet:
    """The contexts of ``stream_sets`` with every padding row kept: the same aligned pairs, not merged."""
    from comfyui_scapre.nodes.glue.encode import _entries, _projected

    enc = {t: _projected(e, "cond", project) if project is not None else e for t, e in encodings.items()}
    vecs, empty, xs, ys = [], None, [], []
    for text in plan.prompts:
        for _, c, e, x, y in _entries(enc[text], enc[""], enc[""], "cond", padding == "masked"):
            vecs.append(c)
            empty = e
            xs.append(x.clone())
            ys.append(y.clone())
    return ConceptSet(concept_vecs=torch.stack(vecs), empty_vec=empty, contexts=tuple(xs), targets=tuple(ys),
                      guides=tuple(ys), guide_index=tuple(range(len(ys))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=[*CASES, *DIT_CASES],
                        help="SD cases (default all of them) and DiT cases: " + ", ".join(DIT_CASES))
    parser.add_argument("--no-merge", action="store_true",
                        help="DiT cases: keep every padding row (the cost merging saves; same result)")
    parser.add_argument("--exact", action="store_true",
                        help="DiT cases: also the float32-vs-float64 error and the compact change against the dense")
    parser.add_argument("--dense-patches", action="store_true",
                        help="DiT cases: hold every change as a dense float32 matrix (as before compact changes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive-rows", type=int, default=4, help="rows per shape timed with the per-row solve")
    parser.add_argument("--exactness-only", action="store_true",
                        help="only rel_err_vs_float64, through the public erase API (no timing)")
    parser.add_argument("--node-only", action="store_true",
                        help="only the edit alone and the node path (edit + report), no per-row solve or exactness")
    parser.add_argument("--report-tokens", choices=["key", "full", "both"], default="both",
                        help="report scope(s) the node path is timed with (default both)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scopes = ["key", "full"] if args.report_tokens == "both" else [args.report_tokens]
    if args.one:
        if args.one in DIT_CASES:
            result = run_dit_case(args.one, args.device, merge=not args.no_merge, exact=args.exact,
                                  compact=not args.dense_patches)
        elif args.exactness_only:
            result = run_exactness(args.one, args.device)
        elif args.node_only:
            result = run_node_only(args.one, args.device, scopes)
        else:
            result = run_case(args.one, args.device, args.naive_rows, scopes)
        print(json.dumps(result), flush=True)
        return
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one", case, "--device", args.device, "--naive-rows", str(args.naive_rows),
               "--report-tokens", args.report_tokens]
        cmd += ["--exactness-only"] if args.exactness_only else []
        cmd += ["--node-only"] if args.node_only else []
        cmd += ["--no-merge"] if args.no_merge else []
        cmd += ["--exact"] if args.exact else []
        cmd += ["--dense-patches"] if args.dense_patches else []
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
