"""Synthetic encoded prompts and weights for the core tests (no text encoder needed)."""

from __future__ import annotations

import torch

from scapre_core import ConceptSet


def encodings(n: int, length: int, dim: int, generator: torch.Generator, dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.randn(length, dim, generator=generator, dtype=dtype) for _ in range(n)]


def random_concepts(
    m: int = 3,
    dim: int = 16,
    length: int = 10,
    *,
    seed: int = 0,
    guided: bool = False,
    preserve: int = 0,
    dtype=torch.float32,
) -> tuple[ConceptSet, dict]:
    """A ConceptSet from random "encodings"; also returns the raw inputs for naive re-derivation."""
    g = torch.Generator().manual_seed(seed)
    erase = encodings(m, length, dim, g, dtype)
    guide = encodings(m, length, dim, g, dtype)
    empty = torch.randn(length, dim, generator=g, dtype=dtype)
    erase_last = [int(torch.randint(1, min(5, length - 1) + 1, (1,), generator=g)) for _ in range(m)]
    guide_last = [int(torch.randint(1, 4, (1,), generator=g)) if guided else 0 for _ in range(m)]
    pres = encodings(preserve, length, dim, g, dtype)
    pres_last = [int(torch.randint(1, 4, (1,), generator=g)) for _ in range(preserve)]
    raw = dict(erase=erase, erase_last=erase_last, guide=guide, guide_last=guide_last, empty=empty,
               preserve=pres, preserve_last=pres_last)
    return ConceptSet.from_embeddings(**raw), raw


def random_weights(shapes: dict[str, tuple[int, int]], seed: int = 1, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(*s, generator=g) / s[1] ** 0.5).to(dtype) for k, s in shapes.items()}
