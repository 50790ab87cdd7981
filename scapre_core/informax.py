"""Informax row weights and the per-row entropy factor (SPEC "Informax row weights", "Entropy factor").

All rows and concepts are handled at once; no per-row Python loops. Randomness comes from a
generator seeded by ``(seed, matrix name, purpose)``, so a matrix's weights do not depend on which
other matrices are edited, on their order, or on whether the entropy factor is also drawn.

Precision. The noise is drawn and the activations are measured in float32 whatever the edit's
``precision`` (as the published code measures them), and the statistics are formed from those
activations in float64. The float32 and float64 edits therefore read the very same row weights and
entropy factors: the binarisation at the median and the histogram bins are discrete, and measuring
them in two precisions would let a single rounding flip a row's weight.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .concepts import ConceptSet
from .config import ScaPreConfig
from .geometry import linalg_device, to_float64
from .validation import check_row_stats

#: Below this standard deviation over rows the MI values count as tied (SPEC "Ties").
MI_TIE_STD = 1e-6
#: Regularisers of the published estimator: added to the contingency counts, to the MI
#: standard deviation, to the min-max range and inside the entropy's logarithm.
EPS = 1e-8
#: Concepts drawn per call to the random generator; fixed so results never depend on memory.
NOISE_BLOCK = 256
#: Rows binned at a time in the entropy histogram (memory only; counts are exact either way).
HIST_BLOCK = 256
#: Precision of the noise draws and activations behind the statistics (see the module docstring).
MEASURE_DTYPE = torch.float32


def matrix_generator(seed: int, name: str, purpose: str, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``(seed, name, purpose)`` by a stable hash."""
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{purpose}".encode()).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return generator


def _noisy_copies(base: torch.Tensor, count: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``[n, count, d]``: ``count`` draws of ``base_j + sigma z`` per row of ``base`` (``[n, d]``)."""
    n, d = base.shape
    out = base.unsqueeze(1).expand(n, count, d).clone()
    if sigma > 0:
        for start in range(0, n, NOISE_BLOCK):
            block = out[start:start + NOISE_BLOCK]
            noise = torch.randn(block.shape, generator=generator, device=base.device, dtype=base.dtype)
            block.add_(noise, alpha=sigma)
    return out


@functools.lru_cache(maxsize=16)
def _mi_table_f64(k: int) -> torch.Tensor:
    """``I[a, b]``: MI (nats) of a balanced 2x2 table with ``a`` of ``k`` positives and ``b`` of ``k``
    negatives above the median, from the published formula (``EPS`` added to each count).

    MI is invariant under flipping the binary activation ``(a, b) -> (k-a, k-b)`` and the labels
    ``(a, b) -> (b, a)``; every entry is computed from its orbit's canonical member, so tables that
    are the same up to orientation give bit-identical values (SPEC "Ties").
    """
    total = 2.0 * k
    table = torch.empty(k + 1, k + 1, dtype=torch.float64)
    for a in range(k + 1):
        for b in range(k + 1):
            a_c, b_c = min((a, b), (k - a, k - b), (b, a), (k - b, k - a))
            n11, n10, n01, n00 = (float(v) + EPS for v in (a_c, b_c, k - a_c, k - b_c))
            p11, p10, p01, p00 = n11 / total, n10 / total, n01 / total, n00 / total
            p1_, p0_ = p11 + p10, p01 + p00
            p_1, p_0 = p11 + p01, p10 + p00
            table[a, b] = (
                p11 * math.log(p11 / (p1_ * p_1))
                + p10 * math.log(p10 / (p1_ * p_0))
                + p01 * math.log(p01 / (p0_ * p_1))
                + p00 * math.log(p00 / (p0_ * p_0))
            )
    return table


def sampled_mutual_information(
    w0: torch.Tensor,
    concept_vecs: torch.Tensor,
    empty_vec: torch.Tensor,
    num_samples: int,
    sigma: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``I[i, j]``: the paper's estimate of MI between row ``i``'s binarised activation and
    "concept ``j`` vs. empty prompt" from ``K`` noisy positives and ``K`` negatives per concept
    (``empty_vec`` is ``[d]``, or ``[m, d]`` with one reference vector per concept).

    Rows are binarised at their lower median with a strict ``>``; the MI comes from the counts.
    """
    m = concept_vecs.shape[0]
    pos = _noisy_copies(concept_vecs, num_samples, sigma, generator)  # [m, K, d]
    neg = _noisy_copies(empty_vec.expand(m, -1), num_samples, sigma, generator)
    samples = torch.cat([pos, neg], dim=1)  # [m, 2K, d]
    acts = (w0 @ samples.reshape(-1, samples.shape[-1]).T).reshape(w0.shape[0], m, 2 * num_samples)
    tau = acts.median(dim=-1, keepdim=True).values  # lower median, as torch.median
    above = acts > tau
    n11 = above[..., :num_samples].sum(-1)  # positives above the median
    n10 = above[..., num_samples:].sum(-1)  # negatives above the median
    table = _mi_table_f64(num_samples).to(linalg_device(w0.device))
    return table[n11.to(table.device), n10.to(table.device)]


def expected_mutual_information(
    w0: torch.Tensor, concept_vecs: torch.Tensor, empty_vec: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Population MI of the same binary channel (SPEC "Variance"): ``ln 2 - H_b(q)`` with
    ``q = Phi(|a - b| / (2 s))``, ``a = w_i.c_j``, ``b = w_i.e``, ``s = sigma ||w_i||``."""
    a = to_float64(w0 @ concept_vecs.T)  # [o, m]
    if empty_vec.dim() == 1:
        b = to_float64(w0 @ empty_vec).unsqueeze(1)  # [o, 1]: one e for all concepts
    else:
        b = to_float64(w0 @ empty_vec.T)  # [o, m]: one e per concept
    gap = (a - b).abs()
    s = (sigma * to_float64(torch.linalg.vector_norm(w0, dim=1))).unsqueeze(1)
    ln2 = math.log(2.0)
    x = gap / (2.0 * s)
    q, q_bar = torch.special.ndtr(x), torch.special.ndtr(-x)
    entropy = -(q * torch.special.log_ndtr(x) + q_bar * torch.special.log_ndtr(-x))
    mi = ln2 - entropy
    # s = 0: a noise-free channel separates perfectly unless the two activations coincide.
    noiseless = (s == 0).expand_as(mi)
    mi = torch.where(noiseless, torch.where(gap > 0, ln2, 0.0).to(mi.dtype), mi)
    return mi.clamp_min(0.0)


def soft_mask(mi: torch.Tensor, temperature: float, power: float) -> torch.Tensor:
    """``m_ij = sigmoid(z_ij / T)^p`` with ``z`` the MI standardised over rows (per concept).

    The standard deviation is the unbiased one plus ``EPS``; when it is at most ``MI_TIE_STD``
    (all rows tied) every ``z`` is 0 instead of amplified rounding noise (SPEC "Ties").
    """
    rows = mi.shape[0]
    mean = mi.mean(dim=0, keepdim=True)
    if rows < 2:
        z = torch.zeros_like(mi)
    else:
        std = mi.std(dim=0, keepdim=True, unbiased=True)
        z = (mi - mean) / (std + EPS)
        z = torch.where(std <= MI_TIE_STD, torch.zeros_like(z), z)
    return torch.sigmoid(z / temperature).pow(power)


def entropy_factor(
    w0: torch.Tensor,
    concept_vecs: torch.Tensor,
    num_samples: int,
    bins: int,
    sigma: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``e_i = 1 - H_i / log(bins)`` (SPEC "Entropy factor"): 1 marks a specialised row.

    ``H_i`` is the Shannon entropy of row ``i``'s activations on ``num_samples`` noisy copies of
    every concept vector, min-max normalised per row and binned exactly like ``torch.histc`` on [0, 1].
    """
    rows = w0.shape[0]
    samples = _noisy_copies(concept_vecs, num_samples, sigma, generator)
    acts = w0 @ samples.reshape(-1, samples.shape[-1]).T  # [o, m * N]
    low = acts.min(dim=1, keepdim=True).values
    high = acts.max(dim=1, keepdim=True).values
    hist = torch.zeros(rows, bins, dtype=acts.dtype, device=acts.device)
    for start in range(0, rows, HIST_BLOCK):  # blocks of rows bound the index tensor's memory
        part = slice(start, start + HIST_BLOCK)
        unit = (acts[part] - low[part]) / (high[part] - low[part] + EPS)
        # torch.histc on [0, 1] puts x in bin floor(x * bins) (the last bin also takes x = 1)
        index = (unit * bins).long().clamp_(0, bins - 1)
        hist[part].scatter_add_(1, index, torch.ones_like(unit))
    hist = to_float64(hist)
    prob = hist / (hist.sum(dim=1, keepdim=True) + EPS)
    entropy = -(prob * (prob + EPS).log()).sum(dim=1)
    return 1.0 - entropy / math.log(bins)


@dataclass(frozen=True)
class RowStats:
    """Per-matrix Informax output. ``row_weights`` is ``[o, m]`` (``None``: all ones, Informax off);
    ``entropy`` is ``[o]``, the factor ``e_i`` (``None`` when not computed)."""

    row_weights: torch.Tensor | None
    entropy: torch.Tensor | None

    def weights_or_ones(self, rows: int, m: int, like: torch.Tensor) -> torch.Tensor:
        if self.row_weights is None:
            return torch.ones(rows, m, dtype=like.dtype, device=like.device)
        return self.row_weights.to(device=like.device, dtype=like.dtype)

    @property
    def spread(self) -> torch.Tensor | None:
        """``h_i = clamp(1 - e_i, 0, 1)``: the row's activation entropy share."""
        return None if self.entropy is None else (1.0 - self.entropy).clamp(0.0, 1.0)


@dataclass(frozen=True)
class InformaxResult:
    """Row weights and entropy factors per matrix, with what they were computed from.

    ``erase`` accepts it instead of computing its own, after checking that it matches the
    weights, the concepts and the config (``INFORMAX_FIELDS``)."""

    stats: Mapping[str, RowStats]
    settings: Mapping[str, Any]
    concept_fingerprint: str
    shapes: Mapping[str, tuple[int, int]]
    checksums: Mapping[str, float] = field(default_factory=dict)

    def check_matches(self, names: list[str], concepts: ConceptSet, config: ScaPreConfig) -> None:
        wanted = config.informax_key()
        differ = {k: (self.settings.get(k), v) for k, v in wanted.items() if self.settings.get(k) != v}
        if differ:
            detail = ", ".join(f"{k}: informax {a!r} vs config {b!r}" for k, (a, b) in sorted(differ.items()))
            raise ValueError(f"the Informax result was computed with other settings ({detail}); "
                             "recompute it or use the same settings")
        if self.concept_fingerprint != concepts.fingerprint():
            raise ValueError("the Informax result was computed for other concepts; recompute it for these")
        missing = [n for n in names if n not in self.stats]
        if missing:
            raise ValueError(f"the Informax result has no row weights for {len(missing)} matrices "
                             f"(e.g. {missing[0]!r}); compute it on the same model")
        for n in names:
            check_row_stats(self.stats[n], config, self.shapes[n][0], concepts.num_concepts, repr(n))

    def check_weight(self, name: str, w0: torch.Tensor) -> None:
        if tuple(self.shapes[name]) != tuple(w0.shape) or self.checksums.get(name) != weight_checksum(w0):
            raise ValueError(f"the Informax result for {name!r} was computed from different weights; "
                             "compute it on the same model")


def weight_checksum(w0: torch.Tensor) -> float:
    """A cheap fingerprint of a matrix (its float64 sum and sum of squares) to match results to weights."""
    w = w0.detach().to(device="cpu", dtype=torch.float64)
    return float(w.sum()) + 1e-3 * float((w * w).sum())


def row_stats(
    name: str,
    w0: torch.Tensor,
    concepts_vecs: torch.Tensor,
    empty_vec: torch.Tensor,
    config: ScaPreConfig,
    *,
    with_weights: bool,
    with_entropy: bool,
) -> RowStats:
    """Informax weights and/or entropy factor of one matrix ``w0``, measured in float32 (module docstring);
    the results are float64 (on the CPU for backends without float64)."""
    w0, concepts_vecs, empty_vec = (t.to(MEASURE_DTYPE) for t in (w0, concepts_vecs, empty_vec))
    weights = None
    if with_weights and config.use_informax:
        if config.mi_estimator == "expected":
            mi = expected_mutual_information(w0, concepts_vecs, empty_vec, config.noise_sigma)
        else:
            gen = matrix_generator(config.seed, name, "informax", w0.device)
            mi = sampled_mutual_information(
                w0, concepts_vecs, empty_vec, config.mi_samples, config.noise_sigma, gen
            )
        weights = soft_mask(mi, config.mi_temperature, config.p)
    entropy = None
    if with_entropy:
        gen = matrix_generator(config.seed, name, "entropy", w0.device)
        entropy = entropy_factor(
            w0, concepts_vecs, config.entropy_samples, config.entropy_bins, config.noise_sigma, gen
        )
    return RowStats(row_weights=weights, entropy=entropy)
