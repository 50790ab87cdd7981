"""The registry of miniature worlds: named specs, each a full training config, trained once and cached.

The worlds differ where it matters for concept erasure, one thing at a time from the first:

* ``clip64``: the project's first world (seed 0, text width 64, CLIP-like causal text encoder whose end and padding
  tokens read every word of the prompt, so they carry its concepts, as CLIP's do);
* ``clip64-seed1``: the same recipe, another seed;
* ``clip128``: text width 128;
* ``blind64``: end and padding tokens that read no word (``causal-blind-end``): a concept lives on its word token only.
* ``dit-cross64``: Wan's anatomy (``dit.py``): a bidirectional T5-like encoder whose padding is masked and zeroed
  (``t5-masked``), and a diffusion transformer that reads the text through every block's ``cross_attn.k`` / ``.v``
  after its own ``text_embedding`` (``dit-cross``): ScaPre as published, on a DiT;
* ``mmdit64``: Flux's anatomy (``dit.py``): an unmasked T5-like encoder (``t5``: the padding carries the prompt) and
  a double-stream MMDiT whose only map reading the text is ``txt_in`` (``mmdit``): the edit beyond the paper.

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

#: The diffusion-transformer worlds (``dit.py``): the T5-like encoders at width 64; the settings of the best CPU
#: pilots (``docs/dit-worlds.md``): both learn colours and styles, neither learns shapes. The cross-attention DiT at
#: width 96 on 2x2 patches with a convolution stem and Mix-FFN (1200 steps); the MMDiT at width 128 on 4x4 patches
#: with Mix-FFN and no stem (1500 steps).
DIT_CROSS = replace(BASE, model=replace(BASE.model, text_encoder="t5-masked", denoiser="dit-cross", dit_width=96,
                                        dit_depth=4, dit_heads=4, patch=2, dit_stem=True, dit_mix_ffn=True),
                    steps=1200)
MMDIT = replace(BASE, model=replace(BASE.model, text_encoder="t5", denoiser="mmdit", dit_width=128, dit_depth=4,
                                    dit_heads=4, patch=4, dit_mix_ffn=True), steps=1500)

WORLDS: dict[str, WorldSpec] = {
    spec.name: spec
    for spec in (
        WorldSpec("clip64", BASE, "the first world: seed 0, width 64, end tokens carry the prompt (CLIP-like)"),
        WorldSpec("clip64-seed1", replace(BASE, seed=1), "as clip64, seed 1"),
        WorldSpec("clip128", replace(BASE, model=replace(BASE.model, text_dim=128)), "as clip64, text width 128"),
        WorldSpec("blind64", replace(BASE, model=replace(BASE.model, text_encoder="causal-blind-end")),
                  "as clip64, but end and padding tokens read no word (they carry no concept)"),
        WorldSpec("dit-cross64", DIT_CROSS, "Wan's anatomy: masked T5-like encoder (padding zeroed), a DiT reading the "
                  "text through per-block cross_attn.k / .v after its text_embedding (dit.py)"),
        WorldSpec("mmdit64", MMDIT, "Flux's anatomy: unmasked T5-like encoder (padding carries the prompt), a "
                  "double-stream MMDiT whose only map reading the text is txt_in (dit.py)"),
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
