"""One frozen configuration object for every ScaPre hyperparameter (SPEC "Published settings").

Each field carries the paper's default and a one-line meaning in ``FIELD_HELP``; the ComfyUI
nodes map their inputs onto these fields one to one, so the help text here is also the tooltip.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

VARIANTS = ("scale", "small", "uce", "focus")
TECHNIQUES = ("replace", "tensor")
MI_ESTIMATORS = ("sampled", "expected")
PRECISIONS = ("float32", "float64")

#: Fields that determine the Informax row weights and the entropy factor. A precomputed
#: :class:`~scapre_core.informax.InformaxResult` is only valid for a config that agrees on these.
INFORMAX_FIELDS = (
    "p",
    "mi_temperature",
    "mi_samples",
    "noise_sigma",
    "use_informax",
    "mi_estimator",
    "entropy_samples",
    "entropy_bins",
    "seed",
    "precision",
)

FIELD_HELP: dict[str, str] = {
    "variant": "scale: the large-scale ScaPre solve (paper default); small: the authors' erase.py "
    "(row-weighted solve, entropy rollback); uce: the UCE baseline, for comparison; focus (beyond the paper): UCE "
    "restricted to the few text directions where the erased prompts differ from their guides and the preserve "
    "prompts carry little.",
    "lam": "lambda: how strongly every weight stays near its original value (0.5 in all published runs).",
    "erase_scale": "s: weight of the erase term; larger erases harder and changes more "
    "(1 small runs, 2-3 at scale).",
    "preserve_scale": "q: weight that keeps the preserve prompts' projections unchanged (only used "
    "when preserve prompts are given).",
    "technique": "replace: map erased contexts to the guide's projection (published default); tensor: "
    "first remove from each target its component along the erased projection.",
    "p": "Power of the Informax soft mask; higher concentrates the edit on the most informative rows "
    "(2 small, 5-8 at scale, 3 explicit).",
    "mi_temperature": "T: temperature of the Informax soft mask (0.7 published).",
    "mi_samples": "K: noisy positives and negatives per concept for the mutual-information estimate (5).",
    "noise_sigma": "sigma: noise added to the concept vectors for the Informax and entropy estimates (0.01).",
    "use_informax": "Weight each output row by its mutual information with the concept (off gives every "
    "row weight 1; the explicit-content run had it off).",
    "mi_estimator": "sampled: the paper's noisy estimate (seeded); expected: its closed-form population "
    "value, deterministic and noise-free.",
    "entropy_samples": "Noisy draws per concept for the per-row entropy factor (20 small, 30 at scale).",
    "entropy_bins": "Histogram bins for the per-row entropy factor (20).",
    "mu_from_entropy": "Take the Bures strength mu of each matrix from its mean row entropy (published "
    "behaviour); off uses the constant mu.",
    "mu": "Constant Bures strength, used when mu_from_entropy is off (0.1).",
    "ased": "Spectral trace regulariser: extra curvature along weak concept directions (on in the "
    "50-object and 50-artist runs).",
    "t_sigma": "Temperature of the spectral gate (ASED and the small variant's SVD residual).",
    "p_sigma": "Power of the spectral gate (ASED and the small variant's SVD residual).",
    "bures_iters": "Rounds of the Bures proximal step that keeps each row's norm and direction near the "
    "original (1 published; 0 skips the step).",
    "egbr": "Entropy-guided blend of each edited row back towards the original (off by default).",
    "alpha_min": "Small variant: least share of the edit each row keeps in the entropy rollback (0.8).",
    "svd_residual": "Small variant: subtract the spectral residual of the concept directions.",
    "seed": "Seed of the Informax and entropy noise; same seed and inputs give the same bits.",
    "strength": "How far the edit goes (beyond the paper, which has no such dial). 0 = no edit (the weights come "
    "back unchanged); up to 1 the configured change W - W0 is multiplied by it; 1 = the configured edit exactly (a "
    "preset's published edit); above 1 the method itself goes further: its erase scale is multiplied by the "
    "strength, what pulls the change back (the Bures step's mu, the small variant's rollback) and Informax's "
    "exponent p are divided by it, the erased prompts are aimed past their guides (see overshoot) and their guides "
    "move towards their nearest look-alikes where those were found (see look_alike_pull), so forgetting grows "
    "with it and so does the change to other prompts.",
    "focus_rank": "Focus variant (beyond the paper): text directions the edit may change per erase prompt (2); "
    "more forgets more and keeps less.",
    "focus_eps": "Focus variant (beyond the paper): ridge of the preserve prompts' metric, relative to its mean "
    "eigenvalue (0.001); larger lets the edit use directions the preserve prompts also use.",
    "overshoot": "Above strength 1 (beyond the paper): how far past its guide each erased prompt is aimed, per unit "
    "of strength above 1 (0.3: at strength 2 the target is the guide plus 0.3 of the way from the prompt to the "
    "guide; it grows up to strength 5, plus 1.2, and stays there), shared among the erased prompts (with 5 "
    "concepts each is aimed a fifth as far: their targets all move the rows every prompt shares, and the full "
    "overshoot for each breaks the pictures). A model may draw a concept even when it is not "
    "named; mapping the prompt exactly onto the empty guide cannot remove that, a target past it can. 0 = the dial "
    "stops at the guide. Not used by the focus variant (precise), whose guide is a look-alike.",
    "look_alike_pull": "Above strength 1 (beyond the paper): how far each erased prompt's guide moves towards the "
    "concept's nearest look-alike, per unit of strength above 1 (0.5: half way at strength 2, all the way from 3 "
    "on), where ScaPre Concept Encode found look-alikes (look_alikes auto; SD1.x, SD2.x, SDXL). A model may draw a "
    "concept even when nothing is named (a default shape, a house style): the empty guide then keeps it, a "
    "look-alike does not. 0 = guides stay as published. Not used by precise, whose guide is the look-alike.",
    "precision": "Arithmetic of the edit: float32 (default; equals the float64 edit to about 1e-6 of the edit) "
    "or float64 (same result, slower; much slower on consumer GPUs). Weights keep their own dtype.",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The strength above which :attr:`ScaPreConfig.past_guide` stops growing (beyond the paper): past it only the reach
#: grows. In the miniature worlds targets further past the guide broke the pictures of the presets without a pull-back
#: (``uce``) and let the concept back in (docs/miniworlds.md).
OVERSHOOT_UNTIL = 5.0


@dataclass(frozen=True)
class ScaPreConfig:
    """Every ScaPre hyperparameter, with the published defaults (see ``FIELD_HELP``)."""

    variant: str = "scale"
    lam: float = 0.5
    erase_scale: float = 2.0
    preserve_scale: float = 1.0
    technique: str = "replace"
    p: float = 2.0
    mi_temperature: float = 0.7
    mi_samples: int = 5
    noise_sigma: float = 0.01
    use_informax: bool = True
    entropy_samples: int = 20
    entropy_bins: int = 20
    mu_from_entropy: bool = True
    mu: float = 0.1
    ased: bool = False
    t_sigma: float = 1.0
    p_sigma: float = 1.0
    bures_iters: int = 1
    egbr: bool = False
    alpha_min: float = 0.8
    svd_residual: bool = False
    seed: int = 0
    mi_estimator: str = "sampled"
    precision: str = "float32"
    strength: float = 1.0
    focus_rank: int = 2
    focus_eps: float = 1e-3
    overshoot: float = 0.3
    look_alike_pull: float = 0.5

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def reach(self) -> float:
        """How far beyond the configured solve ``strength`` goes: ``strength`` above 1, else 1 (SPEC-free, beyond
        the paper). At reach ``r`` the erase scale is ``r * erase_scale`` and what pulls the change back (the Bures
        strength ``mu`` of the scale variant, the small variant's rollback ``1 - keep``) and Informax's exponent ``p``
        (the row weights ``m`` read as ``m^(1/r)``) are divided by ``r``."""
        return self.strength if self.strength > 1.0 else 1.0

    @property
    def past_guide(self) -> float:
        """How far past its guide each erased prompt's target goes (beyond the paper): 0 up to strength 1, then
        ``overshoot`` per unit of strength above 1, up to :data:`OVERSHOOT_UNTIL` (5; 1.2 at the default
        ``overshoot``), constant above. The target of an erased prompt ``x`` guided to ``y`` is
        ``W0 (y + o (y - x))`` instead of ``W0 y``: where a model draws the concept even when it is not named (the
        published guide is the empty prompt), an edit that maps the prompt exactly onto its guide cannot forget it,
        and only a target past the guide can (docs/miniworlds.md). Not used by the focus variant."""
        return 0.0 if self.strength <= 1.0 else self.overshoot * (min(self.strength, OVERSHOOT_UNTIL) - 1.0)

    def past_guide_for(self, prompts: int) -> float:
        """:attr:`past_guide` shared among ``prompts`` erased prompts (beyond the paper): each is aimed
        ``past_guide / prompts`` past its guide. Every erased prompt's target moves the rows that all prompts share
        (a CLIP-like model's end and padding tokens carry each prompt's meaning), so the full overshoot for each of
        five concepts pushes those shared rows five times as far and the pictures break: with it, five concepts
        came back at strength 5-10 in the clip64 miniature world, drawn as stripes, with nothing else kept;
        shared, every preset forgets them there and keeps more (docs/miniworlds.md). One prompt: ``past_guide``."""
        if isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1:
            raise ValueError(f"prompts must be a whole number >= 1, got {prompts!r}")
        return self.past_guide / prompts

    @property
    def to_look_alike(self) -> float:
        """How far each erased prompt's guide is moved towards its nearest look-alike (beyond the paper; where
        look-alikes were found, see :func:`scapre_core.focus.toward_look_alikes`): 0 up to strength 1, then
        ``look_alike_pull`` per unit of strength above 1, up to 1 (all the way, from strength 3 at the default 0.5).
        Every miniature world draws a circle when no shape is named, so no edit towards the empty guide, however far
        past it, forgets the circle; towards a look-alike ("ring") it goes (docs/miniworlds.md). Not used by the
        focus variant, whose guide already is the look-alike."""
        if self.strength <= 1.0 or self.variant == "focus":
            return 0.0
        return min(1.0, self.look_alike_pull * (self.strength - 1.0))

    @property
    def solve_scale(self) -> float:
        """The erase scale the solve uses: ``erase_scale`` times :attr:`reach` (exactly ``erase_scale`` up to
        strength 1)."""
        return self.erase_scale if self.reach == 1.0 else self.erase_scale * self.reach

    def replace(self, **changes: Any) -> ScaPreConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScaPreConfig:
        """Build from a mapping, rejecting unknown keys with a message that names them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown ScaPreConfig field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**values)

    def informax_key(self) -> dict[str, Any]:
        """The fields an Informax result depends on (see ``INFORMAX_FIELDS``)."""
        return {name: getattr(self, name) for name in INFORMAX_FIELDS}

    @property
    def needs_entropy(self) -> bool:
        """Whether the edit uses the per-row entropy factor (SPEC "Entropy factor")."""
        if self.variant == "small":
            return True
        if self.variant == "scale":
            return self.mu_from_entropy or self.egbr
        return False

    @property
    def needs_row_weights(self) -> bool:
        """Whether the edit uses Informax row weights (uce and focus never do)."""
        return self.variant in ("scale", "small") and self.use_informax


def _choice(cfg: ScaPreConfig, name: str, options: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in options:
        raise ValueError(f"ScaPreConfig.{name} must be one of {list(options)}, got {value!r}")


def _real(cfg: ScaPreConfig, name: str, low: float, high: float = math.inf, *, open_low: bool = False) -> None:
    value = getattr(cfg, name)
    bound = f"{'>' if open_low else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"ScaPreConfig.{name} must be a finite number {bound}, got {value!r}")
    if (value <= low if open_low else value < low) or value > high:
        raise ValueError(f"ScaPreConfig.{name} must be {bound}, got {value!r}")


def _integer(cfg: ScaPreConfig, name: str, low: int, high: int | None = None) -> None:
    value = getattr(cfg, name)
    bound = f">= {low}" + ("" if high is None else f" and <= {high}")
    if not _is_int(value):
        raise ValueError(f"ScaPreConfig.{name} must be an integer {bound}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"ScaPreConfig.{name} must be {bound}, got {value!r}")


def _flag(cfg: ScaPreConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise ValueError(f"ScaPreConfig.{name} must be True or False, got {value!r}")


def _validate(cfg: ScaPreConfig) -> None:
    _choice(cfg, "variant", VARIANTS)
    _choice(cfg, "technique", TECHNIQUES)
    _choice(cfg, "mi_estimator", MI_ESTIMATORS)
    _choice(cfg, "precision", PRECISIONS)
    _real(cfg, "lam", 0.0, open_low=True)
    _real(cfg, "erase_scale", 0.0)
    _real(cfg, "preserve_scale", 0.0)
    _real(cfg, "p", 0.0)
    _real(cfg, "mi_temperature", 0.0, open_low=True)
    _real(cfg, "noise_sigma", 0.0)
    _real(cfg, "mu", 0.0)
    _real(cfg, "t_sigma", 0.0, open_low=True)
    _real(cfg, "p_sigma", 0.0)
    _real(cfg, "alpha_min", 0.0, 1.0)
    _real(cfg, "strength", 0.0)
    _real(cfg, "focus_eps", 0.0, open_low=True)
    _real(cfg, "overshoot", 0.0)
    _real(cfg, "look_alike_pull", 0.0)
    _integer(cfg, "focus_rank", 1)
    _integer(cfg, "mi_samples", 1)
    _integer(cfg, "entropy_samples", 1)
    _integer(cfg, "entropy_bins", 2)
    _integer(cfg, "bures_iters", 0)
    _integer(cfg, "seed", 0, 2**64 - 1)
    for name in ("use_informax", "mu_from_entropy", "ased", "egbr", "svd_residual"):
        _flag(cfg, name)
