"""Precision of the erase ("forget right") on synthetic CLIP-like text geometry: uce vs small vs scale.

Every erased concept has a look-alike (cosine 0.8 to 0.95 with it) that is NOT erased, and a fixed
set of unrelated prompts is never erased either. A precise method moves the erased prompts' projections
onto their guide's and leaves the look-alikes and the unrelated prompts where they were. This is
evidence on synthetic data, to be replaced by measurements on real weights and a real text encoder.

Prints one JSON line per (variant, concept count)::

    variant, concepts, efficacy_mean, efficacy_min, erased_drift_mean, lookalike_drift_mean, lookalike_drift_max,
    lookalike_word_drift_mean, unrelated_drift_mean, unrelated_drift_max, efficacy_per_lookalike_drift,
    efficacy_per_unrelated_drift, row_weight_mean, weight_change, seconds, matrices, settings

* ``efficacy_mean`` / ``efficacy_min``: per erased prompt, ``scapre_core.metrics.efficacy_gaps``
  (how far its projected contexts ``W X^T`` moved onto its guide's ``W0 Y^T``, along the way from
  ``W0 X^T``: 0 nothing moved towards the guide, 1 all the way), sums pooled over all matrices; then mean
  and min over the erased concepts.
* ``erased_drift_mean``: the same drift measure (next item) on the erased prompts' full sequences: how far
  they moved at all, wherever to. Next to ``unrelated_drift_mean`` it tells a selective edit (erased prompts
  move far more than the rest) from a global one (everything moves alike).
* ``lookalike_drift_mean`` / ``_max``: per look-alike prompt, ``metrics.drift_gaps`` on its full 77-token
  sequence (what the UNet reads), ``||(W - W0) Z^T|| / ||W0 Z^T||`` pooled over matrices; mean and max over
  look-alikes. 0 is untouched.
* ``lookalike_word_drift_mean``: the same drift restricted to the look-alike's last word token alone
  (the token most similar to the erased concept vector; the padding tokens dilute the full-sequence figure).
* ``unrelated_drift_mean`` / ``_max``: the full-sequence drift of the unrelated prompts.
* ``efficacy_per_lookalike_drift``: ``efficacy_mean / lookalike_drift_mean``, the trade-off in one number;
  ``efficacy_per_unrelated_drift`` likewise for the unrelated prompts.
* ``row_weight_mean``: the mean Informax row weight ``m_ij`` over rows, concepts and matrices (null for uce).
  ``m_ij`` scales each concept's target in the data term but not the Gram term ``S``, so a row with
  ``m_ij = m`` maps the erased contexts towards ``m`` times the guide's projection rather than onto it.
* ``weight_change``: ``||W - W0|| / ||W0||`` (Frobenius) pooled over all matrices.
* ``seconds``: the edit alone (``informax_weights`` then ``erase`` with that result: Informax, entropy,
  solve, Bures), not the measures; a small warm-up edit runs first so the first case pays no start-up cost.
* ``matrices``: matrices edited; ``settings``: the non-default ``ScaPreConfig`` fields of the variant.

Measures are computed from pooled Gram matrices (see the comment above ``CHUNK``), equal to
``metrics.efficacy_gaps`` / ``metrics.drift_gaps`` summed over matrices; each case checks this on a few
prompts against the library functions and logs the largest difference (it stops beyond 1e-6).

A better method has higher efficacy and lower drift, i.e. a higher ``efficacy_per_*_drift``. Variants run
at different erase scales (published settings), so compare the ratios, or compare drift at similar efficacy.
The edit is linear in the text: a look-alike word ``rho c + sqrt(1 - rho^2) r`` changes by
``rho dW c + sqrt(1 - rho^2) dW r``, so for a remainder ``r`` the edit cannot know, it inherits at least about
``rho`` times the erased word's change (in expectation). Look-alike collateral is therefore expected; what
separates methods is how much of it they pay per unit of efficacy.

Geometry (d = 768, 77 tokens, as CLIP ViT-L/14 in SD1.x; every token norm near 28, CLIP-like):

* position 0: one start-token vector shared by every prompt;
* positions 1..f: the prompt's word tokens (random unit directions times 28); erased prompts have
  f in {1, 2, 3} (multi-token names), the last word is the concept vector ``c_j``;
* positions f+1..76 (end token, then padding): in a causal encoder they depend on the prompt. Modelled as
  a shared padding component ``pad_k`` (a common direction plus a slowly varying positional part) plus a
  prompt-dependent leak of the last word, ``LEAK * (FLOOR + (1 - FLOOR) * RHO^(k-f-1)) * word_f``: strong at
  the end token, decaying to a floor, never zero (real padding outputs keep the prompt's meaning);
* look-alike of erased prompt j: the same length, each word at cosine ``rho_j ~ U[0.8, 0.95]`` (one draw
  per concept) with the erased prompt's word, so its padding leak is a look-alike too;
* unrelated prompts: 1 to 6 independent random words;
* guide: the empty prompt (start token, then padding leaking the start token), ``f_g = 0`` (ScaPre default).

The shared padding is most of every sequence's energy (74 of 77 tokens), as in CLIP, where the padding
outputs of different prompts are alike; ``--pad-share 0`` removes it (padding is then the prompt's leak
alone), to see which results come from that shared part.

Not modelled: CLIP's anisotropy among word tokens (random words here are near-orthogonal), contextual
mixing of earlier words into later word tokens, the outsized start-token activations of real CLIP.

Weights: six SD1.5-shaped cross-attention matrices, keys and values of widths 320, 640 and 1280 (one block
per width; SD1.5 has 32 such matrices, the solve treats each on its own), entries N(0, 1/d) in float32.
Real weights are not random; Informax row weights and entropy factors are only as informative as
random rows allow.

Variants, ScaPre's published settings (SPEC "Published settings"), all lam 0.5 and seed 0:
uce erase_scale 1; small p 2, alpha_min 0.8, entropy_samples 20, erase_scale 1; scale erase_scale 2, p 5,
ASED on, bures_iters 1, entropy_samples 30 (MI weights on, mu from entropy). Concept sets are nested
(the first 10 of the 50, ...), so counts are comparable. Usage::

    python benchmarks/bench_precision.py                  # 10, 50, 100, 500 concepts
    python benchmarks/bench_precision.py --quick          # 10 and 50 only
    python benchmarks/bench_precision.py --concepts 20 200 --variants scale uce
    python benchmarks/bench_precision.py --quick --pad-share 0   # diagnostic: no shared padding
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: pack.py
import pack  # noqa: E402, F401  (registers scapre_core)

from scapre_core import ConceptSet, ScaPreConfig, erase, informax_weights  # noqa: E402
from scapre_core.metrics import Gap, drift_gaps, efficacy_gaps  # noqa: E402

log = logging.getLogger("bench_precision")

DIM = 768
TOKENS = 77
NORM = 28.0  # CLIP ViT-L final-layer token norm, roughly
LEAK = 0.5  # share of the last word leaking into the end token
FLOOR = 0.3  # the leak never decays below this share of LEAK
RHO = 0.85  # per-position decay of the leak
POS_ANCHORS = 8  # positional part of the padding: interpolated between this many random directions
POS_SHARE = 0.3  # size of the positional part relative to the common padding direction
COS_RANGE = (0.8, 0.95)
ERASE_WORDS = (1, 3)
UNRELATED_WORDS = (1, 6)

SD15_SUBSET = {f"{block}.1.transformer_blocks.0.attn2.to_{kv}.weight": (o, DIM)
               for block, o in (("input_blocks.1", 320), ("input_blocks.4", 640), ("input_blocks.7", 1280))
               for kv in "kv"}

VARIANTS = {
    "uce": ScaPreConfig(variant="uce", lam=0.5, erase_scale=1.0, seed=0),
    "small": ScaPreConfig(variant="small", lam=0.5, erase_scale=1.0, p=2.0, alpha_min=0.8, entropy_samples=20,
                          seed=0),
    "scale": ScaPreConfig(variant="scale", lam=0.5, erase_scale=2.0, p=5.0, ased=True, bures_iters=1,
                          entropy_samples=30, use_informax=True, mu_from_entropy=True, seed=0),
    # the published explicit-content run: Informax off
    "scale_no_informax": ScaPreConfig(variant="scale", lam=0.5, erase_scale=2.0, p=3.0, bures_iters=1,
                                      use_informax=False, mu_from_entropy=True, seed=0),
}


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class Geometry:
    """Shared parts of every prompt: the start token and the per-position padding component."""

    start: torch.Tensor  # [d]
    pad: torch.Tensor  # [T, d]

    @classmethod
    def draw(cls, g: torch.Generator) -> Geometry:
        start = NORM * _unit(torch.randn(DIM, generator=g))
        common = _unit(torch.randn(DIM, generator=g))
        anchors = _unit(torch.randn(POS_ANCHORS, DIM, generator=g))
        where = torch.linspace(0, POS_ANCHORS - 1, TOKENS)
        lo = where.floor().long().clamp(max=POS_ANCHORS - 2)
        frac = (where - lo).unsqueeze(1)
        positional = _unit((1 - frac) * anchors[lo] + frac * anchors[lo + 1])
        pad = NORM * _unit(common + POS_SHARE * positional)
        return cls(start=start, pad=pad)

    def scaled(self, pad_share: float) -> Geometry:
        """The same geometry with the shared padding component multiplied by ``pad_share``."""
        return Geometry(start=self.start, pad=pad_share * self.pad)

    def sequences(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[n, T, d]`` encodings of ``n`` prompts; prompt ``i`` has the word tokens ``words[i, :lengths[i]]``
        (``words`` is ``[n, F, d]``; ``lengths`` may be 0, the empty prompt)."""
        n, most = words.shape[:2]
        pos = torch.arange(TOKENS).unsqueeze(0)  # [1, T]
        f = lengths.unsqueeze(1)  # [n, 1]
        placed = torch.zeros(n, TOKENS, DIM)
        placed[:, 1:most + 1] = words
        last = torch.where((lengths > 0).unsqueeze(1), words[torch.arange(n), (lengths - 1).clamp(min=0)], self.start)
        after = pos > f
        leak = torch.where(after, LEAK * (FLOOR + (1 - FLOOR) * RHO ** (pos - f - 1).clamp(min=0).float()), 0.0)
        seq = placed * ((pos >= 1) & (pos <= f)).unsqueeze(2)
        seq = seq + after.unsqueeze(2) * self.pad.unsqueeze(0) + leak.unsqueeze(2) * last.unsqueeze(1)
        seq[:, 0] = self.start
        return seq


@dataclass(frozen=True)
class Prompts:
    """Nested prompt sets (``[n, T, d]`` each): erased prompts, their look-alikes, unrelated prompts, and the
    empty prompt (``[T, d]``); ``erase_last[j]`` is the index of erased prompt ``j``'s last word token, which
    is also its look-alike's."""

    erase: torch.Tensor
    erase_last: list[int]
    lookalike: torch.Tensor
    cosines: list[float]
    unrelated: torch.Tensor
    empty: torch.Tensor


def _random_words(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return NORM * _unit(torch.randn(*shape, DIM, generator=g))


def _lookalike(words: torch.Tensor, cos: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Words at cosine ``cos[i]`` with ``words[i, k]`` for every ``k`` (``words`` ``[n, F, d]`` of norm NORM)."""
    u = _unit(words)
    r = torch.randn(words.shape, generator=g)
    r = _unit(r - (r * u).sum(dim=2, keepdim=True) * u)
    c = cos.view(-1, 1, 1)
    return NORM * (c * u + (1 - c * c).sqrt() * r)


def draw_prompts(concepts: int, unrelated: int, seed: int = 0, pad_share: float = 1.0) -> Prompts:
    """The geometry of the module docstring; the first ``m`` prompts do not depend on ``concepts``, and the
    unrelated prompts depend on neither."""
    g = torch.Generator().manual_seed(seed)
    geo = Geometry.draw(g).scaled(pad_share)
    last, words, cos, look = [], [], [], []
    for _ in range(concepts):  # one concept at a time, so that concept j is the same for every count
        f = int(torch.randint(ERASE_WORDS[0], ERASE_WORDS[1] + 1, (1,), generator=g))
        w = torch.zeros(1, ERASE_WORDS[1], DIM)
        w[:, :f] = _random_words((1, f), g)
        c = COS_RANGE[0] + (COS_RANGE[1] - COS_RANGE[0]) * torch.rand(1, generator=g)
        look_w = torch.zeros_like(w)
        look_w[:, :f] = _lookalike(w[:, :f], c, g)
        last.append(f)
        words.append(w)
        cos.append(float(c))
        look.append(look_w)
    lengths = torch.tensor(last)
    g_u = torch.Generator().manual_seed(seed + 1)
    u_len = torch.randint(UNRELATED_WORDS[0], UNRELATED_WORDS[1] + 1, (unrelated,), generator=g_u)
    u_words = _random_words((unrelated, UNRELATED_WORDS[1]), g_u)
    return Prompts(
        erase=geo.sequences(torch.cat(words), lengths),
        erase_last=last,
        lookalike=geo.sequences(torch.cat(look), lengths),
        cosines=cos,
        unrelated=geo.sequences(u_words, u_len),
        empty=geo.sequences(torch.zeros(1, 1, DIM), torch.zeros(1, dtype=torch.long))[0],
    )


def draw_weights(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) / s[1] ** 0.5 for k, s in SD15_SUBSET.items()}


def concept_set(prompts: Prompts, m: int) -> ConceptSet:
    """The first ``m`` erased prompts, each guided to the empty prompt (``f_g = 0``)."""
    return ConceptSet.from_embeddings(list(prompts.erase[:m]), prompts.erase_last[:m], [prompts.empty] * m,
                                      [0] * m, prompts.empty)


def _settings(cfg: ScaPreConfig) -> dict:
    default = ScaPreConfig()
    return {k: v for k, v in cfg.to_dict().items() if v != getattr(default, k) or k == "variant"}


# --- measures -------------------------------------------------------------------------------------------------
# metrics.efficacy_gaps / drift_gaps pooled over matrices are sums of squared norms, so they are quadratic
# forms in pooled Gram matrices: with dW = W - W0 summed over matrices, C0 = sum W0^T W0, D = sum dW^T dW,
# E = sum W0^T dW, and a prompt's tokens as rows of X (context), Y (guide), Z (any prompt):
#   efficacy numerator   <dW X^T, W0 (Y - X)^T> = -sum_t ((X - Y) E)_t . X_t
#   efficacy denominator ||W0 (X - Y)^T||^2 = q(X - Y, C0);   drift: q(Z, D) over q(Z, C0).
# That is 6x fewer flops than a projection per matrix and prompt; every case checks it against the library
# functions on a few prompts (CHECK_PROMPTS), and the figures are the library's Gap.efficacy / Gap.drift.

CHUNK = 32  # prompts per matmul in the quadratic forms
CHECK_PROMPTS = 3
CHECK_TOL = 1e-6


def _padded(seqs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    t = max(s.shape[0] for s in seqs)
    out = torch.zeros(len(seqs), t, seqs[0].shape[1])
    for j, s in enumerate(seqs):
        out[j, : s.shape[0]] = s
    return out


def _forms(left: torch.Tensor, mat: torch.Tensor, right: torch.Tensor | None = None) -> torch.Tensor:
    """Per prompt ``sum_t left_t mat right_t`` (``[n, t, d]`` float32 inputs, float64 arithmetic)."""
    right = left if right is None else right
    out = []
    for i in range(0, left.shape[0], CHUNK):
        u = left[i:i + CHUNK].double()
        v = right[i:i + CHUNK].double()
        out.append(((u @ mat) * v).sum(dim=(1, 2)))
    return torch.cat(out)


@dataclass(frozen=True)
class Probe:
    """The measured prompts of the largest concept count, stacked, with their variant-independent references."""

    contexts: torch.Tensor  # [m, t, d], X_j zero-padded
    diff: torch.Tensor  # [m, t, d], X_j - Y_j
    sets: dict[str, torch.Tensor]  # name -> [n, t, d]: erased, lookalike, lookalike_word, unrelated
    eff_reference: torch.Tensor  # [m]
    references: dict[str, torch.Tensor]  # name -> [n]

    @classmethod
    def build(cls, prompts: Prompts, concepts: ConceptSet, c0: torch.Tensor) -> Probe:
        contexts = _padded(concepts.contexts)
        diff = contexts - _padded(concepts.targets)
        idx = torch.tensor(prompts.erase_last)
        sets = {
            "erased": prompts.erase,
            "lookalike": prompts.lookalike,
            "lookalike_word": prompts.lookalike[torch.arange(len(idx)), idx].unsqueeze(1),
            "unrelated": prompts.unrelated,
        }
        return cls(contexts, diff, sets, _forms(diff, c0), {k: _forms(v, c0) for k, v in sets.items()})


def pooled_grams(weights: dict[str, torch.Tensor], edited: dict[str, torch.Tensor] | None = None):
    """``C0`` (no ``edited``) or ``(D, E)`` summed over matrices, float64."""
    if edited is None:
        return sum(w.double().T @ w.double() for w in weights.values())
    d_sum, e_sum = 0, 0
    for name, w0 in weights.items():
        delta = edited[name].double() - w0.double()
        d_sum = d_sum + delta.T @ delta
        e_sum = e_sum + w0.double().T @ delta
    return d_sum, e_sum


def measure(probe: Probe, m: int, d_mat: torch.Tensor, e_mat: torch.Tensor) -> dict[str, list[Gap]]:
    """Pooled gaps of the first ``m`` concepts: ``efficacy`` and one drift list per prompt set."""
    out = {}
    ref = probe.eff_reference[:m]
    moved = []
    for i in range(0, m, CHUNK):
        x = probe.contexts[i:min(i + CHUNK, m)].double()
        diff = probe.diff[i:min(i + CHUNK, m)].double()
        moved.append(-((diff @ e_mat) * x).sum(dim=(1, 2)))
    out["efficacy"] = [Gap(float(r), float(f)) for r, f in zip(torch.cat(moved), ref, strict=True)]
    for name, seqs in probe.sets.items():
        n = seqs.shape[0] if name == "unrelated" else m
        res = _forms(seqs[:n], d_mat)
        out[name] = [Gap(float(r), float(f)) for r, f in zip(res, probe.references[name][:n], strict=True)]
    return out


def check_against_library(weights, edited, concepts: ConceptSet, probe: Probe, gaps: dict[str, list[Gap]]) -> float:
    """Largest difference between our pooled figures and ``metrics.efficacy_gaps`` / ``drift_gaps`` summed
    over matrices, on the first ``CHECK_PROMPTS`` prompts of each set; raises beyond ``CHECK_TOL``."""
    k = min(CHECK_PROMPTS, concepts.num_concepts)
    lib = {"efficacy": [], **{name: [] for name in probe.sets}}
    for name, w0 in weights.items():
        w = edited[name]
        lib["efficacy"].append(efficacy_gaps(w0, w, concepts.contexts[:k], concepts.targets[:k]))
        for set_name, seqs in probe.sets.items():
            lib[set_name].append(drift_gaps(w0, w, list(seqs[:k])))
    worst = 0.0
    for set_name, per_matrix in lib.items():
        pooled = [sum(g[1:], g[0]) for g in zip(*per_matrix, strict=True)]
        for ours, ref in zip(gaps[set_name][:k], pooled, strict=True):
            if set_name == "efficacy":
                diff = abs(ours.efficacy - ref.efficacy)
            else:
                diff = abs(ours.drift - ref.drift) / max(ref.drift, 1e-12)
            worst = max(worst, diff)
    if worst > CHECK_TOL:
        raise AssertionError(f"pooled measures differ from scapre_core.metrics by {worst:.3g}")
    return worst


def run_case(variant: str, m: int, prompts: Prompts, weights: dict[str, torch.Tensor], probe: Probe) -> dict:
    cfg = VARIANTS[variant]
    concepts = concept_set(prompts, m)
    start = time.perf_counter()
    # Informax computed first and handed to erase (which then gives exactly what it computes itself), so
    # that its row weights can be reported; uce uses none.
    informax = informax_weights(weights, concepts, cfg) if cfg.needs_row_weights or cfg.needs_entropy else None
    edited = erase(weights, concepts, cfg, informax=informax)
    seconds = time.perf_counter() - start
    row_weight_mean = None
    if informax is not None and cfg.needs_row_weights:
        row_w = [st.row_weights for st in informax.stats.values()]
        row_weight_mean = round(float(sum(w.sum() for w in row_w) / sum(w.numel() for w in row_w)), 4)

    d_mat, e_mat = pooled_grams(weights, edited)
    gaps = measure(probe, m, d_mat, e_mat)
    worst = check_against_library(weights, edited, concepts, probe, gaps)
    log.info("%s, %d concepts: edit %.1f s, measures agree with scapre_core.metrics to %.1e", variant, m,
             seconds, worst)
    eff = [g.efficacy for g in gaps["efficacy"]]
    erased, look, look_word, unrel = ([g.drift for g in gaps[k]]
                                      for k in ("erased", "lookalike", "lookalike_word", "unrelated"))
    change = sum(float((edited[k].double() - w.double()).pow(2).sum()) for k, w in weights.items())
    base = sum(float(w.double().pow(2).sum()) for w in weights.values())

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b > 0 else None

    return {
        "variant": variant,
        "concepts": m,
        "efficacy_mean": round(mean(eff), 4),
        "efficacy_min": round(min(eff), 4),
        "erased_drift_mean": round(mean(erased), 4),
        "lookalike_drift_mean": round(mean(look), 4),
        "lookalike_drift_max": round(max(look), 4),
        "lookalike_word_drift_mean": round(mean(look_word), 4),
        "unrelated_drift_mean": round(mean(unrel), 4),
        "unrelated_drift_max": round(max(unrel), 4),
        "efficacy_per_lookalike_drift": ratio(mean(eff), mean(look)),
        "efficacy_per_unrelated_drift": ratio(mean(eff), mean(unrel)),
        "row_weight_mean": row_weight_mean,
        "weight_change": round((change / base) ** 0.5, 4),
        "seconds": round(seconds, 2),
        "matrices": len(weights),
        "settings": _settings(cfg),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", type=int, nargs="+", default=[10, 50, 100, 500],
                        help="erased concept counts (nested sets)")
    parser.add_argument("--quick", action="store_true", help="only 10 and 50 concepts")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--unrelated", type=int, default=200, help="unrelated prompts measured for drift")
    parser.add_argument("--seed", type=int, default=0, help="seed of the text geometry (weights use seed + 1)")
    parser.add_argument("--pad-share", type=float, default=1.0,
                        help="scale of the padding component shared by all prompts (diagnostic; 0 removes it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    counts = [10, 50] if args.quick else sorted(set(args.concepts))
    if min(counts) < 1:
        parser.error("--concepts must be positive")

    prompts = draw_prompts(max(counts), args.unrelated, args.seed, args.pad_share)
    weights = draw_weights(args.seed + 1)
    probe = Probe.build(prompts, concept_set(prompts, max(counts)), pooled_grams(weights))
    log.info("geometry: %d erased prompts with look-alikes, %d unrelated, pad share %g, %d matrices, %d threads",
             max(counts), args.unrelated, args.pad_share, len(weights), torch.get_num_threads())
    erase(weights, concept_set(prompts, 1), VARIANTS["scale"])  # warm-up, untimed
    total = time.perf_counter()
    for m in counts:
        for variant in args.variants:
            log.info("%s, %d concepts", variant, m)
            result = run_case(variant, m, prompts, weights, probe)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    log.info("done in %.1f s", time.perf_counter() - total)


if __name__ == "__main__":
    main()
