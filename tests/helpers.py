"""Synthetic encoded prompts and weights for the core tests (no text encoder needed)."""

from __future__ import annotations

import torch
from comfyui_scapre.scapre_core import ConceptSet


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


def clip_like_concepts(
    m: int,
    dim: int,
    *,
    seed: int = 0,
    preserve: int = 0,
    guided: bool = False,
    norm: float = 28.0,
    outliers: tuple[float, ...] = (20.0, 40.0, 70.0, 100.0),
    length: int = 77,
) -> ConceptSet:
    """Encodings with CLIP's conditioning: token norms near ``norm``, a handful of outlier dimensions
    ``outliers`` times the typical entry (as in CLIP-L/G), a start token, and end/padding tokens
    shared by every prompt up to a small causal drift. ``S = s sum X^T X`` then has eigenvalues
    ~1e6-1e7 times ``lambda``: the ill-conditioned case of a real text encoder."""
    g = torch.Generator().manual_seed(seed)
    unit = norm / dim**0.5
    dims = torch.randperm(dim, generator=g)[: len(outliers)]
    big = torch.tensor(outliers) * unit

    def tokens(n: int) -> torch.Tensor:
        x = torch.randn(n, dim, generator=g) * unit
        x[:, dims] += big * (1 + 0.1 * torch.randn(n, len(outliers), generator=g))
        return x

    pad = tokens(1)[0]
    shared = torch.cat([tokens(1), pad + 0.3 * torch.randn(length - 1, dim, generator=g) * unit])
    shared[1:, dims] = pad[dims] * (1 + 0.05 * torch.randn(length - 1, len(outliers), generator=g))

    def prompt(last: int) -> torch.Tensor:
        s = shared.clone()
        s[1 : last + 1] = tokens(last)
        s[last + 1 :] += 0.1 * torch.randn(length - last - 1, dim, generator=g) * unit
        return s

    lasts = [int(v) for v in torch.randint(1, 6, (m,), generator=g)]
    erase = [prompt(f) for f in lasts]
    if guided:
        guide_last = [int(v) for v in torch.randint(1, 3, (m,), generator=g)]
        guides = [prompt(f) for f in guide_last]
    else:
        guide_last, guides = [0] * m, [shared] * m
    preserve_last = [int(v) for v in torch.randint(1, 6, (preserve,), generator=g)]
    return ConceptSet.from_embeddings(erase, lasts, guides, guide_last, shared,
                                      [prompt(f) for f in preserve_last], preserve_last)
