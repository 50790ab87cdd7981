"""The evaluation's page: one self-contained ``index.html`` (inline CSS and SVG plots, no scripts, no
network) beside ``images/``, which it shows by relative path."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KIND_COLOURS = {"erased": "#c0392b", "kept": "#2471a3"}

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; } h3 { font-size: 15px; margin: 20px 0 8px; }
table { border-collapse: collapse; margin: 8px 0; background: #fff; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; } td.num { text-align: right; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; width: 276px; }
figure .pair { display: flex; gap: 4px; } figure img { width: 134px; height: auto; image-rendering: pixelated; }
figcaption { font-size: 12px; margin-top: 4px; overflow-wrap: anywhere; }
.kind-erased { color: #c0392b; } .kind-kept { color: #2471a3; } .muted { color: #777; }
"""


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bars(rows: list[tuple[str, str, float]], width: int = 640) -> str:
    """Horizontal bars of mean change (0..1) per (label, kind)."""
    bar_h, gap, label_w = 18, 6, 220
    height = len(rows) * (bar_h + gap) + 30
    scale = width - label_w - 60
    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="mean image change per class">']
    for i, (label, kind, value) in enumerate(rows):
        y = i * (bar_h + gap) + 4
        w = max(0.0, min(1.0, value)) * scale
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end" font-size="12">{_e(label)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                     f'fill="{KIND_COLOURS.get(kind, "#888")}"><title>{_e(label)}: {_f(value)}</title></rect>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 5}" font-size="12">{_f(value)}</text>')
    axis_y = len(rows) * (bar_h + gap) + 8
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{axis_y}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{axis_y + 14}" font-size="11" text-anchor="middle">{tick}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(records: list[Mapping[str, Any]], width: int = 640, height: int = 180, bins: int = 20) -> str:
    """Counts of per-prompt change in ``bins`` bins over [0, 1], one series per kind."""
    counts = {kind: [0] * bins for kind in KIND_COLOURS}
    for r in records:
        counts.setdefault(r["kind"], [0] * bins)[min(bins - 1, int(max(0.0, min(1.0, r["change"])) * bins))] += 1
    top = max([max(c) for c in counts.values()] + [1])
    plot_h, left = height - 30, 30
    bw = (width - left - 10) / bins
    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="distribution of image change">']
    series = [k for k in counts if any(counts[k])]
    for s, kind in enumerate(series):
        for b, n in enumerate(counts[kind]):
            if n:
                h = n / top * plot_h
                sw = bw / max(1, len(series))
                x = left + b * bw + s * sw
                colour = KIND_COLOURS.get(kind, "#888")
                parts.append(f'<rect x="{x:.1f}" y="{plot_h - h:.1f}" width="{sw - 1:.1f}" height="{h:.1f}" '
                             f'fill="{colour}"><title>{kind}: {n}</title></rect>')
    for tick in (0.0, 0.5, 1.0):
        x = left + tick * bins * bw
        parts.append(f'<text x="{x:.1f}" y="{plot_h + 16}" font-size="11" text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="4" y="12" font-size="11">{top}</text></svg>')
    return "".join(parts)


def render(results: Mapping[str, Any]) -> str:
    """The page's HTML for the data of ``results.json``."""
    summary, records = results["summary"], results["records"]
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>ScaPre evaluation: {_e(results['edit'])}</title><style>{CSS}</style></head><body>",
           f"<h1>ScaPre evaluation: {_e(results['edit'])}</h1>",
           f"<p>Original <b>{_e(results['base'])}</b>, edited with <b>{_e(results['edit'])}</b> "
           f"({_e(results['edit_kind'])}). {results['rendered']} of {results['prompts']} prompt(s) rendered; "
           f"erased concepts: {_e(', '.join(results['erased']) or 'none given')}.</p>",
           "<p class='muted'>change = 1 − SSIM between the original and the edited image of a prompt (0: the same "
           "image, 1: unrelated). Erasure: mean change of erased prompts; retention: 1 − mean change of kept "
           "prompts; gap: erasure − (1 − retention).</p>"]
    s = results["sampling"]
    out.append("<p class='muted'>" + _e(", ".join(f"{k} {v!r}" for k, v in s.items())) + "</p>")

    out.append("<h2>Summary</h2><table id='summary'><tr><th>measure</th><th>value</th></tr>")
    for name in ("erasure", "retention", "gap"):
        out.append(f"<tr><td>{name}</td><td class='num'>{_f(summary.get(name))}</td></tr>")
    out.append("</table><table id='per-kind'><tr><th>kind</th><th>prompts</th><th>mean change</th></tr>")
    for kind, group in summary["per_kind"].items():
        out.append(f"<tr><td class='kind-{_e(kind)}'>{_e(kind)}</td><td class='num'>{group['prompts']}</td>"
                   f"<td class='num'>{_f(group['change'])}</td></tr>")
    out.append("</table>")

    out.append("<h2>Per class</h2><table id='per-class'><tr><th>class</th><th>kind</th><th>prompts</th>"
               "<th>mean change</th></tr>")
    bars = []
    for cls, kinds in summary["per_concept"].items():
        for kind, group in kinds.items():
            out.append(f"<tr><td>{_e(cls or '(no class)')}</td><td class='kind-{_e(kind)}'>{_e(kind)}</td>"
                       f"<td class='num'>{group['prompts']}</td><td class='num'>{_f(group['change'])}</td></tr>")
            if group["change"] is not None:
                bars.append((cls or "(no class)", kind, group["change"]))
    out.append("</table>")
    if bars:
        out.append("<h3>Mean change per class</h3>" + _bars(bars))
    if records:
        out.append("<h3>Distribution of change per prompt</h3>" + _histogram(list(records)))

    out.append("<h2>Images</h2><p class='muted'>Left: original, right: edited, same seed.</p>")
    by_class: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_class.setdefault(r["class"] or "(no class)", []).append(r)
    for cls, rows in by_class.items():
        out.append(f"<h3>{_e(cls)} <span class='kind-{_e(rows[0]['kind'])}'>({_e(rows[0]['kind'])})</span></h3>"
                   "<div class='grid'>")
        for r in rows:
            imgs = "".join(f"<img src='{_e(r['images'][n])}' alt='{n}: {_e(r['prompt'])}' loading='lazy'>"
                           for n in ("original", "edited"))
            out.append(f"<figure><div class='pair'>{imgs}</div><figcaption>#{r['row']} {_e(r['prompt'])} "
                       f"<span class='muted'>seed {r['evaluation_seed']}</span> · change <b>{_f(r['change'])}</b>"
                       "</figcaption></figure>")
        out.append("</div>")
    failed = results.get("failed") or {}
    if failed:
        out.append("<h2>Failed</h2><table id='failed'><tr><th>row</th><th>error</th></tr>")
        out += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in failed.items()]
        out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_page(out: Path, results: Mapping[str, Any]) -> Path:
    path = out / "index.html"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(render(results), encoding="utf-8")
    os.replace(tmp, path)
    return path
