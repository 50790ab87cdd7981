"""The authors' published runs as named configurations (SPEC "Published settings", README
"Recommended settings").

A preset fixes every field of :class:`ScaPreConfig`; ``strength`` scales its change (0 no edit, 1 the published
edit exactly) and ``seed`` seeds the Informax/entropy noise, the two knobs a user turns most.
``custom`` is the pack's defaults (the ``scale`` variant with ``erase_scale 2``, ``p 2``); ``precise`` is beyond the
paper. The default, ``auto``, is a choice per edit (:func:`auto_preset`): ``precise`` where it can run, else a
published run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from .config import ScaPreConfig

#: Which cross-attention projections an edit changes (the published runs edit both).
EDIT_MODES: dict[str, tuple[str, ...]] = {"keys and values": ("k", "v"), "values only": ("v",), "keys only": ("k",)}


@dataclass(frozen=True)
class Preset:
    """A published setting: its config and where it comes from."""

    name: str
    config: ScaPreConfig
    description: str


#: Common to every published run: lambda 0.5, keys and values, empty guide.
_PUBLISHED = dict(lam=0.5)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("custom", ScaPreConfig(),
               "the pack's defaults: scale variant, erase_scale 2, p 2, Informax on, bures_iters 1"),
        Preset("few-objects",
               ScaPreConfig(variant="small", erase_scale=1.0, p=2.0, alpha_min=0.8, entropy_samples=20,
                            **_PUBLISHED),
               "a few objects (the Imagenette-10 run): small variant, erase_scale 1, p 2, alpha_min 0.8, "
               "entropy_samples 20"),
        Preset("many-objects",
               ScaPreConfig(variant="scale", erase_scale=3.0, p=5.0, use_informax=True, bures_iters=1, ased=True,
                            entropy_samples=30, entropy_bins=20, mu_from_entropy=True, **_PUBLISHED),
               "many objects (the 50-object run): scale variant, erase_scale 3, p 5, Informax on, ASED on, "
               "bures_iters 1, entropy_samples 30"),
        Preset("artists",
               ScaPreConfig(variant="scale", erase_scale=2.0, p=8.0, use_informax=True, bures_iters=1, ased=True,
                            entropy_samples=30, entropy_bins=20, mu_from_entropy=True, **_PUBLISHED),
               "artists' styles (the 50-artist run; also look-alike sets): scale variant, erase_scale 2, p 8, "
               "Informax on, ASED on, bures_iters 1, entropy_samples 30"),
        Preset("explicit",
               ScaPreConfig(variant="scale", erase_scale=2.0, p=3.0, use_informax=False, bures_iters=1,
                            mu_from_entropy=True, **_PUBLISHED),
               "explicit content (nudity, nude, naked, topless, unclothed, erotic): scale variant, erase_scale 2, "
               "p 3, Informax off, bures_iters 1"),
        Preset("uce",
               ScaPreConfig(variant="uce", erase_scale=1.0, **_PUBLISHED),
               "the UCE baseline (Gandikota et al. 2024), for comparison: erase_scale 1"),
        Preset("precise",
               ScaPreConfig(variant="focus", erase_scale=1.0, focus_rank=2, focus_eps=1e-3, **_PUBLISHED),
               "BEYOND THE PAPER: each concept is guided to its nearest look-alike and only the text "
               "directions that set it apart from the prompts to keep are edited (focus variant, focus_rank 2); "
               "needs look-alikes and prompts to keep (ScaPre Concept Encode finds them: look_alikes auto)"),
    )
}
#: Presets that are not the authors' published runs (labelled "beyond the paper" wherever they are offered).
BEYOND_THE_PAPER = ("precise",)

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

#: Not a config but a choice made per edit (:func:`auto_preset`): ``precise`` where it can run, else the authors'
#: published run for what is erased and how many.
AUTO = "auto"
#: What ScaPre Erase and the command line offer: ``auto``, then every preset.
PRESET_CHOICES: tuple[str, ...] = (AUTO, *PRESET_NAMES)
#: The preset the ScaPre Erase node and the command line start from. ``auto``: in the miniature worlds the published
#: runs at strength 1 leave a single concept in up to all of its pictures, where ``precise`` forgets every single
#: concept, four at once and a five-concept set with a colour-shape pair, in every world (docs/miniworlds.md).
DEFAULT_PRESET = AUTO
#: ``auto`` falls back on ``few-objects`` (the paper's Imagenette-10 run) for up to this many objects, on
#: ``many-objects`` (its 50-object run) above.
FEW_OBJECTS = 10
AUTO_DESCRIPTION = ("precise (beyond the paper) where it can run: SD1.x, SD2.x and SDXL with look-alikes found by "
                    "ScaPre Concept Encode (look_alikes auto); elsewhere the published run for what is erased: "
                    f"explicit for concept_type explicit, artists for style, few-objects for up to {FEW_OBJECTS} "
                    "concepts and many-objects above. The summary says which ran and why")


def auto_preset(focus_ready: bool, concept_type: str = "object", concepts: int = 1) -> str:
    """The preset ``auto`` runs: ``precise`` when ``focus_ready`` (the model's cross-attention reads the text
    encoder's output directly and the concepts were encoded with look-alikes), else the published run the paper used
    for what is erased (``concept_type`` of ``scapre_core.prompts``) and how many (``concepts``)."""
    if focus_ready:
        return "precise"
    if concept_type == "explicit":
        return "explicit"
    if concept_type == "style":
        return "artists"
    return "few-objects" if concepts <= FEW_OBJECTS else "many-objects"


def preset_config(name: str, strength: float = 1.0, seed: int = 0) -> ScaPreConfig:
    """The config of preset ``name`` with its ``strength`` multiplied by ``strength`` and the given ``seed``.

    ``strength`` is ``ScaPreConfig.strength``: 0 no edit at all, below 1 that share of the preset's change, 1 the
    preset exactly as published (the same config, hence the same bits), above 1 the method goes further
    (:attr:`ScaPreConfig.reach`: erase scale times the strength, what pulls the change back and Informax's ``p``
    divided by it; :attr:`ScaPreConfig.past_guide`: the erased prompts aimed past their guides;
    :attr:`ScaPreConfig.to_look_alike`: their guides moved towards their nearest look-alikes where those were found).

    ``auto`` gives ``precise``'s config, what it runs where it can; ScaPre Erase and the command line choose per edit
    (:func:`auto_preset`)."""
    if name == AUTO:
        name = auto_preset(True)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESET_CHOICES)}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    base = PRESETS[name].config
    if strength == 1:
        return base.replace(seed=seed)
    return base.replace(strength=float(base.strength * strength), seed=seed)


@dataclass(frozen=True)
class EraseSettings:
    """Every setting of an erase: the full config and which projections to edit (``SCAPRE_SETTINGS``,
    and the command line's settings JSON)."""

    config: ScaPreConfig = field(default_factory=ScaPreConfig)
    edit: str = "keys and values"

    def __post_init__(self) -> None:
        if self.edit not in EDIT_MODES:
            raise ValueError(f"edit must be one of {list(EDIT_MODES)}, got {self.edit!r}")

    def __deepcopy__(self, memo: dict) -> EraseSettings:  # frozen: ComfyUI may deep-copy node outputs
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "edit": self.edit}

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: ScaPreConfig | None = None) -> EraseSettings:
        """Config field names (plus optional ``edit``) over ``base`` (default: the config defaults);
        unknown keys are refused with a message naming them."""
        if not isinstance(values, dict):
            raise ValueError(f"settings must be a mapping of config field names to values, got {type(values).__name__}")
        names = {f.name for f in fields(ScaPreConfig)}
        unknown = sorted(set(values) - names - {"edit"})
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(names | {'edit'})}")
        config = (base or ScaPreConfig()).replace(**{k: v for k, v in values.items() if k != "edit"})
        return cls(config=config, edit=values.get("edit", "keys and values"))
