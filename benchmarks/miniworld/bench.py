"""Forgetting measured in images, in the miniature worlds: erase 1, 5 and 20 concepts with every method, draw
fixed seeds, and count with the judge what each world's model still draws.

Every registered world (``worlds.py``; ``--worlds`` picks some) is measured before any edit (the judge's reading of
all 240 colour x shape x style prompts, and the end-token probe of ``probe.py``), then per concept set and method,
pooled over seeds (each seed fixes the starting noise of every picture and the config's Informax seed; the original
and every edit draw from the same noise):

* ``forget``: share of pictures for prompts naming an erased concept in which the judge still reads it (the
  colour, shape or style; both colour and shape for a pair). Lower is better; the unedited row gives the start.
* ``keep_look``: for look-alike prompts (orange and pink when red is erased, ring for circle, dotted for striped;
  for a pair, the same colour with another shape or the same shape in another colour), the share of pictures
  in which everything the unedited model drew as asked from the same noise (colour, shape, style; see ``--keep``)
  is still drawn as asked; pictures where the unedited model got nothing right are left out. Paired, so that
  it measures the edit, not the world's own errors. 1 for the unedited model; higher is better.
* ``keep_other``: the same for prompts sharing no word, and no look-alike word, with the erased concepts.
* ``quality``: the judge's mean probability of the asked colour, shape and style on all kept prompts.

Each figure is given per world and pooled over the worlds (the pictures of all worlds counted together). Brackets
are 95 % Wilson intervals (quality: mean +- 1.96 standard errors); a pooled interval counts pictures, so the spread
between worlds shows in the per-world columns, not in it.

Methods: every preset of ``scapre_core.presets`` (the published settings, the pack's defaults and ``precise``, beyond
the paper, whose look-alikes and references are found in the world's own text space: ``focus_concept_set``), precise
also at 1.5 and 2 times its strength; uce (every published setting with ``--all-methods``) also with preserve prompts
(the look-alike words of the erased concepts, and for a pair its two words: what a user protects) and at half and
double strength (``preset_config(name, strength)``); ``--beyond`` adds settings beyond the paper (no Bures step);
``--sweep`` replaces them by every preset at every strength of ``SWEEP_STRENGTHS``. Usage (repo root)::

    python benchmarks/miniworld/bench.py --all-methods       # every world (trained when missing), set and method
    python benchmarks/miniworld/bench.py --worlds clip64 --sets "1 colour" --seeds 0
    # split over processes, then one table and plot:
    python benchmarks/miniworld/bench.py --worlds clip64 clip64-seed1 --out R/a
    python benchmarks/miniworld/bench.py --worlds clip128 blind64 --out R/b
    python benchmarks/miniworld/bench.py --merge R/a R/b --out R

Outputs (default ``${SCAPRE_MINIWORLD_OUT:-~/.cache/scapre-miniworld/results}``, outside the repository):
``results.json``, ``table.md`` (the worlds before any edit; per set an overview of every world and the pool, then
per world and pooled tables with intervals), ``grid-<world>-<set>.png`` (pictures of the first seed, one row per
method) and ``pareto.png`` (forgetting against retention, one panel per world and one pooled).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``miniworld`` (and through it ``scapre_core``) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "miniworld"
    import miniworld  # noqa: F401  (its __init__ imports benchmarks/pack.py, which registers scapre_core)

from scapre_core import ScaPreConfig
from scapre_core.evaluation.recovery import wilson
from scapre_core.focus import toward_look_alikes
from scapre_core.presets import BEYOND_THE_PAPER, PRESETS, preset_config

from .evaluate import (
    Ask,
    Reading,
    accuracy,
    asked_indices,
    concept_set,
    draw,
    edited_unet,
    focus_concept_set,
    read,
)
from .probe import probe_world
from .train import JudgeConfig, cache_dir, get_judge, load_world
from .world import COLOUR_NAMES, SHAPES, STYLES, lookalikes, prompt
from .worlds import WORLD_NAMES, load

log = logging.getLogger("miniworld.bench")

#: The published settings and the pack's defaults, by preset name (``scapre_core.presets``).
PUBLISHED: dict[str, ScaPreConfig] = {name: p.config for name, p in PRESETS.items()}
#: What a world must draw before any edit for its figures to mean something (the judge's reading of all 240
#: colour x shape x style prompts).
ACCURACY_TARGETS = {"colour": 0.9, "shape": 0.8}

CONCEPT_SETS: dict[str, list[str]] = {
    "1 colour": ["red"],
    "1 shape": ["circle"],
    "1 style": ["striped"],
    "5 mixed": ["red", "cyan", "circle", "striped", "green triangle"],
    # 5 mixed without its colour-shape pair: several single-word concepts of every kind at once
    "4 words": ["red", "cyan", "circle", "striped"],
    # for worlds that draw colours and styles but not shapes (the DiT worlds, docs/dit-worlds.md)
    "4 no shape": ["red", "cyan", "striped", "green"],
    "20 pairs": [f"{c} {s}" for c in ("red", "orange", "yellow", "green", "cyan")
                 for s in ("circle", "square", "triangle", "cross")],
}
#: Prompts per erased concept, per look-alike word (or pair), and unrelated prompts, for each set.
SIZES: dict[str, tuple[int, int, int]] = {
    "1 colour": (12, 6, 12), "1 shape": (12, 6, 12), "1 style": (12, 6, 12), "5 mixed": (4, 2, 10),
    "4 words": (4, 2, 10), "4 no shape": (4, 2, 10),
    "20 pairs": (1, 1, 10),
}


@dataclass(frozen=True)
class Method:
    label: str
    preset: str
    strength: float = 1.0
    preserve: bool = False
    changes: tuple[tuple[str, object], ...] = ()  # settings beyond the published ones (``--beyond``)

    def config(self, seed: int) -> ScaPreConfig:
        return preset_config(self.preset, self.strength, seed).replace(**dict(self.changes))


def methods(full: bool = False) -> list[Method]:
    """Every preset (the published settings, the defaults and those beyond the paper), the precise preset also at
    1.5 and 2 times its strength; with preserve prompts and at half and double strength: every published setting
    with ``full``, else uce (the baseline)."""
    with_options = [n for n in PUBLISHED if n not in BEYOND_THE_PAPER] if full else ["uce"]
    out = [Method(name, name) for name in PUBLISHED]
    out += [Method(f"precise x{s:g}", "precise", strength=s) for s in (1.5, 2.0)]
    out += [Method(f"{name} +preserve", name, preserve=True) for name in with_options]
    out += [Method(f"{name} x{s:g}", name, strength=s) for name in with_options if name != "uce" for s in (0.5, 2.0)]
    return out


#: Strengths of the strength sweep (``--sweep``); 1 is the preset itself, 0 needs no drawing (it is the unedited
#: model, which ``tests/test_strength.py`` checks bit for bit).
SWEEP_STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def sweep(presets: list[str] | None = None, strengths: tuple[float, ...] = SWEEP_STRENGTHS) -> list[Method]:
    """Every preset (or ``presets``) at every strength of the sweep, labelled ``"<preset> x<strength>"``."""
    return [Method(f"{name} x{s:g}", name, strength=s) for name in (presets or list(PUBLISHED)) for s in strengths]


def sweep_points(rows: dict[str, dict]) -> dict[str, list[tuple[float, dict]]]:
    """``{preset: [(strength, summary), ...]}`` from a set's rows labelled ``"<preset> x<strength>"`` (the
    unedited row is strength 0 of every preset)."""
    out: dict[str, list[tuple[float, dict]]] = {}
    for label, r in rows.items():
        m = re.fullmatch(r"(\S+) x([\d.]+)", label)
        if m and m.group(1) in PUBLISHED:
            out.setdefault(m.group(1), []).append((float(m.group(2)), r))
    for points in out.values():
        if "unedited" in rows:
            points.append((0.0, rows["unedited"]))
        points.sort(key=lambda p: p[0])
    return out


def beyond() -> list[Method]:
    """Settings beyond the paper, to look for a better one: no Bures step (it pulls every row back towards its
    original norm and direction), with and without preserve prompts."""
    out = []
    for name in ("explicit", "custom"):
        out.append(Method(f"{name} bures0", name, changes=(("bures_iters", 0),)))
        out.append(Method(f"{name} bures0 +preserve", name, preserve=True, changes=(("bures_iters", 0),)))
    return out


# --- what is asked -------------------------------------------------------------------------------------------

def _kind(word: str) -> str:
    if word in COLOUR_NAMES:
        return "colour"
    if word in SHAPES:
        return "shape"
    if word in STYLES[1:]:
        return "style"
    raise ValueError(f"{word!r} is no colour, shape or style of the world")


@dataclass(frozen=True)
class Case:
    """Asks with their role: ``erased`` (with the concept whose reading counts), ``look`` or ``other``."""

    asks: tuple[Ask, ...]
    roles: tuple[str, ...]
    concepts: tuple[str, ...]  # the erased concept of an ``erased`` ask, else ""
    preserve: tuple[str, ...]


def build_case(concepts: list[str], per_concept: int, per_lookalike: int, unrelated: int) -> Case:
    """Prompts for one concept set (deterministic). Erased prompts avoid every other erased and look-alike word;
    templates cycle through "a X", "a picture of a X", "a photo of a X", "an image of a X"."""
    singles = {w for c in concepts if " " not in c for w in [c]}
    pairs = {tuple(c.split()) for c in concepts if " " in c}
    look_words = {lw for w in singles for lw in lookalikes(w)} - singles
    touched = singles | look_words | {w for p in pairs for w in p}
    free_colours = [c for c in COLOUR_NAMES if c not in touched]
    free_shapes = [s for s in SHAPES if s not in touched]
    free_styles = ["solid", *(s for s in STYLES[1:] if s not in touched)]
    g = torch.Generator().manual_seed(1234)

    def pick(options: list, k: int) -> list:
        idx = torch.randperm(len(options), generator=g)
        return [options[int(idx[i % len(options)])] for i in range(k)]

    def asks_with(word: str, k: int) -> list[Ask]:
        kind = _kind(word)
        combos = [(c, s) for c in free_colours for s in free_shapes]
        out = []
        for i, (c, s) in enumerate(pick(combos, k)):
            t = 1 + i % 4
            if kind == "colour":
                out.append(Ask(word, s, "solid", t))
            elif kind == "shape":
                out.append(Ask(c, word, "solid", t))
            else:
                out.append(Ask(c, s, word, t))
        return out

    asks, roles, names = [], [], []
    for concept in concepts:
        words = concept.split()
        if len(words) == 1:
            new = asks_with(words[0], per_concept)
        else:
            new = [Ask(words[0], words[1], "solid", 1 + i % 4) for i in range(per_concept)]
        asks += new
        roles += ["erased"] * len(new)
        names += [concept] * len(new)
    for word in sorted(look_words, key=lambda w: (_kind(w), w)):
        new = asks_with(word, per_lookalike)
        asks += new
        roles += ["look"] * len(new)
        names += [""] * len(new)
    for c, s in sorted(pairs):
        near = [(c, o) for o in SHAPES if (c, o) not in pairs and o not in touched - {c, s}] + \
               [(o, s) for o in COLOUR_NAMES if (o, s) not in pairs and o not in touched - {c, s}]
        new = [Ask(a, b, "solid", 1 + i % 4) for i, (a, b) in enumerate(pick(near, per_lookalike))]
        asks += new
        roles += ["look"] * len(new)
        names += [""] * len(new)
    others = [(c, s, st) for c in free_colours for s in free_shapes for st in free_styles]
    new = [Ask(c, s, st, 1 + i % 4) for i, (c, s, st) in enumerate(pick(others, unrelated))] if others else []
    asks += new
    roles += ["other"] * len(new)
    names += [""] * len(new)
    preserve = sorted(look_words | ({w for p in pairs for w in p} - singles))
    return Case(tuple(asks), tuple(roles), tuple(names), tuple(preserve))


ATTRIBUTES = ("colour", "shape", "style")

#: The row of the unedited model drawing each erased prompt with the concept's words left out ("a red circle" with
#: "circle" erased: "a red"): what an edit that maps the concept to nothing draws. Its ``forget`` is the floor of such
#: an edit: a world draws some colour, shape or style when none is named (its default), and erasing that one to
#: nothing leaves it drawn. Kept prompts are drawn as by the unedited model (kept 1.00).
UNNAMED = "concept unnamed"


def unnamed_prompt(ask: Ask, concept: str) -> str:
    """``ask``'s prompt with the words of ``concept`` left out (its template kept)."""
    words = set(concept.split())
    return prompt(None if ask.colour in words else ask.colour, None if ask.shape in words else ask.shape,
                  "solid" if ask.style in words else ask.style, ask.template)


@dataclass(frozen=True)
class _Unnamed:
    """An erased ask to draw with its concept unnamed (only ``text`` is read by ``draw``)."""

    text: str


def _hits(reading: Reading, asks: list[Ask]) -> torch.Tensor:
    c, s, st = asked_indices(asks)
    return torch.stack([reading.colour == c, reading.shape == s, reading.style == st], dim=1)


def _reads_concept(reading: Reading, i: int, concept: str) -> bool:
    words = concept.split()
    if len(words) == 2:
        return (COLOUR_NAMES[int(reading.colour[i])], SHAPES[int(reading.shape[i])]) == tuple(words)
    kind = _kind(words[0])
    index = {"colour": (reading.colour, COLOUR_NAMES), "shape": (reading.shape, SHAPES),
             "style": (reading.style, STYLES)}[kind]
    return index[1][int(index[0][i])] == words[0]


@dataclass
class Tally:
    forget: list[int]
    look: list[int]
    other: list[int]
    quality: list[float]
    by_concept: dict[str, list[int]] = field(default_factory=dict)  # forget per erased concept

    @classmethod
    def empty(cls) -> Tally:
        return cls([], [], [], [])

    def add(self, case: Case, reading: Reading, asks: list[Ask], base: Reading, keep: tuple[str, ...]) -> None:
        """``base``: the unedited model's reading of the pictures drawn from the same noise; ``keep``: the
        attributes that retention counts."""
        cols = [ATTRIBUTES.index(a) for a in keep]
        now, before = _hits(reading, asks)[:, cols], _hits(base, asks)[:, cols]
        for i in range(len(asks)):
            role, concept = case.roles[i % len(case.roles)], case.concepts[i % len(case.roles)]
            if role == "erased":
                self.forget.append(int(_reads_concept(reading, i, concept)))
                self.by_concept.setdefault(concept, []).append(self.forget[-1])
                continue
            if bool(before[i].any()):  # kept: what the original drew right is still drawn right
                (self.look if role == "look" else self.other).append(int(bool(now[i][before[i]].all())))
            self.quality.append(float(reading.asked_prob[i]))

    def summary(self) -> dict:
        """Rates with their counts (``k`` of ``n``) and the quality's sums, so that summaries can be pooled
        (:func:`pool`)."""
        q = torch.tensor(self.quality, dtype=torch.float64)
        return _finish({"forget": {"k": sum(self.forget), "n": len(self.forget)},
                        "keep_look": {"k": sum(self.look), "n": len(self.look)},
                        "keep_other": {"k": sum(self.other), "n": len(self.other)},
                        "quality": {"sum": float(q.sum()), "sumsq": float((q * q).sum()), "n": len(q)},
                        "forget_by_concept": {c: {"k": sum(v), "n": len(v)} for c, v in self.by_concept.items()}})


MEASURES = ("forget", "keep_look", "keep_other", "quality")


def _finish(counts: dict) -> dict:
    """Add rates, Wilson intervals and the quality's mean and half-width to raw counts."""
    out = {}
    for key in MEASURES[:3]:
        k, n = counts[key]["k"], counts[key]["n"]
        lo, hi = wilson(k, n)
        out[key] = {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "lo": round(lo, 4), "hi": round(hi, 4)}
    if "forget_by_concept" in counts:  # the forget rate of each erased concept on its own prompts
        out["forget_by_concept"] = {c: {"k": v["k"], "n": v["n"], "rate": round(v["k"] / v["n"], 4) if v["n"] else None}
                                    for c, v in counts["forget_by_concept"].items()}
    q = counts["quality"]
    n, total, sumsq = q["n"], q["sum"], q["sumsq"]
    mean = total / n if n else float("nan")
    var = (sumsq - n * mean * mean) / (n - 1) if n > 1 else float("nan")
    half = 1.96 * math.sqrt(max(var, 0.0) / n) if n > 1 else float("nan")
    out["quality"] = {"sum": total, "sumsq": sumsq, "n": n, "mean": round(mean, 4), "half": round(half, 4)}
    return out


def pool(summaries: list[dict]) -> dict:
    """One summary from several (e.g. one per world): counts and sums added."""
    counts = {key: {"k": sum(s[key]["k"] for s in summaries), "n": sum(s[key]["n"] for s in summaries)}
              for key in MEASURES[:3]}
    counts["quality"] = {f: sum(s["quality"][f] for s in summaries) for f in ("sum", "sumsq", "n")}
    if all("forget_by_concept" in s for s in summaries):
        by: dict[str, dict[str, int]] = {}
        for s in summaries:
            for c, v in s["forget_by_concept"].items():
                by.setdefault(c, {"k": 0, "n": 0})
                by[c]["k"] += v["k"]
                by[c]["n"] += v["n"]
        counts["forget_by_concept"] = by
    return _finish(counts)


def pooled_results(per_world: dict[str, dict]) -> dict:
    """``{set: {method: summary}}`` pooled over the worlds that measured that set and method."""
    out: dict[str, dict] = {}
    for results in per_world.values():
        for set_name, rows in results.items():
            for label, summary in rows.items():
                out.setdefault(set_name, {}).setdefault(label, []).append(summary)
    return {set_name: {label: pool(items) for label, items in rows.items()} for set_name, rows in out.items()}


def run_set(world, judge, name: str, concepts: list[str], all_methods: list[Method], seeds: tuple[int, ...],
            images: int, sizes: tuple[int, int, int], steps: int, guidance: float,
            keep: tuple[str, ...]) -> tuple[dict, dict]:
    case = build_case(concepts, *sizes)
    asks = list(case.asks) * images
    log.info("%s: %d concepts, %d prompts (%d erased, %d look-alike, %d other) x %d images x %d seeds; preserve %s",
             name, len(concepts), len(case.asks), case.roles.count("erased"), case.roles.count("look"),
             case.roles.count("other"), images, len(seeds), list(case.preserve))
    tallies = {"unedited": Tally.empty(), UNNAMED: Tally.empty()} | {m.label: Tally.empty() for m in all_methods}
    n_case = len(case.asks)
    floor_asks = [_Unnamed(unnamed_prompt(a, case.concepts[i % n_case])) if case.roles[i % n_case] == "erased" else a
                  for i, a in enumerate(asks)]
    pictures = {}
    sets = {False: concept_set(world, concepts), True: concept_set(world, concepts, list(case.preserve))}
    chosen = {}
    # look-alikes found in the world's own text space: the focus variant's guides, and where strength above 1 moves
    # a published preset's guides to (as the nodes do with look_alikes auto)
    if any(m.config(0).variant == "focus" or m.config(0).to_look_alike for m in all_methods):
        sets["focus"], chosen = focus_concept_set(world, concepts)
        log.info("%s: focus guides %s", name, chosen["guides"])

    def text_side(m: Method):
        share = m.config(0).to_look_alike
        if share:
            return toward_look_alikes(sets[m.preserve], sets["focus"], share)
        return sets["focus"] if m.config(0).variant == "focus" and not m.preserve else sets[m.preserve]

    for seed in seeds:
        base = draw(world, asks, seed, steps=steps, guidance=guidance)
        base_reading = read(judge, base, asks)
        tallies["unedited"].add(case, base_reading, asks, base_reading, keep)
        unnamed = draw(world, floor_asks, seed, steps=steps, guidance=guidance)
        tallies[UNNAMED].add(case, read(judge, unnamed, asks), asks, base_reading, keep)
        if seed == seeds[0]:
            pictures["unedited"] = base[:len(case.asks)]
        for m in all_methods:
            start = time.perf_counter()
            unet = edited_unet(world, text_side(m), m.config(seed))
            imgs = draw(world, asks, seed, unet=unet, steps=steps, guidance=guidance)
            tallies[m.label].add(case, read(judge, imgs, asks), asks, base_reading, keep)
            if seed == seeds[0]:
                pictures[m.label] = imgs[:len(case.asks)]
            log.info("%s seed %d %-24s %.1f s  %s", name, seed, m.label, time.perf_counter() - start,
                     {k: v["rate"] if "rate" in v else v["mean"] for k, v in tallies[m.label].summary().items()
                      if k in MEASURES})
    return {k: t.summary() for k, t in tallies.items()}, {"case": case, "pictures": pictures, "focus": chosen}


def measure_world(world, judge, steps: int, guidance: float, with_accuracy: bool = True) -> dict:
    """A world before any edit: how it was trained, what it draws (the judge's reading of every colour x shape x
    style prompt, one picture each from two seeds) and how much of a concept its end tokens carry."""
    start = time.perf_counter()
    acc = accuracy(world, judge, seeds=(100, 101), steps=steps, guidance=guidance) if with_accuracy else {}
    meets = all(acc.get(k, 0.0) >= v for k, v in ACCURACY_TARGETS.items()) if acc else None
    probe = probe_world(world)
    log.info("unedited: judge reads %s (targets %s: %s); end-token probe %s (%.0f s)", acc, ACCURACY_TARGETS,
             meets, {k: v["mean"] for k, v in probe.items()}, time.perf_counter() - start)
    if meets is False:
        log.warning("this world draws below the targets %s; its figures say little", ACCURACY_TARGETS)
    model = world.config.model
    return {"train": world.config.key(), "text_encoder": model.text_encoder, "denoiser": model.denoiser,
            "text_dim": model.text_dim, "seed": world.config.seed, "steps": world.trained_steps,
            "schedule_steps": world.config.steps, "seconds": world.seconds,
            "cpu_seconds": world.cpu_seconds, "final_loss": world.final_loss,
            "accuracy": acc, "meets_targets": meets, "probe": probe}


# --- output --------------------------------------------------------------------------------------------------

def _fmt(entry: dict) -> str:
    if "rate" in entry:
        if entry["rate"] is None:
            return "n/a"
        return f"{entry['rate']:.2f} [{entry['lo']:.2f}, {entry['hi']:.2f}]"
    return f"{entry['mean']:.2f} ±{entry['half']:.2f}"


def _rate(entry: dict) -> str:
    return "n/a" if entry["rate"] is None else f"{entry['rate']:.2f}"


def world_table(worlds: dict[str, dict]) -> str:
    """The worlds before any edit."""
    lines = ["| world | text encoder | width | seed | trained | colour | shape | style | all | meets targets | "
             "end-token share colour / shape / style |", "|---|---|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for name, w in worlds.items():
        a, p = w.get("accuracy") or {}, w["probe"]
        cpu = w.get("cpu_seconds")
        cpu = "" if cpu is None or cpu != cpu else f" ({cpu / 60:.0f} min CPU)"
        lines.append(f"| {name} | {w['text_encoder']} | {w['text_dim']} | {w['seed']} | {w['steps']} steps, "
                     f"{w['seconds'] / 60:.0f} min{cpu} | {a.get('colour', '-')} | {a.get('shape', '-')} | "
                     f"{a.get('style', '-')} | {a.get('all', '-')} | {w.get('meets_targets')} | "
                     f"{p['colour']['mean']:.2f} / {p['shape']['mean']:.2f} / {p['style']['mean']:.2f} |")
    return "\n".join(lines)


def set_table(rows: dict[str, dict]) -> str:
    """One world's (or the pool's) table of one set, with intervals."""
    n = next(iter(rows.values()))
    lines = [f"(images: erased {n['forget']['n']}, look-alike {n['keep_look']['n']}, other {n['keep_other']['n']})",
             "| method | forget (lower better) | keep look-alike | keep other | quality |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {_fmt(r['forget'])} | {_fmt(r['keep_look'])} | {_fmt(r['keep_other'])} | "
                     f"{_fmt(r['quality'])} |")
    return "\n".join(lines)


def overview(per_world: dict[str, dict], pooled: dict[str, dict], set_name: str) -> str:
    """Every world and the pool side by side for one set: forget / keep look-alike / keep other (rates)."""
    names = [w for w in per_world if set_name in per_world[w]]
    labels = list(pooled[set_name])
    head = "| method | " + " | ".join(names) + " | pooled [95 % interval of forget] |"
    lines = [head, "|---|" + "---|" * (len(names) + 1)]
    for label in labels:
        cells = []
        for w in names:
            r = per_world[w][set_name].get(label)
            cells.append("-" if r is None else f"{_rate(r['forget'])} / {_rate(r['keep_look'])} / "
                                               f"{_rate(r['keep_other'])}")
        p = pooled[set_name][label]
        cells.append(f"{_rate(p['forget'])} [{p['forget']['lo']:.2f}, {p['forget']['hi']:.2f}] / "
                     f"{_rate(p['keep_look'])} / {_rate(p['keep_other'])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def concept_table(per_world: dict[str, dict], pooled: dict[str, dict], set_name: str) -> str | None:
    """Forget per erased concept of a set of several: each world's rate and the pooled one (``None`` for a set of
    one concept, or results without the per-concept counts)."""
    names = [w for w in per_world if set_name in per_world[w]]
    rows = pooled[set_name]
    concepts = list(next(iter(rows.values())).get("forget_by_concept") or {})
    if len(concepts) < 2:
        return None
    lines = ["| method | " + " | ".join(concepts) + " |", "|---|" + "---|" * len(concepts)]
    for label, p in rows.items():
        cells = []
        for c in concepts:
            per = [per_world[w][set_name].get(label, {}).get("forget_by_concept", {}).get(c) for w in names]
            each = " / ".join("-" if r is None or r["rate"] is None else f"{r['rate']:.2f}" for r in per)
            pc = p.get("forget_by_concept", {}).get(c)
            cells.append(f"{_rate(pc) if pc else '-'} ({each})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(per_world: dict[str, dict], pooled: dict[str, dict] | None = None,
          worlds: dict[str, dict] | None = None) -> str:
    """The whole report: the worlds, then per set an overview (forget / keep look-alike / keep other per world and
    pooled), the pooled table and each world's table, with intervals."""
    pooled = pooled if pooled is not None else pooled_results(per_world)
    lines = []
    if worlds:
        lines += ["## Worlds before any edit", "", world_table(worlds), ""]
    for set_name in pooled:
        lines += [f"## {set_name}", "", "forget / keep look-alike / keep other, per world and pooled:", "",
                  overview(per_world, pooled, set_name), ""]
        by_concept = concept_table(per_world, pooled, set_name)
        if by_concept:
            order = " / ".join(w for w in per_world if set_name in per_world[w])
            lines += [f"forget per erased concept, pooled ({order}):", "", by_concept, ""]
        lines += [f"### {set_name}: pooled over worlds", "", set_table(pooled[set_name]), ""]
        for w, results in per_world.items():
            if set_name in results:
                lines += [f"### {set_name}: {w}", "", set_table(results[set_name]), ""]
    return "\n".join(lines)


def save_grid(path: Path, extra: dict, rows: list[str]) -> None:
    """Pictures of the first seed: one row per method, the first prompts of each role as columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case, pictures = extra["case"], extra["pictures"]
    cols = []
    for role in ("erased", "look", "other"):
        cols += [i for i, r in enumerate(case.roles) if r == role][:8]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(len(cols) * 0.7 + 1.5, len(rows) * 0.72 + 0.8),
                             squeeze=False)
    for r, label in enumerate(rows):
        for c, i in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(((pictures[label][i] + 1) / 2).permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                a = case.asks[i]
                ax.set_title(f"{case.roles[i]}\n{a.style[:3] + ' ' if a.style != 'solid' else ''}{a.colour}\n{a.shape}",
                             fontsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FAMILY_COLOURS = {"unedited": "black", "concept": "tab:olive",  # "concept unnamed": the floor row
                  "uce": "tab:gray", "few-objects": "tab:green", "many-objects": "tab:blue",
                  "artists": "tab:purple", "explicit": "tab:red", "custom": "tab:orange"}


def save_pareto(path: Path, per_world: dict[str, dict], pooled: dict[str, dict] | None = None) -> None:
    """Forgetting against look-alike and other retention: one row of two panels per world and one pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = pooled if pooled is not None else pooled_results(per_world)
    panels = [*per_world.items(), ("pooled", pooled)]
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.6 * len(panels)), squeeze=False)
    markers = "osD^vP*X"
    set_names = list(pooled)
    for row, (world_name, results) in enumerate(panels):
        for ax, key, title in ((axes[row][0], "keep_look", "look-alikes kept"),
                               (axes[row][1], "keep_other", "other prompts kept")):
            for set_name, rows in results.items():
                k = set_names.index(set_name)
                for label, r in rows.items():
                    if r[key]["rate"] is None:
                        continue
                    color = FAMILY_COLOURS.get(label.split()[0], "tab:brown")
                    ax.scatter(r["forget"]["rate"], r[key]["rate"], marker=markers[k % len(markers)], color=color,
                               alpha=0.5 if " " in label else 0.9, s=22)
                    if set_name == set_names[0]:
                        ax.annotate(label, (r["forget"]["rate"], r[key]["rate"]), fontsize=5)
            ax.set_xlabel("forget: erased concept still drawn (lower is better)")
            ax.set_ylabel(f"{title} (higher is better)")
            ax.set_title(f"{world_name}: forgetting vs {title}")
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=markers[k % len(markers)], ls="", color="k", label=s)
               for k, s in enumerate(set_names)]
    axes[0][1].legend(handles=handles, fontsize=7, title="concept set (colour = method)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_strength_plot(path: Path, per_world: dict[str, dict], pooled: dict[str, dict]) -> bool:
    """Forgetting (solid), look-alikes kept (dashed) and others kept (dotted) against strength, one line colour per
    preset; a row per world and one pooled, a column per set. False when no sweep was run."""
    panels = [*per_world.items(), ("pooled", pooled)]
    set_names = [s for s in pooled if sweep_points(pooled[s])]
    if not set_names:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), len(set_names), figsize=(4.2 * len(set_names), 3.3 * len(panels)),
                             squeeze=False)
    for row, (world_name, results) in enumerate(panels):
        for col, set_name in enumerate(set_names):
            ax = axes[row][col]
            for preset, points in sweep_points(results.get(set_name, {})).items():
                xs = [max(x, 0.25) for x, _ in points]  # strength 0 drawn at the left edge of the log axis
                color = FAMILY_COLOURS.get(preset, "tab:brown")
                for key, style in (("forget", "-"), ("keep_look", "--"), ("keep_other", ":")):
                    ax.plot(xs, [r[key]["rate"] for _, r in points], style, color=color, marker=".",
                            label=preset if key == "forget" else None)
            ax.axhline(0.1, color="k", lw=0.6, alpha=0.5)
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{world_name}: {set_name}", fontsize=9)
            ax.set_xlabel("strength (0 drawn at 0.25)", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, title="forget —, look-alikes --, others ··", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(out: Path, report: dict) -> None:
    """``results.json``, ``table.md`` and ``pareto.png`` of a report (per-world results plus their pool)."""
    report["pooled"] = pooled_results(report["results"])
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    text = table(report["results"], report["pooled"], report.get("worlds"))
    (out / "table.md").write_text(text + "\n")
    save_pareto(out / "pareto.png", report["results"], report["pooled"])
    save_strength_plot(out / "strength.png", report["results"], report["pooled"])


def merge(folders: list[Path], out: Path) -> None:
    """One report from several runs' ``results.json`` (split by world, by set or by method; the judge must agree,
    and a world measured twice must be the same world). Rows of one world and set from several runs are joined (a
    method measured twice keeps the later run's figures)."""
    reports = [json.loads((f / "results.json").read_text()) for f in folders]
    merged = {k: v for k, v in reports[0].items() if k not in ("results", "pooled", "worlds")}
    merged["results"], merged["worlds"], merged["concept_sets"], merged["preserve"] = {}, {}, {}, {}
    for r in reports:
        if r["judge"] != merged["judge"]:
            raise ValueError("these runs used different judges")
        for name, w in r["worlds"].items():
            if name in merged["worlds"] and merged["worlds"][name]["train"] != w["train"]:
                raise ValueError(f"world {name!r} differs between these runs")
            if not merged["worlds"].get(name, {}).get("accuracy"):
                merged["worlds"][name] = w
        for name, sets in r["results"].items():
            for set_name, rows in sets.items():
                merged["results"].setdefault(name, {}).setdefault(set_name, {}).update(rows)
        for k in ("concept_sets", "preserve"):
            merged[k].update(r[k])
        for w, guides in r.get("focus_guides", {}).items():
            merged.setdefault("focus_guides", {}).setdefault(w, {}).update(guides)
    merged["merged_from"] = [str(f) for f in folders]
    write_report(out, merged)
    sys.stdout.write(table(merged["results"], merged["pooled"], merged["worlds"]) + "\n")
    log.info("merged %d runs into %s", len(folders), out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Concept erasure measured in images in the miniature worlds.")
    parser.add_argument("--worlds", nargs="+", default=list(WORLD_NAMES), choices=WORLD_NAMES,
                        help="registered worlds (worlds.py) to measure; each is trained first when missing")
    parser.add_argument("--sets", nargs="+", default=list(CONCEPT_SETS), choices=list(CONCEPT_SETS))
    parser.add_argument("--methods", nargs="+", default=None, help="method labels (default: see --all-methods)")
    parser.add_argument("--beyond", action="store_true", help="also settings beyond the paper (see ``beyond``)")
    parser.add_argument("--sweep", nargs="*", default=None, metavar="PRESET",
                        help="the strength sweep: these presets (all without names) at every strength of "
                             "SWEEP_STRENGTHS, instead of the default methods; writes strength.png")
    parser.add_argument("--all-methods", action="store_true",
                        help="preserve prompts and strengths for every published setting, not only four")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--images", type=int, default=None,
                        help="pictures per prompt and seed (default: 2, and 1 for the 20-pair set)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default ${SCAPRE_MINIWORLD_OUT:-<cache>/results})")
    parser.add_argument("--keep", nargs="+", default=list(ATTRIBUTES), choices=ATTRIBUTES,
                        help="attributes that retention counts (all by default; leave out any that a world draws "
                             "poorly, whose reading then flips under any change)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                        help="skip the unedited models' accuracy over all 240 prompts")
    parser.add_argument("--world", type=Path, default=None,
                        help="a saved world file to measure instead of registered ones (e.g. a checkpoint)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="only merge the results.json of these output folders (runs split over processes) into "
                             "one table and Pareto plot in --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or Path(os.environ.get("SCAPRE_MINIWORLD_OUT", cache_dir() / "results"))
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(args.merge, out)
        return

    judge, judge_acc = get_judge(JudgeConfig())
    all_methods = sweep(args.sweep) if args.sweep is not None else methods(args.all_methods)
    all_methods += beyond() if args.beyond else []
    if args.methods:
        all_methods = [m for m in all_methods if m.label in args.methods]
    rows = ["unedited", *(m.label for m in all_methods)]
    start = time.perf_counter()
    report = {"judge": judge_acc, "settings": vars(args) | {"out": str(out)},
              "concept_sets": {k: CONCEPT_SETS[k] for k in args.sets}, "preserve": {}, "worlds": {}, "results": {}}
    targets = [(args.world.stem, None)] if args.world else [(name, name) for name in args.worlds]
    for world_name, registered in targets:
        world = load_world(args.world) if registered is None else load(registered)
        log.info("world %s", world_name)
        report["worlds"][world_name] = measure_world(world, judge, args.steps, args.guidance, args.accuracy)
        report["results"][world_name] = {}
        for name in args.sets:
            images = args.images or (1 if name == "20 pairs" else 2)
            results, extra = run_set(world, judge, name, CONCEPT_SETS[name], all_methods, tuple(args.seeds), images,
                                     SIZES[name], args.steps, args.guidance, tuple(args.keep))
            report["results"][world_name][name] = results
            report["preserve"][name] = list(extra["case"].preserve)
            if extra["focus"]:
                report.setdefault("focus_guides", {}).setdefault(world_name, {})[name] = extra["focus"]["guides"]
            write_report(out, report)  # after every set
            save_grid(out / f"grid-{world_name}-{name.replace(' ', '-')}.png", extra, rows)
    sys.stdout.write(table(report["results"], report["pooled"], report["worlds"]) + "\n")
    log.info("wrote %s (results.json, table.md, grid-*.png, pareto.png) in %.0f s", out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
