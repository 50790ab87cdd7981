"""The registry of miniature worlds: named specs, each a full training config, trained once and cached.

The worlds differ where it matters for concept erasure, one thing at a time from the first:

* ``clip64``: the project's first world (seed 0, text width 64, CLIP-like causal text encoder whose end and padding
  tokens read every word of the prompt, so they carry its concepts, as CLIP's do);
* ``clip64-seed1``: the same recipe, another seed;
* ``clip128``: text width 128;
* ``blind64``: end and padding tokens that read no word (``causal-blind-end``): a concept lives on its word token only.

A spec names its text-encoder kind and denoiser kind (``ModelConfig.text_encoder``, ``ModelConfig.denoiser``), so a
world with another encoder or denoiser is one more entry here (and its classes in ``model.py``). Every benchmark
takes world names from this registry (``--worlds``); ``python benchmarks/miniworld/train.py`` trains the missing ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .train import TrainConfig, World, get_world


@dataclass(frozen=True)
class WorldSpec:
    """A named world: how it is trained (``train``, which fixes its cache file) and what sets it apart."""

    name: str
    train: TrainConfig
    about: str

    @property
    def text_encoder(self) -> str:
        return self.train.model.text_encoder

    @property
    def denoiser(self) -> str:
        return self.train.model.denoiser

    @property
    def text_dim(self) -> int:
        return self.train.model.text_dim


#: The recipe every world shares unless its spec says otherwise (2000 steps of batch 32).
BASE = TrainConfig()

WORLDS: dict[str, WorldSpec] = {
    spec.name: spec
    for spec in (
        WorldSpec("clip64", BASE, "the first world: seed 0, width 64, end tokens carry the prompt (CLIP-like)"),
        WorldSpec("clip64-seed1", replace(BASE, seed=1), "as clip64, seed 1"),
        WorldSpec("clip128", replace(BASE, model=replace(BASE.model, text_dim=128)), "as clip64, text width 128"),
        WorldSpec("blind64", replace(BASE, model=replace(BASE.model, text_encoder="causal-blind-end")),
                  "as clip64, but end and padding tokens read no word (they carry no concept)"),
    )
}
WORLD_NAMES: tuple[str, ...] = tuple(WORLDS)


def world_spec(name: str) -> WorldSpec:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; registered worlds: {list(WORLD_NAMES)}")
    return WORLDS[name]


def load(name: str, cache: Path | None = None, log_every: int = 200) -> World:
    """The world ``name``: from the cache, or trained (and cached) when missing."""
    return get_world(world_spec(name).train, cache, log_every)
