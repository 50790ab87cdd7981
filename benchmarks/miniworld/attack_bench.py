"""Does the concept come back? Every published preset and ``uce``, erasing 1 and 5 concepts in the miniature world,
attacked with prompt variants and with embeddings (``scapre_core.attacks``), judged in pictures.

Per world, concept set, method and attack, pooled over noise seeds, with 95 % Wilson intervals:

* ``forget``, ``keep_look``, ``keep_other``: as ``bench.py`` measures them on the plain prompts (forget: share of
  pictures of erased prompts in which the judge still reads the concept; keep: paired retention).
* **recovery** per attack: among the erased concept's pictures in which the ORIGINAL model drew the concept (the
  judge reads it; paired, from the same noise), the share in which the EDITED model drew it under the attack. For
  the embedding attacks the original's picture is that of the plain prompt; for prompt variants, that of the same
  variant prompt (a variant the original does not draw as the concept counts nowhere). The ``plain`` row is the same
  paired measure for the plain prompts, so every attack row reads against it.

Attacks (per erased concept, on the prompts naming it, ``bench.build_case``'s erased asks):

* ``context``: the prompt reversed, the concept repeated, moved to the start, inside a longer prompt;
* ``neighbour``: the concept's word replaced by its nearest words of the same kind in the token-embedding table (the
  world has no synonyms, spellings or languages: its vocabulary is its words);
* ``neutral``: the concept's words replaced by filler words (the soft tokens' start; a control);
* ``soft``: soft tokens (UnlearnDiff-style) in the conditioning, each within the largest norm the encoder produces;
  ``soft unbounded``: without that limit (a user who controls the conditioning); ``soft input``: soft tokens in the
  text encoder's input (a textual-inversion embedding, unbounded). Each searches ``--search-steps`` Adam steps
  (batch 8) on the original's pictures of the concept's prompts at other seeds than the judged ones;
* ``vector xS``: the Ring-A-Bell-style concept vector added to the prompt without the concept at strength S.

The SSIM rule of ScaPre Attack (``scapre_core.evaluation.recovery``) is computed on the same pictures, and its
agreement with the judge reported. Usage (repo root)::

    python benchmarks/miniworld/attack_bench.py --worlds clip64 --sets "1 colour" "5 mixed"
    python benchmarks/miniworld/attack_bench.py --merge R/a R/b --out R      # runs split over processes

Outputs (default ``${SCAPRE_MINIWORLD_OUT:-<cache>/results}/attacks``): ``results.json``, ``table.md``,
``recovery-<world>.png`` per world and ``recovery-pooled.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make ``miniworld`` (and through it ``scapre_core``) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "miniworld"
    import miniworld  # noqa: F401  (its __init__ registers scapre_core)

from scapre_core.evaluation import measures, recovery
from scapre_core.presets import PRESETS

from .attacks import (
    TOKENS,
    Templates,
    context_variants,
    draw_conds,
    neighbour_words,
    soft_search,
    vector_conds,
    vector_pairs,
)
from .bench import CONCEPT_SETS, SIZES, Tally, _reads_concept, build_case
from .evaluate import Ask, concept_set, draw, edited_unet, read
from .train import JudgeConfig, cache_dir, get_judge

log = logging.getLogger("miniworld.attack_bench")

STRENGTHS = (1.0, 2.0, 4.0)
SOFT_ATTACKS = {"soft": ("conditioning", True), "soft unbounded": ("conditioning", False),
                "soft input": ("input", False)}
ATTACKS = ("plain", "context", "neighbour", "neutral", *SOFT_ATTACKS, *(f"vector x{s:g}" for s in STRENGTHS))
EMBEDDING = ("neutral", *SOFT_ATTACKS, *(f"vector x{s:g}" for s in STRENGTHS))
SETS = ("1 colour", "5 mixed")
#: The published presets and ``uce`` (``scapre_core.presets``), as ScaPre Erase applies them (strength 1, seed 0).
METHODS = tuple(name for name in PRESETS)


@dataclass
class Counts:
    """Recovered / counted pictures of one attack, and the SSIM rule's verdicts beside the judge's."""

    hits: int = 0
    n: int = 0
    ssim_agree: int = 0
    ssim_n: int = 0
    ssim_hits: int = 0

    def add(self, counted: bool, hit: bool, ssim: bool | None = None) -> None:
        if not counted:
            return
        self.n += 1
        self.hits += int(hit)
        if ssim is not None:
            self.ssim_n += 1
            self.ssim_hits += int(ssim)
            self.ssim_agree += int(ssim == hit)

    def merge(self, other: Counts) -> None:
        for name in ("hits", "n", "ssim_agree", "ssim_n", "ssim_hits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        lo, hi = recovery.wilson(self.hits, self.n)
        out = {"rate": round(self.hits / self.n, 4) if self.n else None, "lo": round(lo, 4) if self.n else None,
               "hi": round(hi, 4) if self.n else None, "n": self.n, "hits": self.hits}
        if self.ssim_n:
            out.update(ssim_rate=round(self.ssim_hits / self.ssim_n, 4),
                       ssim_agreement=round(self.ssim_agree / self.ssim_n, 4), ssim_n=self.ssim_n)
        return out

    @classmethod
    def from_summary(cls, s: dict) -> Counts:
        agree = round(s.get("ssim_agreement", 0) * s.get("ssim_n", 0))
        return cls(s["hits"], s["n"], agree, s.get("ssim_n", 0), round(s.get("ssim_rate", 0) * s.get("ssim_n", 0)))


@dataclass
class Settings:
    seeds: tuple[int, ...] = (0, 1)
    images: int = 2
    steps: int = 10  # DDIM steps
    guidance: float = 4.0
    search_steps: int = 150
    search_lr: float = 0.1
    search_batch: int = 8
    train_seeds: tuple[int, ...] = (1000, 1001)
    tokens: int = TOKENS
    keep: tuple[str, ...] = ("colour", "shape", "style")
    attacks: tuple[str, ...] = ATTACKS
    extra: dict = field(default_factory=dict)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """World pictures ``[n, 3, S, S]`` in [-1, 1] as Compare's images ``[n, S, S, 3]`` in [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def _reads(judge, images: torch.Tensor, asks: list[Ask], concept: str) -> list[bool]:
    r = read(judge, images, asks)
    return [_reads_concept(r, i, concept) for i in range(len(asks))]


#: The original's reading of prompt-variant pictures, per (prompts, seed, ...): the same for every edit of a world.
_ORIGINAL_VARIANTS: dict[tuple, list[bool]] = {}


def attack_concept(world, judge, unet, case, concept: str, settings: Settings, base: dict[int, torch.Tensor],
                   base_reads: dict[int, list[bool]], plain: dict[int, torch.Tensor], seed: int,
                   counts: dict[str, Counts]) -> dict[str, torch.Tensor]:
    """Every attack on ``concept`` against ``unet``; adds to ``counts`` (one :class:`Counts` per attack) and returns
    the embedding attacks' conditionings of the concept's asks (``[len(asks), 77, d]`` each).
    ``base``/``plain``: the original's and the edit's pictures of all asks (``case.asks * images``) per noise seed;
    ``base_reads``: whether the original drew this concept in each of them."""
    s = settings
    n_case = len(case.asks)
    mine = [i for i, (r, c) in enumerate(zip(case.roles, case.concepts, strict=True)) if r == "erased" and c == concept]
    asks = [case.asks[i] for i in mine]
    positions = [i + k * n_case for k in range(s.images) for i in mine]  # in case.asks * images
    all_asks = list(case.asks) * s.images
    judged_asks = [all_asks[p] for p in positions]

    def judged(name: str, conds_by_ask: torch.Tensor | None, variant_asks: list[str] | None = None) -> None:
        """Draw the concept's asks from conditionings ``[len(asks), 77, d]`` or prompts (with the noise of their
        places in ``all_asks``) and count."""
        for sd in s.seeds:
            if conds_by_ask is not None:
                conds = conds_by_ask.repeat(s.images, 1, 1)
            else:
                with torch.no_grad():
                    conds = world.encode(variant_asks)[0].repeat(s.images, 1, 1)
            pictures = draw_conds(world, conds, sd, unet, steps=s.steps, guidance=s.guidance, rows=positions,
                                  total=len(all_asks))
            hit = _reads(judge, pictures, judged_asks, concept)
            if conds_by_ask is not None:  # embedding attack: paired with the original's plain picture
                counted = [base_reads[sd][p] for p in positions]
                d_plain = measures.image_change(_as_images(base[sd][positions]), _as_images(plain[sd][positions]))
                d_attack = measures.image_change(_as_images(base[sd][positions]), _as_images(pictures))
                ssim = [recovery.recovered(float(a), float(b)) for a, b in zip(d_plain, d_attack, strict=True)]
            else:  # prompt variant: paired with the original's picture of the same variant (the same for every edit)
                key = (tuple(variant_asks), sd, len(all_asks), tuple(positions))
                if key not in _ORIGINAL_VARIANTS:
                    original = draw_conds(world, conds, sd, world.unet, steps=s.steps, guidance=s.guidance,
                                          rows=positions, total=len(all_asks))
                    _ORIGINAL_VARIANTS[key] = _reads(judge, original, judged_asks, concept)
                counted = _ORIGINAL_VARIANTS[key]
                ssim = [None] * len(positions)
            for c, h, v in zip(counted, hit, ssim, strict=True):
                counts[name].add(c, h, v)

    if "plain" in s.attacks:
        for sd in s.seeds:
            hit = _reads(judge, plain[sd][positions], [all_asks[p] for p in positions], concept)
            for p, h in zip(positions, hit, strict=True):
                counts["plain"].add(base_reads[sd][p], h)
    if "context" in s.attacks:
        forms = [context_variants(a, concept) for a in asks]
        for f in range(len(forms[0])):
            judged("context", None, [forms[i][f][1] for i in range(len(asks))])
    if "neighbour" in s.attacks:
        others = tuple(w for c in case.concepts if c for w in c.split())
        near = neighbour_words(world, concept, k=2, exclude=others)
        for word in near:
            texts = [" ".join(word if w in concept.split()[:1] else w for w in a.text.split()
                              if w not in concept.split()[1:]) for a in asks]
            judged("neighbour", None, texts)
    templates = Templates.of(asks, concept, s.tokens)
    used: dict[str, torch.Tensor] = {}
    if "neutral" in s.attacks:
        with torch.no_grad():
            used["neutral"] = world.encode(list(templates.texts))[0]
        judged("neutral", used["neutral"])
    wanted = [a for a in SOFT_ATTACKS if a in s.attacks]
    if wanted:
        targets = torch.cat([draw(world, asks, ts, steps=s.steps, guidance=s.guidance) for ts in s.train_seeds])
        which = torch.arange(len(asks)).repeat(len(s.train_seeds))
        for name in wanted:
            space, bounded = SOFT_ATTACKS[name]
            start = time.perf_counter()
            conds, found = soft_search(world, unet, templates, targets, which, space, s.search_steps, seed=seed,
                                       lr=s.search_lr, batch=s.search_batch, bounded=bounded)
            log.debug("%s %s: loss %.4f -> %.4f in %.1f s", concept, name, found.first_loss, found.final_loss,
                      time.perf_counter() - start)
            judged(name, conds)
            used[name] = conds
    strengths = [x for x in STRENGTHS if f"vector x{x:g}" in s.attacks]
    if strengths:
        vc = vector_conds(world, asks, concept, vector_pairs(concept), tuple(strengths))
        for eta, conds in zip(strengths, vc, strict=True):
            judged(f"vector x{eta:g}", conds)
            used[f"vector x{eta:g}"] = conds
    return used


def run_set(world, judge, world_name: str, set_name: str, methods: list[str], settings: Settings) -> dict:
    s = settings
    concepts = CONCEPT_SETS[set_name]
    case = build_case(concepts, *SIZES[set_name])
    all_asks = list(case.asks) * s.images
    base = {sd: draw(world, all_asks, sd, steps=s.steps, guidance=s.guidance) for sd in s.seeds}
    base_reading = {sd: read(judge, base[sd], all_asks) for sd in s.seeds}
    out = {}
    for method in ["unedited", *methods]:
        start = time.perf_counter()
        unet = world.unet if method == "unedited" else \
            edited_unet(world, concept_set(world, concepts), PRESETS[method].config.replace(seed=0))
        tally = Tally.empty()
        plain = {}
        for sd in s.seeds:
            plain[sd] = base[sd] if method == "unedited" else draw(world, all_asks, sd, unet=unet, steps=s.steps,
                                                                    guidance=s.guidance)
            tally.add(case, read(judge, plain[sd], all_asks), all_asks, base_reading[sd], s.keep)
        counts = {a: Counts() for a in s.attacks}
        for concept in concepts:
            base_reads = {sd: [_reads_concept(base_reading[sd], i, concept) for i in range(len(all_asks))]
                          for sd in s.seeds}
            attack_concept(world, judge, unet, case, concept, s, base, base_reads, plain, seed=0, counts=counts)
        out[method] = {"retention": tally.summary(), "attacks": {a: c.summary() for a, c in counts.items()}}
        log.info("%s %s %-13s %4.0f s  %s", world_name, set_name, method, time.perf_counter() - start,
                 {a: v["rate"] for a, v in out[method]["attacks"].items()})
    return out


# --- output -------------------------------------------------------------------------------------------------

def _cell(e: dict) -> str:
    if e.get("rate") is None:
        return "n/a"
    return f"{e['rate']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


def pooled(results: dict) -> dict:
    """Counts summed over worlds per set, method and attack (retention is not pooled)."""
    out: dict = {}
    for per_set in results.values():
        for set_name, per_method in per_set.items():
            for method, r in per_method.items():
                for attack, e in r["attacks"].items():
                    c = out.setdefault(set_name, {}).setdefault(method, {}).setdefault(attack, Counts())
                    c.merge(Counts.from_summary(e))
    return {k: {m: {"attacks": {a: c.summary() for a, c in v.items()}} for m, v in per.items()}
            for k, per in out.items()}


def table(results: dict) -> str:
    lines = []
    for world_name, per_set in results.items():
        for set_name, per_method in per_set.items():
            attacks = list(next(iter(per_method.values()))["attacks"])
            lines += [f"\n### {world_name}: {set_name}", "",
                      "| method | " + ("forget | keep look-alike | keep other | " if world_name != "pooled" else "")
                      + " | ".join(attacks) + " |",
                      "|---|" + ("---|---|---|" if world_name != "pooled" else "") + "---|" * len(attacks)]
            for method, r in per_method.items():
                ret = r.get("retention")
                head = f"| {method} | "
                if ret is not None:
                    head += f"{_cell(ret['forget'])} | {_cell(ret['keep_look'])} | {_cell(ret['keep_other'])} | "
                lines.append(head + " | ".join(_cell(r["attacks"][a]) for a in attacks) + " |")
    ssim = [e for per_set in results.values() for per_method in per_set.values() for r in per_method.values()
            for a, e in r["attacks"].items() if a in EMBEDDING and e.get("ssim_n")]
    if ssim:
        n = sum(e["ssim_n"] for e in ssim)
        agree = sum(e["ssim_agreement"] * e["ssim_n"] for e in ssim)
        lines += ["", f"SSIM rule vs judge on the embedding attacks' pictures (all worlds, sets, methods): agreement "
                      f"{agree / n:.2f} over {n} pictures"]
    return "\n".join(lines)


def figure(path: Path, per_set: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(per_set)
    fig, axes = plt.subplots(len(sets), 1, figsize=(13, 3.6 * len(sets)), squeeze=False)
    for ax, set_name in zip(axes[:, 0], sets, strict=True):
        per_method = per_set[set_name]
        methods = list(per_method)
        attacks = list(next(iter(per_method.values()))["attacks"])
        width = 0.8 / len(methods)
        for m, method in enumerate(methods):
            xs, ys, err = [], [], [[], []]
            for a, attack in enumerate(attacks):
                e = per_method[method]["attacks"][attack]
                if e.get("rate") is None:
                    continue
                xs.append(a + (m - (len(methods) - 1) / 2) * width)
                ys.append(e["rate"])
                err[0].append(e["rate"] - e["lo"])
                err[1].append(e["hi"] - e["rate"])
            ax.bar(xs, ys, width, yerr=err, capsize=1.5, label=method, error_kw={"lw": 0.6})
        ax.set_xticks(range(len(attacks)))
        ax.set_xticklabels(attacks, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("recovered (judge)")
        ax.set_title(f"{title}: {set_name}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=len(next(iter(per_set.values()))), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, report: dict) -> None:
    results = report["results"]
    report["pooled"] = pooled(results)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    text = table(results) + "\n" + table({"pooled": report["pooled"]})
    (out / "table.md").write_text(text + "\n")
    for world_name, per_set in results.items():
        figure(out / f"recovery-{world_name}.png", per_set, world_name)
    figure(out / "recovery-pooled.png", report["pooled"], f"pooled over {len(results)} world(s)")
    sys.stdout.write(text + "\n")


def merge(folders: list[Path], out: Path) -> None:
    merged: dict = {"results": {}, "merged_from": [str(f) for f in folders]}
    for f in folders:
        r = json.loads((f / "results.json").read_text())
        merged.setdefault("settings", r.get("settings"))
        merged.setdefault("worlds", {}).update(r.get("worlds", {}))
        for world_name, per_set in r["results"].items():
            merged["results"].setdefault(world_name, {}).update(per_set)
    write(out, merged)


def load_worlds(names: list[str], files: list[Path]) -> dict:
    """Named worlds from the registry (``worlds.py``, when present) and world files."""
    from .train import load_world

    out = {}
    if names:
        try:
            from . import worlds as registry
        except ImportError:
            raise SystemExit("this checkout has no world registry (benchmarks/miniworld/worlds.py); pass --world "
                             "FILE") from None
        for name in names:
            out[name] = registry.load(name)
    for f in files:
        out[f.stem] = load_world(f)
    if not out:
        raise SystemExit("no world: give --worlds NAME ... or --world FILE")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Attacks on erasures in the miniature world(s).")
    parser.add_argument("--worlds", nargs="*", default=[], help="registered world names (see worlds.py)")
    parser.add_argument("--world", type=Path, action="append", default=[], help="a saved world file (repeatable)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(CONCEPT_SETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds of the judged pictures")
    parser.add_argument("--images", type=int, default=2, help="pictures per prompt and seed")
    parser.add_argument("--search-steps", type=int, default=150)
    parser.add_argument("--search-lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge these runs' results into --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or Path(os.environ.get("SCAPRE_MINIWORLD_OUT", cache_dir() / "results")) / "attacks"
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(args.merge, out)
        return
    judge, judge_acc = get_judge(JudgeConfig())
    worlds = load_worlds(args.worlds, args.world)
    settings = Settings(seeds=tuple(args.seeds), images=args.images, search_steps=args.search_steps,
                        search_lr=args.search_lr, attacks=tuple(args.attacks))
    report: dict = {"settings": {**vars(args), "out": str(out), "world": [str(w) for w in args.world]},
                    "judge": judge_acc, "worlds": {}, "results": {}}
    start = time.perf_counter()
    for name, world in worlds.items():
        _ORIGINAL_VARIANTS.clear()
        report["worlds"][name] = {"train": world.config.key(), "steps": world.trained_steps,
                                  "final_loss": world.final_loss}
        for set_name in args.sets:
            report["results"].setdefault(name, {})[set_name] = run_set(world, judge, name, set_name, args.methods,
                                                                       settings)
            (out / "results.json").write_text(json.dumps(report, indent=1, default=str))  # after every set
    write(out, report)
    log.info("wrote %s in %.0f s", out, time.perf_counter() - start)


if __name__ == "__main__":
    main()

