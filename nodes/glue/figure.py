"""The report figure: efficacy per erased prompt, drift per watched prompt, and where in the UNet
the edit landed. Drawn with matplotlib (Agg, no display); readable from 1 to 1000+ prompts.

Large lists switch from one labelled bar per prompt to a sorted curve with the worst prompts
named, and the per-matrix heatmap pools prompts into percentile rows, so nothing overlaps.
"""

from __future__ import annotations

import numpy as np

from ...scapre_core.report import EditReport, PromptResult, short_name

#: Above this many prompts a panel shows a sorted curve instead of one bar per prompt.
MAX_BARS = 30
#: Above this many erased prompts the heatmap shows percentile rows instead of one row each.
MAX_HEAT_ROWS = 24
WIDTH_PX = 1600
DPI = 100


class FigureUnavailable(RuntimeError):
    """matplotlib is missing or failed; the report's table is still available."""


def render(report: EditReport) -> np.ndarray:
    """The figure as an ``[H, W, 3]`` float32 array in [0, 1]."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib import pyplot as plt
    except Exception as err:  # ImportError, or a broken installation
        raise FigureUnavailable(f"matplotlib is not available ({err}); install it with "
                                "'pip install matplotlib' to get the report figure") from err

    erased = sorted(report.group("erase"), key=lambda p: p.efficacy)
    watched = sorted(report.group("probe") + report.group("preserve"), key=lambda p: -p.drift)
    bars = [len(erased) if len(erased) <= MAX_BARS else 12, len(watched) if len(watched) <= MAX_BARS else 12]
    top_h = max(3.0, 0.22 * max(bars) + 1.6)
    heat_rows = _heat_rows(report)
    heat_h = max(2.4, 0.24 * len(heat_rows) + 1.8)
    fig = plt.figure(figsize=(WIDTH_PX / DPI, top_h + heat_h + 0.8), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[top_h, heat_h])
    s = report.summary()
    fig.suptitle(f"ScaPre edit: {s['concepts']} concept(s), {s['prompts']} prompt(s), {s['matrices']} matrices, "
                 f"{s['seconds']} s" + _weights_line(report), fontsize=13)
    _prompt_panel(fig.add_subplot(grid[0, 0]), erased, "efficacy", "Erased prompts: efficacy (1 = at the guide)",
                  "#3b7dd8", (0.0, 1.0))
    if watched:
        high = max(0.05, max(p.drift for p in watched) * 1.1)
        _prompt_panel(fig.add_subplot(grid[0, 1]), watched, "drift",
                      "Probes and preserved prompts: drift (0 = untouched)", "#d8643b", (0.0, high))
    else:
        ax = fig.add_subplot(grid[0, 1])
        ax.axis("off")
        ax.text(0.5, 0.5, "No probes or preserve prompts.\nAdd some in ScaPre Concept Encode\nto watch collateral.",
                ha="center", va="center", fontsize=11, color="#555555")
    _heatmap(fig, fig.add_subplot(grid[1, :]), report, heat_rows)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    plt.close(fig)
    return image


def _prompt_panel(ax, prompts: list[PromptResult], attr: str, title: str, color: str, limits) -> None:
    ax.set_title(title, fontsize=11)
    values = np.array([getattr(p, attr) for p in prompts], dtype=float)
    if not len(values):
        ax.axis("off")
        return
    values = np.where(np.isfinite(values), values, limits[1])
    if len(prompts) <= MAX_BARS:
        y = np.arange(len(prompts))
        ax.barh(y, values, color=color)
        ax.set_yticks(y, [_clip(p.text) for p in prompts], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(*limits)
        for yi, v in zip(y, values, strict=True):
            ax.text(min(v, limits[1]) + 0.01 * limits[1], yi, f"{v:.2f}", va="center", fontsize=7)
        return
    x = np.arange(1, len(values) + 1)
    ax.plot(x, values, color=color, lw=1.5)
    ax.fill_between(x, 0, values, color=color, alpha=0.2)
    ax.set_xlim(1, len(values))
    ax.set_ylim(*limits)
    ax.set_xlabel(f"{len(values)} prompts, sorted (worst first)", fontsize=9)
    worst = "\n".join(f"{_clip(p.text, 32)}: {v:.2f}" for p, v in zip(prompts[:5], values[:5], strict=True))
    rising = values[-1] >= values[0]
    ax.text(0.98, 0.04 if rising else 0.96, "worst:\n" + worst, transform=ax.transAxes, ha="right",
            va="bottom" if rising else "top", fontsize=8, family="monospace",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "#999999"})


def _heat_rows(report: EditReport) -> list[tuple[str, np.ndarray, str]]:
    """(label, values per matrix, kind) rows: weight change, erased prompts (or their percentiles),
    then watched prompts (or their percentiles)."""
    rows = [("weight change", np.array([m.rel_change for m in report.matrices], dtype=float), "change")]
    per = (report.info.get("weights") or {}).get("per_matrix") or {}
    if per:  # how much of each matrix's edit the sampled weights carry (nodes/glue/formats.py)
        values = [(per.get(m.name) or [None])[0] for m in report.matrices]
        rows.append(("edit surviving (sampled)", np.array([np.nan if v is None else v for v in values], dtype=float),
                     "efficacy"))
    erased = report.group("erase")
    rows += _group_rows(erased, "efficacy_per_matrix", "efficacy", "erased")
    watched = report.group("probe") + report.group("preserve")
    rows += _group_rows(watched, "drift_per_matrix", "drift", "watched")
    return rows


def _group_rows(prompts, attr: str, kind: str, name: str) -> list[tuple[str, np.ndarray, str]]:
    if not prompts:
        return []
    data = np.array([getattr(p, attr) for p in prompts], dtype=float)
    data = np.where(np.isfinite(data), data, np.nan)
    if len(prompts) <= MAX_HEAT_ROWS:
        return [(f"{_clip(p.text, 24)} ({kind})", row, kind) for p, row in zip(prompts, data, strict=True)]
    pick = np.nanmin if kind == "efficacy" else np.nanmax
    out = [(f"{name}: worst {kind}", pick(data, axis=0), kind)]
    for q in (25, 50, 75):
        out.append((f"{name}: {q}th pct {kind}", np.nanpercentile(data, q, axis=0), kind))
    return out


def _heatmap(fig, ax, report: EditReport, rows) -> None:
    names = [short_name(m.name) for m in report.matrices]
    ax.set_title("Per matrix along the UNet (input -> middle -> output blocks)", fontsize=11)
    if not names:
        ax.axis("off")
        return
    data = np.vstack([r[1] for r in rows])
    kinds = np.array([r[2] for r in rows])
    scaled = np.empty_like(data)
    for kind in set(kinds):
        block = data[kinds == kind]
        top = 1.0 if kind == "efficacy" else max(np.nanmax(block) if np.isfinite(block).any() else 0.0, 1e-9)
        scaled[kinds == kind] = block / top
    im = ax.imshow(scaled, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(np.arange(len(rows)), [r[0] for r in rows], fontsize=8)
    step = max(1, int(np.ceil(len(names) / 48)))
    ax.set_xticks(np.arange(0, len(names), step), names[::step], rotation=90, fontsize=7)
    cbar = fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    cbar.set_label("efficacy; drift and change relative to their largest value", fontsize=8)


def _weights_line(report: EditReport) -> str:
    """Second title line: the weight format and how much of the edit the sampled weights carry."""
    w = report.info.get("weights") or {}
    if w.get("surviving") is None:
        return ""
    error = w.get("error")
    return (f"\nweights {w.get('format')} (compute {w.get('compute_dtype')}), edit applied as "
            f"{w.get('methods')}: surviving {w['surviving']:.3f}, error "
            + ("inf" if error is None else f"{100 * error:.2g} %") + " of the edit")


def _clip(text: str, n: int = 36) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"
