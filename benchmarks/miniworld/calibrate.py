"""Does the edit report predict the pictures? Calibrate its efficacy against forgetting in the miniature worlds.

For every world, concept set, method and erased concept this pairs two figures of the same edit:

* the report's efficacy of the concept's erase prompt (``scapre_core.report.ReportBuilder`` on the edited
  weights, the node's default token scope ``"key"``; what ScaPre Erase shows before anything is sampled);
* the share of pictures naming that concept in which the judge still reads it (as ``bench.py`` counts
  ``forget``, per concept instead of pooled over the set).

and a candidate predictor, ``efficacy_context``: the same measure on the pictures' own prompts, each guided to itself
without the concept's words. It then reports how well each separates concepts that are gone (forget <= ``GONE``)
from concepts still drawn (forget >= ``DRAWN``): per world the thresholds a verdict would need (``forgotten_at``:
every point at or above it gone; ``drawn_below``: every point below it still drawn) and, pooled, the share of
points gone above and still drawn below each threshold of a grid. Usage (repo root)::

    python benchmarks/miniworld/calibrate.py                       # the four worlds, default methods
    python benchmarks/miniworld/calibrate.py --worlds clip64 --seeds 0 --methods "custom x1" "uce x1"

Writes ``calibration.json`` and ``calibration.md`` (every point and the thresholds) and ``calibration.png`` to
``--out`` (default ``${SCAPRE_MINIWORLD_OUT:-<cache>/results}/calibration``), outside the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``miniworld`` (and through it ``scapre_core``) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "miniworld"
    import miniworld  # noqa: F401

from scapre_core import ConceptSet, erase
from scapre_core.evaluation.recovery import wilson
from scapre_core.focus import toward_look_alikes
from scapre_core.report import DRAWN_BELOW, FORGOTTEN_AT, VERDICTS, ReportBuilder, verdict

from .bench import CONCEPT_SETS, SIZES, Method, _reads_concept, build_case
from .evaluate import Ask, concept_set, draw, focus_concept_set, read, unet_with
from .model import cross_attention_weights
from .train import JudgeConfig, cache_dir, get_judge
from .world import prompt
from .worlds import WORLD_NAMES, load

log = logging.getLogger("miniworld.calibrate")

#: A concept counts as gone when the judge reads it in at most this share of its pictures, as still drawn from this
#: share on (between them: partly forgotten).
GONE, DRAWN = 0.1, 0.5

#: The methods calibrated by default: the default preset and the precise one across the strength dial, the
#: baseline and a published small-scale setting, so that efficacy spans the whole range.
DEFAULT_METHODS = ("custom x1", "custom x3", "custom x10", "precise x1", "precise x3", "uce x1", "few-objects x1",
                   "explicit x1")


def parse_method(label: str) -> Method:
    preset, _, strength = label.rpartition(" x")
    if not preset:
        raise ValueError(f"method {label!r}: write '<preset> x<strength>', e.g. 'custom x1'")
    return Method(label, preset, strength=float(strength))


def efficacies(world, cs, method: Method, seed: int, context: ConceptSet
               ) -> tuple[dict[str, float], list[float], dict[str, torch.Tensor]]:
    """After ``method``'s edit: the report's efficacy of each erase prompt of ``cs`` by prompt text, the efficacy
    of each prompt of ``context`` (the pictures' prompts, :func:`context_set`) in order, and the edited weights."""
    weights = cross_attention_weights(world.unet)
    edited = erase(weights, cs, method.config(seed))
    out = []
    for group, tokens in ((cs, "key"), (context, "key"), (cs, "full")):
        builder = ReportBuilder({"erase": group}, tokens=tokens)
        for name, w0 in weights.items():
            builder.add(name, w0, edited[name])
        out.append(builder.build().group("erase"))
    full = {p.text: p.efficacy for p in out[2]}
    return {p.text: (p.efficacy, full[p.text]) for p in out[0]}, [p.efficacy for p in out[1]], edited


def without_concept(ask: Ask, concept: str) -> str:
    """``ask``'s prompt without the words of ``concept`` ("a striped red square", "red" -> "a striped square")."""
    words = set(concept.split())
    return prompt(None if ask.colour in words else ask.colour, None if ask.shape in words else ask.shape,
                  "solid" if ask.style in words else ask.style, ask.template)


def context_set(world, asks: list[Ask], concepts: list[str]) -> ConceptSet:
    """The pictures' own prompts as erase prompts, each guided to itself without the erased concept's words ("a red
    square" -> "a square"): how far an edit moved the prompts that are drawn, a candidate predictor of the
    pictures (``efficacy_context``), where the report's efficacy reads the concept prompt as typed."""
    texts = [a.text for a in asks]
    guides = [without_concept(a, c) for a, c in zip(asks, concepts, strict=True)]
    enc, last = world.encode(texts)
    genc, glast = world.encode(guides)
    (empty,), _ = world.encode([""])
    return ConceptSet.from_embeddings(list(enc), last, list(genc), glast, empty, erase_texts=texts,
                                      guide_texts=guides)


def calibrate_set(world, judge, set_name: str, methods: list[Method], seeds: tuple[int, ...], steps: int,
                  guidance: float) -> list[dict]:
    concepts = CONCEPT_SETS[set_name]
    case = build_case(concepts, *SIZES[set_name])
    erased = [(a, c) for a, r, c in zip(case.asks, case.roles, case.concepts, strict=True) if r == "erased"]
    asks = [a for a, _ in erased]  # only the prompts that name an erased concept are drawn
    context = context_set(world, asks, [c for _, c in erased])
    sets = {"plain": concept_set(world, concepts)}
    if any(m.config(0).variant == "focus" or m.config(0).to_look_alike for m in methods):
        sets["focus"], _ = focus_concept_set(world, concepts)
    points = {(m, c): {"k": 0, "n": 0, "efficacy": [], "context": [], "full": []} for m in ["unedited", *methods]
              for c in concepts}
    for seed in seeds:
        reading = read(judge, draw(world, asks, seed, steps=steps, guidance=guidance), asks)
        for i, (_, concept) in enumerate(erased):
            points[("unedited", concept)]["k"] += int(_reads_concept(reading, i, concept))
            points[("unedited", concept)]["n"] += 1
            points[("unedited", concept)]["efficacy"] = [0.0]
            points[("unedited", concept)]["context"] = [0.0]
            points[("unedited", concept)]["full"] = [0.0]
        for m in methods:
            cs = sets["focus" if m.config(seed).variant == "focus" else "plain"]
            if m.config(seed).to_look_alike:  # above 1 the guides move towards the look-alikes, as ScaPre Erase does
                cs = toward_look_alikes(sets["plain"], sets["focus"], m.config(seed).to_look_alike)
            eff, eff_context, edited = efficacies(world, cs, m, seed, context)
            unet = unet_with(world, edited)
            reading = read(judge, draw(world, asks, seed, unet=unet, steps=steps, guidance=guidance), asks)
            for i, (_, concept) in enumerate(erased):
                p = points[(m, concept)]
                p["k"] += int(_reads_concept(reading, i, concept))
                p["n"] += 1
                p["context"].append(eff_context[i])
            for c in concepts:
                points[(m, c)]["efficacy"].append(eff[c][0])
                points[(m, c)]["full"].append(eff[c][1])
    out = []
    for (label, concept), p in points.items():
        label = getattr(label, "label", label)
        lo, hi = wilson(p["k"], p["n"])
        out.append({"set": set_name, "method": label, "concept": concept,
                    "efficacy": sum(p["efficacy"]) / len(p["efficacy"]),
                    "efficacy_context": sum(p["context"]) / len(p["context"]),
                    "efficacy_full": sum(p["full"]) / len(p["full"]), "forget": p["k"] / p["n"], "k": p["k"],
                    "n": p["n"], "lo": round(lo, 4), "hi": round(hi, 4)})
        log.info("%s %-16s %-16s efficacy %.3f in context %.3f forget %.2f (%d/%d)", set_name, label, concept,
                 out[-1]["efficacy"], out[-1]["efficacy_context"], out[-1]["forget"], p["k"], p["n"])
    drawn = {p["concept"] for p in out if p["method"] == "unedited" and p["forget"] >= DRAWN}
    for p in out:  # a concept the unedited model rarely draws says nothing about what an edit removed
        p["counts"] = p["concept"] in drawn and p["method"] != "unedited"
    return out


PREDICTORS = ("efficacy", "efficacy_context", "efficacy_full")


def thresholds(points: list[dict], key: str = "efficacy") -> dict:
    """``forgotten_at``: the lowest ``key`` from which every point was gone (``None`` when the highest one was not);
    ``drawn_below``: the highest ``key`` below which every point was still drawn. Only points that count (an edit of
    a concept the unedited model draws)."""
    points = sorted((p for p in points if p["counts"]), key=lambda p: p[key])
    forgotten_at = None
    for p in reversed(points):
        if p["forget"] > GONE:
            break
        forgotten_at = round(p[key], 4)
    drawn_below = None
    for p in points:
        if p["forget"] < DRAWN:
            drawn_below = round(p[key], 4)
            break
    return {"forgotten_at": forgotten_at, "drawn_below": drawn_below, "points": len(points),
            "gone": sum(p["forget"] <= GONE for p in points), "drawn": sum(p["forget"] >= DRAWN for p in points)}


#: Thresholds of the separation table.
GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def separation(points: list[dict], key: str) -> list[dict]:
    """Per threshold of :data:`GRID`: of the points at or above it, how many were gone and how many still drawn;
    of those below, the same. A verdict would need nearly all above gone and nearly all below drawn."""
    points = [p for p in points if p["counts"]]
    rows = []
    for t in GRID:
        above = [p for p in points if p[key] >= t]
        below = [p for p in points if p[key] < t]
        rows.append({"threshold": t, "above": len(above), "above_gone": sum(p["forget"] <= GONE for p in above),
                     "above_drawn": sum(p["forget"] >= DRAWN for p in above), "below": len(below),
                     "below_gone": sum(p["forget"] <= GONE for p in below),
                     "below_drawn": sum(p["forget"] >= DRAWN for p in below)})
    return rows


def verdict_table(per_world: dict[str, list[dict]], key: str = "efficacy"
                  ) -> dict[str, dict[str, dict[str, int]]]:
    """What the shipped verdict (``scapre_core.report.verdict``) said against what the pictures showed: per world
    and pooled (``"all worlds"``), per verdict, how many points were gone, partly forgotten and still drawn. ``key``:
    the report's efficacy on the key tokens (``"efficacy"``, what the verdict reads) or on every token
    (``"efficacy_full"``, the legacy node's scope, to see whether the same thresholds would hold there)."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for w, points in [*per_world.items(), ("all worlds", [p for v in per_world.values() for p in v])]:
        rows = {label: {"points": 0, "gone": 0, "between": 0, "drawn": 0} for label in VERDICTS}
        for p in points:
            if not p["counts"]:
                continue
            row = rows[verdict(p[key])]
            row["points"] += 1
            row["gone" if p["forget"] <= GONE else "drawn" if p["forget"] >= DRAWN else "between"] += 1
        table[w] = rows
    return table


def markdown(per_world: dict[str, list[dict]], fitted: dict, separated: dict) -> str:
    lines = ["# The report's efficacy against forgetting in images", "",
             f"Gone: forget <= {GONE}; still drawn: forget >= {DRAWN}. `efficacy`: the report's, on the concept "
             "prompt as typed (key tokens); `efficacy_context`: the same measure on the pictures' prompts, each "
             "guided to itself without the concept.", ""]
    for key in PREDICTORS:
        lines += [f"## {key}", "", "| world | forgotten_at / drawn_below (fitted on the world alone) | "
                  "gone / drawn / points |", "|---|---|---|"]
        for w, t in fitted[key]["per_world"].items():
            lines.append(f"| {w} | {t['forgotten_at']} / {t['drawn_below']} | {t['gone']} / {t['drawn']} / "
                         f"{t['points']} |")
        t = fitted[key]["pooled"]
        lines += [f"| all worlds | {t['forgotten_at']} / {t['drawn_below']} | {t['gone']} / {t['drawn']} / "
                  f"{t['points']} |", "", "| threshold | at or above: gone / still drawn / points | below: still "
                  "drawn / gone / points |", "|---:|---|---|"]
        for r in separated[key]:
            lines.append(f"| {r['threshold']} | {r['above_gone']} / {r['above_drawn']} / {r['above']} | "
                         f"{r['below_drawn']} / {r['below_gone']} / {r['below']} |")
        lines.append("")
    lines += [f"## The shipped verdict (efficacy >= {FORGOTTEN_AT}: likely forgotten; < {DRAWN_BELOW}: likely still "
              "drawn)", "", "| world | verdict | points | gone | partly | still drawn |",
              "|---|---|---:|---:|---:|---:|"]
    for key in ("efficacy", "efficacy_full"):
        for w, rows in verdict_table(per_world, key).items():
            for label, r in rows.items():
                lines.append(f"| {w}{'' if key == 'efficacy' else ' (every token)'} | {label} | {r['points']} | "
                             f"{r['gone']} | {r['between']} | {r['drawn']} |")
    lines += ["", "Every point (a concept the unedited model draws in under half of its pictures is left out: "
              "marked *):", "",
              "| world | set | method | concept | efficacy | efficacy_context | forget (k/n) [95 %] |",
              "|---|---|---|---|---:|---:|---|"]
    for w, points in per_world.items():
        for p in sorted(points, key=lambda p: (p["set"], p["concept"], p["efficacy"])):
            mark = "" if p["counts"] or p["method"] == "unedited" else " *"
            lines.append(f"| {w} | {p['set']} | {p['method']}{mark} | {p['concept']} | {p['efficacy']:.3f} | "
                         f"{p['efficacy_context']:.3f} | {p['forget']:.2f} ({p['k']}/{p['n']}) "
                         f"[{p['lo']:.2f}, {p['hi']:.2f}] |")
    return "\n".join(lines) + "\n"


def plot(path: Path, per_world: dict[str, list[dict]]) -> None:
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no calibration.png")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PREDICTORS), figsize=(5 * len(PREDICTORS), 4), sharey=True)
    for ax, key in zip(axes, PREDICTORS, strict=True):
        for w, points in per_world.items():
            points = [p for p in points if p["counts"]]
            ax.scatter([p[key] for p in points], [p["forget"] for p in points], label=w, s=14)
        ax.set_xlabel(key)
    axes[0].set_ylabel("forget (share of pictures still showing it)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, per_world: dict[str, list[dict]], settings: dict) -> None:
    """``calibration.json`` and ``calibration.md`` of ``per_world``'s points in ``out``."""
    every = [p for v in per_world.values() for p in v]
    fitted = {key: {"per_world": {k: thresholds(v, key) for k, v in per_world.items()},
                    "pooled": thresholds(every, key)} for key in PREDICTORS}
    separated = {key: separation(every, key) for key in PREDICTORS}
    (out / "calibration.json").write_text(json.dumps({
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()} | {"out": str(out)},
        "gone": GONE, "drawn": DRAWN, "points": per_world, "fitted": fitted, "separation": separated,
        "verdict": verdict_table(per_world), "verdict_full": verdict_table(per_world, "efficacy_full")},
        indent=1, default=str))
    (out / "calibration.md").write_text(markdown(per_world, fitted, separated))


def main() -> None:
    parser = argparse.ArgumentParser(description="Calibrate the report's efficacy against forgetting in images.")
    parser.add_argument("--worlds", nargs="+", default=["clip64", "clip64-seed1", "clip128", "blind64"],
                        choices=WORLD_NAMES)
    parser.add_argument("--sets", nargs="+", default=["1 colour", "1 shape", "1 style", "5 mixed"],
                        choices=list(CONCEPT_SETS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="'<preset> x<strength>' labels")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="instead of measuring: pool the calibration.json of these folders (runs of other "
                        "worlds, e.g. on two cores) into --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or Path(os.environ.get("SCAPRE_MINIWORLD_OUT", cache_dir() / "results")) / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    per_world: dict[str, list[dict]] = {}
    if args.merge:
        for folder in args.merge:
            per_world |= json.loads((folder / "calibration.json").read_text())["points"]
        write(out, per_world, vars(args))
    else:
        methods = [parse_method(m) for m in args.methods]
        judge, _ = get_judge(JudgeConfig())
        for w in args.worlds:
            world = load(w)
            per_world[w] = []
            for s in args.sets:
                per_world[w] += calibrate_set(world, judge, s, methods, tuple(args.seeds), args.steps, args.guidance)
            write(out, per_world, vars(args))
    plot(out / "calibration.png", per_world)
    sys.stdout.write((out / "calibration.md").read_text())
    log.info("wrote %s in %.0f s", out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
