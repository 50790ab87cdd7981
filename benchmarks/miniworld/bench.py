"""Forgetting measured in images, in the miniature world: erase 1, 5 and 20 concepts with every method, draw
fixed seeds, and count with the judge what the model still draws.

Per concept set and method, pooled over seeds (each seed fixes the starting noise of every picture and the
config's Informax seed; the original and every edit draw from the same noise):

* ``forget``: share of pictures for prompts naming an erased concept in which the judge still reads it (the
  colour, shape or style; both colour and shape for a pair). Lower is better; the unedited row gives the start.
* ``keep_look``: for look-alike prompts (orange and pink when red is erased, ring for circle, dotted for striped;
  for a pair, the same colour with another shape or the same shape in another colour), the share of pictures
  in which everything the unedited model drew as asked from the same noise (colour, shape, style; see ``--keep``)
  is still drawn as asked; pictures where the unedited model got nothing right are left out. Paired, so that
  it measures the edit, not the world's own errors. 1 for the unedited model; higher is better.
* ``keep_other``: the same for prompts sharing no word, and no look-alike word, with the erased concepts.
* ``quality``: the judge's mean probability of the asked colour, shape and style on all kept prompts.
Brackets are 95 % Wilson intervals (quality: mean +- 1.96 standard errors).

Methods: the published settings (SPEC "Published settings"; ``PUBLISHED`` below) and the pack's defaults; four of
them (uce, many-objects, explicit, custom; all with ``--all-methods``) also with preserve prompts (the look-alike
words of the erased concepts, and for a pair its two words: what a user protects) and at half and double strength
(``erase_scale`` times 0.5 and 2); ``--beyond`` adds settings beyond the paper (no Bures step). Usage (repo root)::

    python benchmarks/miniworld/bench.py --all-methods       # trains or loads the world, then every set and method
    python benchmarks/miniworld/bench.py --sets "1 colour" --seeds 0
    # split over processes, then one table and plot:
    python benchmarks/miniworld/bench.py --all-methods --sets "1 colour" "1 shape" "20 pairs" --out R/a
    python benchmarks/miniworld/bench.py --all-methods --sets "5 mixed" "1 style" --no-accuracy --out R/b
    python benchmarks/miniworld/bench.py --merge R/a R/b --out R

Outputs (default ``${SCAPRE_MINIWORLD_OUT:-~/.cache/scapre-miniworld/results}``, outside the repository):
``results.json``, ``table.md``, ``grid-<set>.png`` (pictures of the first seed, one row per method) and
``pareto.png`` (forgetting against retention, every set and method).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``miniworld`` (and through it ``scapre_core``) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "miniworld"

from scapre_core import ScaPreConfig

from .evaluate import Ask, Reading, accuracy, asked_indices, concept_set, draw, edited_unet, read, wilson
from .train import JudgeConfig, TrainConfig, cache_dir, get_judge, get_world, load_world
from .world import COLOUR_NAMES, SHAPES, STYLES, lookalikes

log = logging.getLogger("miniworld.bench")

#: The published settings (SPEC "Published settings"), under the names of ``scapre_core.presets``; when that
#: module is on main this mapping becomes ``{name: p.config for name, p in presets.PRESETS.items()}``.
PUBLISHED: dict[str, ScaPreConfig] = {
    "uce": ScaPreConfig(variant="uce", erase_scale=1.0, lam=0.5),
    "few-objects": ScaPreConfig(variant="small", erase_scale=1.0, p=2.0, alpha_min=0.8, entropy_samples=20, lam=0.5),
    "many-objects": ScaPreConfig(variant="scale", erase_scale=3.0, p=5.0, use_informax=True, bures_iters=1, ased=True,
                                 entropy_samples=30, entropy_bins=20, mu_from_entropy=True, lam=0.5),
    "artists": ScaPreConfig(variant="scale", erase_scale=2.0, p=8.0, use_informax=True, bures_iters=1, ased=True,
                            entropy_samples=30, entropy_bins=20, mu_from_entropy=True, lam=0.5),
    "explicit": ScaPreConfig(variant="scale", erase_scale=2.0, p=3.0, use_informax=False, bures_iters=1,
                             mu_from_entropy=True, lam=0.5),
    "custom": ScaPreConfig(),  # the pack's defaults
}

CONCEPT_SETS: dict[str, list[str]] = {
    "1 colour": ["red"],
    "1 shape": ["circle"],
    "1 style": ["striped"],
    "5 mixed": ["red", "cyan", "circle", "striped", "green triangle"],
    "20 pairs": [f"{c} {s}" for c in ("red", "orange", "yellow", "green", "cyan")
                 for s in ("circle", "square", "triangle", "cross")],
}
#: Prompts per erased concept, per look-alike word (or pair), and unrelated prompts, for each set.
SIZES: dict[str, tuple[int, int, int]] = {
    "1 colour": (12, 6, 12), "1 shape": (12, 6, 12), "1 style": (12, 6, 12), "5 mixed": (4, 2, 10),
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
        base = PUBLISHED[self.preset]
        return base.replace(erase_scale=base.erase_scale * self.strength, seed=seed, **dict(self.changes))


def methods(full: bool = False) -> list[Method]:
    """Every published setting and the defaults; with preserve prompts and at half and double strength: all of
    them with ``full``, else those that the 2-core budget allows (uce, many-objects, explicit, custom)."""
    with_options = list(PUBLISHED) if full else ["uce", "many-objects", "explicit", "custom"]
    out = [Method(name, name) for name in PUBLISHED]
    out += [Method(f"{name} +preserve", name, preserve=True) for name in with_options]
    out += [Method(f"{name} x{s:g}", name, strength=s) for name in with_options if name != "uce" for s in (0.5, 2.0)]
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
                continue
            if bool(before[i].any()):  # kept: what the original drew right is still drawn right
                (self.look if role == "look" else self.other).append(int(bool(now[i][before[i]].all())))
            self.quality.append(float(reading.asked_prob[i]))

    def summary(self) -> dict:
        def rate(xs: list[int]) -> dict:
            lo, hi = wilson(sum(xs), len(xs))
            return {"rate": round(sum(xs) / len(xs), 4) if xs else None, "lo": round(lo, 4), "hi": round(hi, 4),
                    "n": len(xs)}

        q = torch.tensor(self.quality, dtype=torch.float64)
        half = float(1.96 * q.std() / len(q) ** 0.5) if len(q) > 1 else float("nan")
        return {"forget": rate(self.forget), "keep_look": rate(self.look), "keep_other": rate(self.other),
                "quality": {"mean": round(float(q.mean()), 4), "half": round(half, 4), "n": len(q)}}


def run_set(world, judge, name: str, concepts: list[str], all_methods: list[Method], seeds: tuple[int, ...],
            images: int, sizes: tuple[int, int, int], steps: int, guidance: float,
            keep: tuple[str, ...]) -> tuple[dict, dict]:
    case = build_case(concepts, *sizes)
    asks = list(case.asks) * images
    log.info("%s: %d concepts, %d prompts (%d erased, %d look-alike, %d other) x %d images x %d seeds; preserve %s",
             name, len(concepts), len(case.asks), case.roles.count("erased"), case.roles.count("look"),
             case.roles.count("other"), images, len(seeds), list(case.preserve))
    tallies = {"unedited": Tally.empty()} | {m.label: Tally.empty() for m in all_methods}
    pictures = {}
    sets = {False: concept_set(world, concepts), True: concept_set(world, concepts, list(case.preserve))}
    for seed in seeds:
        base = draw(world, asks, seed, steps=steps, guidance=guidance)
        base_reading = read(judge, base, asks)
        tallies["unedited"].add(case, base_reading, asks, base_reading, keep)
        if seed == seeds[0]:
            pictures["unedited"] = base[:len(case.asks)]
        for m in all_methods:
            start = time.perf_counter()
            unet = edited_unet(world, sets[m.preserve], m.config(seed))
            imgs = draw(world, asks, seed, unet=unet, steps=steps, guidance=guidance)
            tallies[m.label].add(case, read(judge, imgs, asks), asks, base_reading, keep)
            if seed == seeds[0]:
                pictures[m.label] = imgs[:len(case.asks)]
            log.info("%s seed %d %-24s %.1f s  %s", name, seed, m.label, time.perf_counter() - start,
                     {k: v["rate"] if "rate" in v else v["mean"] for k, v in tallies[m.label].summary().items()})
    return {k: t.summary() for k, t in tallies.items()}, {"case": case, "pictures": pictures}


# --- output --------------------------------------------------------------------------------------------------

def _fmt(entry: dict) -> str:
    if "rate" in entry:
        if entry["rate"] is None:
            return "n/a"
        return f"{entry['rate']:.2f} [{entry['lo']:.2f}, {entry['hi']:.2f}]"
    return f"{entry['mean']:.2f} ±{entry['half']:.2f}"


def table(results: dict[str, dict]) -> str:
    lines = []
    for set_name, rows in results.items():
        n = next(iter(rows.values()))
        lines.append(f"\n{set_name}  (images: erased {n['forget']['n']}, look-alike {n['keep_look']['n']}, "
                     f"other {n['keep_other']['n']})")
        lines.append("| method | forget (lower better) | keep look-alike | keep other | quality |")
        lines.append("|---|---|---|---|---|")
        for label, r in rows.items():
            lines.append(f"| {label} | {_fmt(r['forget'])} | {_fmt(r['keep_look'])} | {_fmt(r['keep_other'])} | "
                         f"{_fmt(r['quality'])} |")
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


def save_pareto(path: Path, results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    markers = "osD^vP*X"
    for ax, key, title in ((axes[0], "keep_look", "look-alikes kept"), (axes[1], "keep_other", "other prompts kept")):
        for k, (set_name, rows) in enumerate(results.items()):
            for label, r in rows.items():
                if r[key]["rate"] is None:
                    continue
                family = label.split()[0]
                color = {"unedited": "black", "uce": "tab:gray", "few-objects": "tab:green",
                         "many-objects": "tab:blue", "artists": "tab:purple", "explicit": "tab:red",
                         "custom": "tab:orange"}.get(family, "tab:brown")
                ax.scatter(r["forget"]["rate"], r[key]["rate"], marker=markers[k % len(markers)], color=color,
                           alpha=0.5 if " " in label else 0.9, s=22)
                if set_name == next(iter(results)):
                    ax.annotate(label, (r["forget"]["rate"], r[key]["rate"]), fontsize=5)
        ax.set_xlabel("forget: erased concept still drawn (lower is better)")
        ax.set_ylabel(f"{title} (higher is better)")
        ax.set_title(f"miniature world: forgetting vs {title}")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=markers[k % len(markers)], ls="", color="k", label=s)
               for k, s in enumerate(results)]
    axes[1].legend(handles=handles, fontsize=7, title="concept set (colour = method)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(folders: list[Path], out: Path) -> None:
    """One report from several runs' ``results.json`` (their world, judge and settings must agree)."""
    reports = [json.loads((f / "results.json").read_text()) for f in folders]
    merged = dict(reports[0])
    merged["results"], merged["concept_sets"], merged["preserve"] = {}, {}, {}
    for r in reports:
        if r["world"]["train"] != merged["world"]["train"] or r["world"]["steps"] != merged["world"]["steps"]:
            raise ValueError("these runs used different worlds")
        if r["world"].get("accuracy"):
            merged["world"]["accuracy"] = r["world"]["accuracy"]
        for k in ("results", "concept_sets", "preserve"):
            merged[k].update(r[k])
    merged["merged_from"] = [str(f) for f in folders]
    (out / "results.json").write_text(json.dumps(merged, indent=1, default=str))
    text = table(merged["results"])
    (out / "table.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    save_pareto(out / "pareto.png", merged["results"])
    log.info("merged %d runs into %s", len(folders), out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Concept erasure measured in images in a miniature world.")
    parser.add_argument("--sets", nargs="+", default=list(CONCEPT_SETS), choices=list(CONCEPT_SETS))
    parser.add_argument("--methods", nargs="+", default=None, help="method labels (default: see --all-methods)")
    parser.add_argument("--beyond", action="store_true", help="also settings beyond the paper (see ``beyond``)")
    parser.add_argument("--all-methods", action="store_true",
                        help="preserve prompts and strengths for every published setting, not only four")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--images", type=int, default=2, help="pictures per prompt and seed (see SIZES)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default ${SCAPRE_MINIWORLD_OUT:-<cache>/results})")
    parser.add_argument("--keep", nargs="+", default=list(ATTRIBUTES), choices=ATTRIBUTES,
                        help="attributes that retention counts (all by default; leave out any that a world draws "
                             "poorly, whose reading then flips under any change)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                        help="skip the unedited model's accuracy over all 240 prompts")
    parser.add_argument("--world-steps", type=int, default=TrainConfig.steps, help="training steps of the world")
    parser.add_argument("--world", type=Path, default=None,
                        help="a saved world file to use instead (e.g. a checkpoint written during training)")
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
    world = load_world(args.world) if args.world else get_world(TrainConfig(steps=args.world_steps))
    all_methods = methods(args.all_methods) + (beyond() if args.beyond else [])
    if args.methods:
        all_methods = [m for m in all_methods if m.label in args.methods]
    start = time.perf_counter()
    acc = accuracy(world, judge, seeds=(100,), steps=args.steps, guidance=args.guidance) if args.accuracy else {}
    log.info("unedited model, all colour x shape x style prompts: judge reads %s (%.0f s)", acc,
             time.perf_counter() - start)
    results, extras = {}, {}
    rows = ["unedited", *(m.label for m in all_methods)]
    for name in args.sets:
        results[name], extras[name] = run_set(world, judge, name, CONCEPT_SETS[name], all_methods, tuple(args.seeds),
                                              args.images, SIZES[name], args.steps, args.guidance, tuple(args.keep))
        report = {
            "world": {"train": world.config.key(), "steps": world.trained_steps, "schedule_steps": world.config.steps,
                      "seconds": world.seconds, "final_loss": world.final_loss, "accuracy": acc},
            "judge": judge_acc,
            "settings": vars(args) | {"out": str(out)},
            "concept_sets": {k: CONCEPT_SETS[k] for k in results},
            "preserve": {k: list(e["case"].preserve) for k, e in extras.items()},
            "results": results,
        }
        (out / "results.json").write_text(json.dumps(report, indent=1, default=str))  # after every set
        save_grid(out / f"grid-{name.replace(' ', '-')}.png", extras[name], rows)
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    save_pareto(out / "pareto.png", results)
    log.info("wrote %s (results.json, table.md, grid-*.png, pareto.png) in %.0f s", out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
