"""Does the concept come back? Every preset of ``scapre_core.presets`` (the published settings, the defaults, those
beyond the paper, and ``uce``), erasing 1 and 5 concepts in the miniature worlds, attacked with prompt variants and
with embeddings (``scapre_core.attacks``), judged in pictures.

Per world, concept set, method and attack, pooled over noise seeds, with 95 % Wilson intervals, per world and pooled
over the worlds:

* ``forget``, ``keep_look``, ``keep_other``: as ``bench.py`` measures them on the plain prompts (forget: share of
  pictures of erased prompts in which the judge still reads the concept; keep: paired retention).
* **recovery** per attack: among the erased concept's pictures in which the ORIGINAL model drew the concept (the
  judge reads it; paired, from the same noise), the share in which the EDITED model drew it under the attack. For
  the embedding attacks the original's picture is that of the plain prompt; for prompt variants, that of the same
  variant prompt (a variant the original does not draw as the concept counts nowhere). The ``plain`` row is the same
  paired measure for the plain prompts, so every attack row reads against it.

Attacks (per erased concept, on the prompts naming it, ``bench.build_case``'s erased asks):

* ``context``: the prompt reversed, the concept repeated, moved to the start, inside a longer prompt;
* ``neighbour`` (not run by default): the concept's word replaced by its nearest words of the same kind in the
  token-embedding table. The world has no synonyms: its nearest words are other colours or shapes, which the
  original never draws as the concept, so nothing is counted (n = 0) and the drawings are wasted;
* ``neutral``: the concept's words replaced by filler words (the soft tokens' start; a control);
* ``soft``: soft tokens (UnlearnDiff-style) in the conditioning, each within the largest norm the encoder produces;
  ``soft unbounded``: without that limit (a user who controls the conditioning); ``soft input``: soft tokens in the
  text encoder's input (a textual-inversion embedding, unbounded). Each searches ``--search-steps`` Adam steps
  (batch 8) on the original's pictures of the concept's prompts at other seeds than the judged ones;
* ``vector xS``: the Ring-A-Bell-style concept vector added to the prompt without the concept at strength S.

The SSIM rule of ScaPre Attack (``scapre_core.evaluation.recovery``) is computed on the same pictures, and its
agreement with the judge reported.

Resumable and split by world: every (world, set, method) is saved as it finishes, in
``<out>/parts/<world>/<set>/<method>.json`` with what it was measured with (the settings, the world's training key
and the method's full config); a rerun skips the parts whose record matches and redoes the others (a preset whose
config changed is measured again). With several worlds each world runs in a process of its own (``--jobs`` at a
time, one thread each; logs in ``<out>/logs/``). Before it starts, the run prints an estimate of its time from the
operations still to do and their cost measured on this machine (``--estimate`` prints it and stops). Usage (repo
root)::

    python benchmarks/miniworld/attack_bench.py --estimate                       # every world, set and preset
    nice python benchmarks/miniworld/attack_bench.py --jobs 2 --out R             # ... run it (rerun to resume)
    python benchmarks/miniworld/attack_bench.py --worlds clip64 --sets "1 colour" --methods uce --out R
    python benchmarks/miniworld/attack_bench.py --merge R/a R/b --out R          # runs made on other machines

Outputs (default ``${SCAPRE_MINIWORLD_OUT:-<cache>/results}/attacks``): ``parts/``, ``results.json``, ``table.md``,
``recovery-<world>.png`` per world and ``recovery-pooled.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import subprocess
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
from scapre_core.presets import PRESETS, preset_config

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
from .bench import CONCEPT_SETS, SIZES, Tally, _reads_concept, build_case, pool
from .evaluate import Ask, concept_set, draw, edited_unet, read
from .train import JudgeConfig, cache_dir, get_judge

log = logging.getLogger("miniworld.attack_bench")

STRENGTHS = (1.0, 2.0, 4.0)
SOFT_ATTACKS = {"soft": ("conditioning", True), "soft unbounded": ("conditioning", False),
                "soft input": ("input", False)}
ATTACKS = ("plain", "context", "neighbour", "neutral", *SOFT_ATTACKS, *(f"vector x{s:g}" for s in STRENGTHS))
EMBEDDING = ("neutral", *SOFT_ATTACKS, *(f"vector x{s:g}" for s in STRENGTHS))
#: What ``neighbour`` finds in the worlds never counts (see above): left out unless asked for.
DEFAULT_ATTACKS = tuple(a for a in ATTACKS if a != "neighbour")
SETS = ("1 colour", "5 mixed")
#: Every preset of ``scapre_core.presets`` (``uce`` among them), as ScaPre Erase applies it (strength 1, seed 0);
#: a preset added there is measured here without a change.
METHODS = tuple(PRESETS)
UNEDITED = "unedited"


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
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """What a result depends on, as JSON data (saved with every part; a part is reused only when it matches)."""
        return _plain({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def _plain(value):
    return json.loads(json.dumps(value, default=str))


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
                   counts: dict[str, Counts], targets_cache: dict | None = None,
                   seconds: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Every attack on ``concept`` against ``unet``; adds to ``counts`` (one :class:`Counts` per attack) and returns
    the embedding attacks' conditionings of the concept's asks (``[len(asks), 77, d]`` each).
    ``base``/``plain``: the original's and the edit's pictures of all asks (``case.asks * images``) per noise seed;
    ``base_reads``: whether the original drew this concept in each of them. ``targets_cache``: the original's
    pictures the searches train on, per concept (the same for every edit of a world and set); ``seconds``: time
    spent per attack is added there."""
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

    clock = {"t": time.perf_counter()}

    def lap(name: str) -> None:
        now = time.perf_counter()
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + now - clock["t"]
        clock["t"] = now

    if "plain" in s.attacks:
        for sd in s.seeds:
            hit = _reads(judge, plain[sd][positions], [all_asks[p] for p in positions], concept)
            for p, h in zip(positions, hit, strict=True):
                counts["plain"].add(base_reads[sd][p], h)
        lap("plain")
    if "context" in s.attacks:
        forms = [context_variants(a, concept) for a in asks]
        for f in range(len(forms[0])):
            judged("context", None, [forms[i][f][1] for i in range(len(asks))])
        lap("context")
    if "neighbour" in s.attacks:
        others = tuple(w for c in case.concepts if c for w in c.split())
        near = neighbour_words(world, concept, k=2, exclude=others)
        for word in near:
            texts = [" ".join(word if w in concept.split()[:1] else w for w in a.text.split()
                              if w not in concept.split()[1:]) for a in asks]
            judged("neighbour", None, texts)
        lap("neighbour")
    templates = Templates.of(asks, concept, s.tokens)
    used: dict[str, torch.Tensor] = {}
    if "neutral" in s.attacks:
        with torch.no_grad():
            used["neutral"] = world.encode(list(templates.texts))[0]
        judged("neutral", used["neutral"])
        lap("neutral")
    wanted = [a for a in SOFT_ATTACKS if a in s.attacks]
    if wanted:
        cache = targets_cache if targets_cache is not None else {}
        if concept not in cache:
            cache[concept] = torch.cat([draw(world, asks, ts, steps=s.steps, guidance=s.guidance)
                                        for ts in s.train_seeds])
        targets = cache[concept]
        lap("targets")
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
            lap(name)
    strengths = [x for x in STRENGTHS if f"vector x{x:g}" in s.attacks]
    if strengths:
        vc = vector_conds(world, asks, concept, vector_pairs(concept), tuple(strengths))
        for eta, conds in zip(strengths, vc, strict=True):
            judged(f"vector x{eta:g}", conds)
            used[f"vector x{eta:g}"] = conds
        lap("vector")
    return used


# --- units of work: one (world, set, method), saved as it finishes -------------------------------------------

def method_config(method: str):
    """The config ``method`` is measured with (``None`` for the unedited model): the preset as ScaPre Erase applies
    it (strength 1, seed 0)."""
    return None if method == UNEDITED else preset_config(method, 1.0, seed=0)


def unit_record(world_key: str, set_name: str, method: str, settings: Settings) -> dict:
    """Everything a part's figures depend on; a saved part is reused only when its record equals this."""
    config = method_config(method)
    return _plain({"world": world_key, "set": set_name, "concepts": CONCEPT_SETS[set_name], "sizes": SIZES[set_name],
                   "method": method, "config": None if config is None else dataclasses.asdict(config),
                   "settings": settings.record()})


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "_"


def part_path(out: Path, world_name: str, set_name: str, method: str) -> Path:
    return out / "parts" / _slug(world_name) / _slug(set_name) / f"{_slug(method)}.json"


def load_part(path: Path, record: dict) -> dict | None:
    """The saved entry at ``path`` when it was measured as ``record`` says, else ``None``."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("entry") if saved.get("record") == record else None


def save_part(path: Path, record: dict, entry: dict) -> None:
    """Written whole or not at all (a run killed mid-write leaves the old part or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"record": record, "entry": entry}, indent=1, default=str))
    os.replace(tmp, path)


def _text_side(world, concepts: list[str], config):
    """The concept set an edit is computed from; the ``focus`` variant (the ``precise`` preset) needs look-alikes
    and references, found in the world's own text space where ``evaluate.focus_concept_set`` exists."""
    if getattr(config, "variant", None) == "focus":
        from . import evaluate

        finder = getattr(evaluate, "focus_concept_set", None)
        if finder is None:
            raise SystemExit("the focus variant needs evaluate.focus_concept_set (not in this checkout)")
        return finder(world, concepts)[0]
    return concept_set(world, concepts)


@dataclass
class SetState:
    """What every method of one world and set shares: the case and the original's pictures and readings."""

    case: object
    all_asks: list
    base: dict[int, torch.Tensor]
    base_reading: dict
    targets: dict = field(default_factory=dict)

    @classmethod
    def make(cls, world, judge, set_name: str, s: Settings) -> SetState:
        case = build_case(CONCEPT_SETS[set_name], *SIZES[set_name])
        all_asks = list(case.asks) * s.images
        base = {sd: draw(world, all_asks, sd, steps=s.steps, guidance=s.guidance) for sd in s.seeds}
        return cls(case, all_asks, base, {sd: read(judge, base[sd], all_asks) for sd in s.seeds})


def run_unit(world, judge, state: SetState, set_name: str, method: str, settings: Settings) -> dict:
    """One method on one world and set: retention on the plain prompts and every attack's recovery."""
    s = settings
    start = time.perf_counter()
    concepts = CONCEPT_SETS[set_name]
    config = method_config(method)
    unet = world.unet if config is None else edited_unet(world, _text_side(world, concepts, config), config)
    tally = Tally.empty()
    plain = {}
    for sd in s.seeds:
        plain[sd] = state.base[sd] if config is None else draw(world, state.all_asks, sd, unet=unet, steps=s.steps,
                                                                guidance=s.guidance)
        tally.add(state.case, read(judge, plain[sd], state.all_asks), state.all_asks, state.base_reading[sd], s.keep)
    counts = {a: Counts() for a in s.attacks}
    seconds: dict[str, float] = {"edit and plain": time.perf_counter() - start}
    for concept in concepts:
        base_reads = {sd: [_reads_concept(state.base_reading[sd], i, concept) for i in range(len(state.all_asks))]
                      for sd in s.seeds}
        attack_concept(world, judge, unet, state.case, concept, s, state.base, base_reads, plain, seed=0,
                       counts=counts, targets_cache=state.targets, seconds=seconds)
    return {"retention": tally.summary(), "attacks": {a: c.summary() for a, c in counts.items()},
            "seconds": round(time.perf_counter() - start, 1), "seconds_by_step": {k: round(v, 1)
                                                                                  for k, v in seconds.items()}}


def run_world(world, judge, world_name: str, sets: list[str], methods: list[str], settings: Settings,
              out: Path) -> dict:
    """Every (set, method) of one world not saved yet, each saved as it finishes; returns ``{set: {method: entry}}``
    of all of them (saved or new)."""
    key = world.config.key()
    units = [(set_name, m) for set_name in sets for m in [UNEDITED, *methods]]
    done = {u: e for u in units if (e := load_part(part_path(out, world_name, *u), unit_record(key, *u, settings)))}
    log.info("%s: %d of %d parts already saved", world_name, len(done), len(units))
    results: dict = {}
    spent, ran = 0.0, 0
    for set_name in sets:
        state = None
        _ORIGINAL_VARIANTS.clear()
        for method in [UNEDITED, *methods]:
            unit = (set_name, method)
            if unit in done:
                results.setdefault(set_name, {})[method] = done[unit]
                continue
            if state is None:
                state = SetState.make(world, judge, set_name, settings)
            entry = run_unit(world, judge, state, set_name, method, settings)
            save_part(part_path(out, world_name, *unit), unit_record(key, *unit, settings), entry)
            results.setdefault(set_name, {})[method] = entry
            spent, ran = spent + entry["seconds"], ran + 1
            left = [u for u in units if u not in done and u not in _ran(results)]
            log.info("%s %s %-13s %4.0f s  %s  (%d left in this world)", world_name, set_name, method,
                     entry["seconds"], {a: v["rate"] for a, v in entry["attacks"].items()}, len(left))
    return results


def _ran(results: dict) -> set:
    return {(s, m) for s, per in results.items() for m in per}


# --- what a run costs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ops:
    """A part's work: DDIM steps of drawing calls (``calls``: one per step of a batch; ``pictures``: per picture in
    it) and soft-token search steps in the conditioning and in the text encoder's input."""

    calls: int = 0
    pictures: int = 0
    search_conditioning: int = 0
    search_input: int = 0

    def __add__(self, other: Ops) -> Ops:
        return Ops(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))

    def seconds(self, rates: Rates) -> float:
        return (self.calls * rates.step + self.pictures * rates.picture_step
                + self.search_conditioning * rates.search_conditioning + self.search_input * rates.search_input)


def _draws(batches: int, size: int, steps: int) -> Ops:
    return Ops(batches * steps, batches * size * steps)


@dataclass(frozen=True)
class Rates:
    """Seconds, one thread: per guided DDIM step of a batch (``step``) plus per picture in it (``picture_step``),
    per search step (batch ``Settings.search_batch``) in either space."""

    step: float
    picture_step: float
    search_conditioning: float
    search_input: float


#: Prompt variants per concept: ``attacks.CONTEXT_FORMS`` and ``neighbour_words``'s ``k``.
VARIANTS = {"context": 4, "neighbour": 2}


def _mine(case, concept: str) -> int:
    return sum(1 for r, c in zip(case.roles, case.concepts, strict=True) if r == "erased" and c == concept)


def set_ops(set_name: str, s: Settings) -> Ops:
    """What a world and set costs once, whatever the methods: the original's pictures (all prompts, the prompt
    variants, the searches' training pictures)."""
    case = build_case(CONCEPT_SETS[set_name], *SIZES[set_name])
    ops = _draws(len(s.seeds), len(case.asks) * s.images, s.steps)
    for concept in CONCEPT_SETS[set_name]:
        mine = _mine(case, concept)
        for attack, n in VARIANTS.items():
            if attack in s.attacks:
                ops += _draws(n * len(s.seeds), mine * s.images, s.steps)
        if any(a in s.attacks for a in SOFT_ATTACKS):
            ops += _draws(len(s.train_seeds), mine, s.steps)
    return ops


def unit_ops(set_name: str, method: str, s: Settings) -> Ops:
    """One method's work on one world and set (the edit itself is not counted: well under a second in the worlds)."""
    case = build_case(CONCEPT_SETS[set_name], *SIZES[set_name])
    ops = Ops() if method == UNEDITED else _draws(len(s.seeds), len(case.asks) * s.images, s.steps)
    for concept in CONCEPT_SETS[set_name]:
        mine = _mine(case, concept)
        for attack in s.attacks:
            if attack == "plain":
                continue
            ops += _draws(VARIANTS.get(attack, 1) * len(s.seeds), mine * s.images, s.steps)
            if attack in SOFT_ATTACKS:
                space = SOFT_ATTACKS[attack][0]
                ops += Ops(search_conditioning=s.search_steps if space == "conditioning" else 0,
                           search_input=s.search_steps if space == "input" else 0)
    return ops


def calibrate(world, s: Settings, repeats: int = 2) -> Rates:
    """Time guided drawing (batches of 8 and 24 pictures) and search steps in both spaces on ``world`` with this
    process's threads (the best of ``repeats`` after a warm-up)."""
    asks = list(build_case(["red"], *SIZES["1 colour"]).asks)[:24]
    steps = 4

    def best(fn) -> float:
        fn()
        out = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t)
        return out

    small = best(lambda: draw(world, asks[:8], 0, steps=steps, guidance=s.guidance)) / steps
    large = best(lambda: draw(world, asks, 0, steps=steps, guidance=s.guidance)) / steps
    picture_step = max(large - small, 0.0) / (len(asks) - 8)
    step = max(small - 8 * picture_step, 0.0)
    erased = [a for a in asks if "red" in a.text.split()][:4]
    templates = Templates.of(erased, "red", s.tokens)
    targets = draw(world, erased, 1000, steps=2, guidance=s.guidance)
    which = torch.arange(len(erased))
    n = 4
    search = {space: best(lambda space=space: soft_search(world, world.unet, templates, targets, which, space, n,
                                                          seed=0, batch=s.search_batch)) / n
              for space in ("conditioning", "input")}
    return Rates(step, picture_step, search["conditioning"], search["input"])


def schedule(per_world: dict[str, float], jobs: int) -> float:
    """Wall time of the worlds' processes run ``jobs`` at a time (longest first)."""
    lanes = [0.0] * max(1, min(jobs, len(per_world) or 1))
    for seconds in sorted(per_world.values(), reverse=True):
        lanes[lanes.index(min(lanes))] += seconds
    return max(lanes) if per_world else 0.0


def estimate(todo: dict[str, list[tuple[str, str]]], s: Settings, rates: Rates, jobs: int) -> dict:
    """``todo``: per world, the (set, method) parts still to run. Seconds per part kind, per world, in all (one
    thread each) and the wall time with ``jobs`` worlds at a time."""
    per_world, per_unit = {}, {}
    for world_name, units in todo.items():
        total = sum(set_ops(set_name, s).seconds(rates) for set_name in {u[0] for u in units})
        for set_name, method in units:
            sec = unit_ops(set_name, method, s).seconds(rates)
            per_unit[(set_name, method)] = sec
            total += sec
        per_world[world_name] = total
    return {"parts": sum(map(len, todo.values())), "per_part": per_unit, "per_world": per_world,
            "cpu_seconds": sum(per_world.values()), "wall_seconds": schedule(per_world, jobs), "jobs": jobs,
            "rates": dataclasses.asdict(rates)}


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def describe(est: dict) -> str:
    r = est["rates"]
    lines = [f"estimate: {est['parts']} part(s) to run, {_duration(est['cpu_seconds'])} of one core in all, about "
             f"{_duration(est['wall_seconds'])} with {est['jobs']} world process(es) at a time "
             f"(measured here, one thread: a DDIM step {1e3 * r['step']:.1f} ms + {1e3 * r['picture_step']:.2f} ms per "
             f"picture; a search step {1e3 * r['search_conditioning']:.0f} ms (conditioning), "
             f"{1e3 * r['search_input']:.0f} ms (input); load average {_load()})"]
    by_set: dict[str, list[float]] = {}
    for (set_name, _), sec in est["per_part"].items():
        by_set.setdefault(set_name, []).append(sec)
    for set_name, secs in by_set.items():
        lines.append(f"  {set_name}: {len(secs)} part(s), about {sum(secs) / len(secs):.0f} s each")
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
# --- output -------------------------------------------------------------------------------------------------

def _cell(e: dict) -> str:
    if e.get("rate") is None:
        return "n/a"
    return f"{e['rate']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


def pooled(results: dict) -> dict:
    """Per set and method, the pictures of every world counted together: retention (``bench.pool``) and each
    attack's recovery."""
    out: dict = {}
    for per_set in results.values():
        for set_name, per_method in per_set.items():
            for method, r in per_method.items():
                slot = out.setdefault(set_name, {}).setdefault(method, {"retention": [], "attacks": {}})
                slot["retention"].append(r["retention"])
                for attack, e in r["attacks"].items():
                    slot["attacks"].setdefault(attack, Counts()).merge(Counts.from_summary(e))
    return {k: {m: {"retention": pool(v["retention"]), "attacks": {a: c.summary() for a, c in v["attacks"].items()},
                    "worlds": len(v["retention"])} for m, v in per.items()} for k, per in out.items()}


def table(results: dict) -> str:
    lines = []
    for world_name, per_set in results.items():
        for set_name, per_method in per_set.items():
            attacks = list(next(iter(per_method.values()))["attacks"])
            lines += [f"\n### {world_name}: {set_name}", "",
                      "| method | forget | keep look-alike | keep other | " + " | ".join(attacks) + " |",
                      "|---|---|---|---|" + "---|" * len(attacks)]
            for method, r in per_method.items():
                ret = r["retention"]
                lines.append(f"| {method} | {_cell(ret['forget'])} | {_cell(ret['keep_look'])} | "
                             f"{_cell(ret['keep_other'])} | " + " | ".join(_cell(r["attacks"][a]) for a in attacks)
                             + " |")
    ssim = [e for per_set in results.values() for per_method in per_set.values() for r in per_method.values()
            for a, e in r["attacks"].items() if a in EMBEDDING and e.get("ssim_n")]
    if ssim:
        n = sum(e["ssim_n"] for e in ssim)
        agree = sum(e["ssim_agreement"] * e["ssim_n"] for e in ssim)
        lines += ["", f"SSIM rule vs judge on the embedding attacks' pictures (these tables): agreement "
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
    text = table(results) + "\n" + table({f"pooled over {len(results)} world(s)": report["pooled"]})
    (out / "table.md").write_text(text + "\n")
    for world_name, per_set in results.items():
        figure(out / f"recovery-{_slug(world_name)}.png", per_set, world_name)
    if results:
        figure(out / "recovery-pooled.png", report["pooled"], f"pooled over {len(results)} world(s)")
    sys.stdout.write(text + "\n")


def collect(out: Path, world_keys: dict[str, str], sets: list[str], methods: list[str], s: Settings) -> dict:
    """``{world: {set: {method: entry}}}`` of the saved parts that match this run (in the order asked)."""
    results: dict = {}
    for world_name, key in world_keys.items():
        for set_name in sets:
            for method in [UNEDITED, *methods]:
                entry = load_part(part_path(out, world_name, set_name, method),
                                  unit_record(key, set_name, method, s))
                if entry is not None:
                    results.setdefault(world_name, {}).setdefault(set_name, {})[method] = entry
    return results


def merge(folders: list[Path], out: Path) -> None:
    """One report from the parts of several runs (made with the same settings, e.g. on other machines)."""
    results: dict = {}
    records: dict[str, dict] = {}
    for folder in folders:
        for path in sorted((folder / "parts").glob("*/*/*.json")):
            saved = json.loads(path.read_text())
            record, entry = saved["record"], saved["entry"]
            world_name = path.parent.parent.name
            records[json.dumps(record["settings"], sort_keys=True)] = record["settings"]
            results.setdefault(world_name, {}).setdefault(record["set"], {})[record["method"]] = entry
    if len(records) > 1:
        raise SystemExit(f"the parts in {[str(f) for f in folders]} were measured with different settings: "
                         f"{list(records.values())}")
    write(out, {"results": results, "merged_from": [str(f) for f in folders],
                "settings": next(iter(records.values()), None)})


class WorldSource:
    """A world named in the registry (``worlds.py``) or saved in a file: its name, training key, and loading."""

    def __init__(self, name: str, file: Path | None = None):
        self.name, self.file = name, file
        if file is None:
            from . import worlds as registry

            self.key = registry.world_spec(name).train.key()
        else:
            self._world = None
            self.key = self.load().config.key()

    def load(self):
        if self.file is None:
            from . import worlds as registry

            return registry.load(self.name)
        if self._world is None:
            from .train import load_world

            self._world = load_world(self.file)
        return self._world

    def args(self) -> list[str]:
        return ["--worlds", self.name] if self.file is None else ["--world", str(self.file)]


def sources(names: list[str], files: list[Path]) -> list[WorldSource]:
    """The worlds asked for: ``names`` from the registry and world ``files``; every registered world when neither."""
    try:
        from . import worlds as registry
    except ImportError:
        registry = None
    if not names and not files:
        if registry is None:
            raise SystemExit("this checkout has no world registry (benchmarks/miniworld/worlds.py); pass --world FILE")
        names = list(registry.WORLD_NAMES)
    out = []
    for name in names:
        if registry is None:
            raise SystemExit("this checkout has no world registry (benchmarks/miniworld/worlds.py); pass --world FILE")
        try:
            out.append(WorldSource(name))
        except ValueError as err:
            raise SystemExit(str(err)) from None
    out += [WorldSource(f.stem, f) for f in files]
    return out


def _child_args(args, source: WorldSource) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *source.args(), "--sets", *args.sets,
            "--methods", *args.methods, "--attacks", *args.attacks, "--seeds", *map(str, args.seeds),
            "--images", str(args.images), "--steps", str(args.steps), "--search-steps", str(args.search_steps),
            "--search-lr", str(args.search_lr), "--threads", str(args.threads), "--out", str(args.out)]


def run_processes(args, todo: list[WorldSource], jobs: int) -> list[str]:
    """One process per world, ``jobs`` at a time; returns the worlds whose process failed."""
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    waiting, running, failed = list(todo), {}, []
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                source = waiting.pop(0)
                with (logs / f"{_slug(source.name)}.log").open("a") as f:
                    running[source.name] = subprocess.Popen(_child_args(args, source), stdout=f,
                                                            stderr=subprocess.STDOUT)
                log.info("%s: started (log %s)", source.name, logs / f"{_slug(source.name)}.log")
            time.sleep(2)
            for name, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    log.info("%s: finished with exit code %d", name, proc.returncode)
                    if proc.returncode:
                        failed.append(name)
    finally:
        for proc in running.values():
            proc.terminate()
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Attacks on erasures in the miniature world(s).")
    parser.add_argument("--worlds", nargs="*", default=[], help="registered world names (default: all of them)")
    parser.add_argument("--world", type=Path, action="append", default=[], help="a saved world file (repeatable)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(CONCEPT_SETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="presets (default: every one in scapre_core.presets); the unedited model always runs")
    parser.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds of the judged pictures")
    parser.add_argument("--images", type=int, default=2, help="pictures per prompt and seed")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of every picture")
    parser.add_argument("--search-steps", type=int, default=150)
    parser.add_argument("--search-lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per world process")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="world processes at a time (default: 2, or 1 on one core)")
    parser.add_argument("--estimate", action="store_true", help="print the estimate of the run time and stop")
    parser.add_argument("--no-estimate", action="store_true", help="start without measuring this machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge these runs' parts into --out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.out = (args.out or Path(os.environ.get("SCAPRE_MINIWORLD_OUT", cache_dir() / "results")) / "attacks").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(args.merge, args.out)
        return 0
    settings = Settings(seeds=tuple(args.seeds), images=args.images, steps=args.steps, search_steps=args.search_steps,
                        search_lr=args.search_lr, attacks=tuple(args.attacks))
    worlds = sources(args.worlds, args.world)
    judge, judge_acc = get_judge(JudgeConfig())  # trained once here, before any world process needs it
    if args.child:
        (source,) = worlds
        run_world(source.load(), judge, source.name, args.sets, args.methods, settings, args.out)
        return 0
    todo = {w.name: [(set_name, m) for set_name in args.sets for m in [UNEDITED, *args.methods]
                     if load_part(part_path(args.out, w.name, set_name, m),
                                  unit_record(w.key, set_name, m, settings)) is None] for w in worlds}
    todo = {k: v for k, v in todo.items() if v}
    start = time.perf_counter()
    if todo and not args.no_estimate:
        first = next(w for w in worlds if w.name in todo)
        rates = calibrate(first.load(), settings)
        est = estimate(todo, settings, rates, args.jobs)
        sys.stdout.write(describe(est) + "\n")
        sys.stdout.flush()
        if args.estimate:
            return 0
    elif args.estimate:
        sys.stdout.write("estimate: nothing to run, every part is saved\n")
        return 0
    failed: list[str] = []
    pending = [w for w in worlds if w.name in todo]
    if len(pending) == 1:
        run_world(pending[0].load(), judge, pending[0].name, args.sets, args.methods, settings, args.out)
    elif pending:
        failed = run_processes(args, pending, args.jobs)
    results = collect(args.out, {w.name: w.key for w in worlds}, args.sets, args.methods, settings)
    write(args.out, {"settings": {**vars(args), "out": str(args.out), "world": [str(w) for w in args.world]},
                     "judge": judge_acc, "worlds": {w.name: {"train": w.key} for w in worlds}, "results": results})
    log.info("wrote %s in %.0f s", args.out, time.perf_counter() - start)
    if failed:
        log.error("the process of %s failed (see %s); rerun to resume", failed, args.out / "logs")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
