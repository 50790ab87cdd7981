"""How much of a concept the end and padding tokens carry (the end-token probe).

For a word ``w`` of a kind (a colour among the colours, ...) its *specific part* at a token position is the encoding
of the bare prompt ``w`` there minus the mean encoding of the other words of its kind (same position, same prompt
length, so the same template). The probe reports, per word, the root-mean-square norm of the specific part over the
end and padding tokens, relative to its norm on the word token itself:

* about 0: the end tokens carry nothing of the word (an edit of the word token's context alone suffices);
* about 0.5 or more: a good part of the word is also on every end and padding token, which the UNet reads as well
  (CLIP's end tokens carry the prompt's meaning; the project's first world measured 0.58 for red).

:func:`end_token_share` works on any ``[n, 77, d]`` encodings (e.g. a real CLIP's), :func:`probe_world` on a world.
"""

from __future__ import annotations

import torch

from .world import COLOUR_NAMES, SHAPES, STYLES


def end_token_share(encodings: torch.Tensor, last: int) -> torch.Tensor:
    """``[n]``: for each of ``n`` sibling prompts of the same length (``encodings [n, L, d]``, last word token at
    ``last``), ``rms_{p > last} |s_p| / |s_last|`` with ``s_p`` the prompt's encoding at ``p`` minus the mean of
    the *other* prompts' encodings at ``p``."""
    n = encodings.shape[0]
    if n < 2:
        raise ValueError("the probe needs at least two sibling prompts (a word and the others of its kind)")
    enc = encodings.double()
    total = enc.sum(dim=0, keepdim=True)
    specific = enc - (total - enc) / (n - 1)  # [n, L, d]
    word = specific[:, last].norm(dim=-1)
    end = specific[:, last + 1:].norm(dim=-1).pow(2).mean(dim=1).sqrt()
    return end / word.clamp_min(1e-12)


@torch.no_grad()
def probe_world(world) -> dict[str, dict[str, float]]:
    """The end-token share of every colour, shape and style word of ``world`` (bare one-word prompts), and the mean
    per kind: ``{"colour": {"red": 0.58, ..., "mean": ...}, "shape": {...}, "style": {...}}``."""
    out: dict[str, dict[str, float]] = {}
    for kind, words in (("colour", COLOUR_NAMES), ("shape", SHAPES), ("style", STYLES[1:])):
        enc, last = world.encode(list(words))
        share = end_token_share(enc, last[0])
        out[kind] = {w: round(float(v), 4) for w, v in zip(words, share, strict=True)}
        out[kind]["mean"] = round(float(share.mean()), 4)
    return out
