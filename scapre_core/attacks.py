"""Attacks on an erasure with the model's own text space and gradients (issue 19, "Does the concept come back?").

Pure torch; the ComfyUI side (``nodes/glue/attack.py``) and the miniature world (``benchmarks/miniworld``) supply
the model as a :class:`Denoiser` and the text encodings as tensors.

* :func:`nearest_words`: the model's nearest words to a concept in its token-embedding table (cosine), for the
  ``neighbour`` prompt variants of :mod:`scapre_core.attack_prompts`.
* :func:`search_soft_tokens`: the UnlearnDiff idea (Zhang et al., ECCV 2024): a few free vectors ("soft tokens")
  in a prompt template, optimized so that the EDITED model denoises the ORIGINAL model's images of the erased
  concept, i.e. ``min_theta E_{x0, t, eps} || eps_edited(x_t, t, cond(theta)) - eps ||^2`` over the original's
  images ``x0``, random noise levels ``t`` and noise ``eps``. :class:`SoftPrompt` places the vectors into the
  conditioning the UNet reads (one attack of a white-box user who controls the conditioning); any other
  differentiable ``build(theta, which)`` (e.g. through a text encoder) works the same way.
* :func:`concept_vector` / :func:`add_concept_vector`: the Ring-A-Bell idea (Tsai et al., ICLR 2024): the mean
  difference of the encoder's output for prompts with and without the concept, added to a neutral prompt's
  encoding at several strengths.

Randomness comes in as a ``torch.Generator`` (CPU); the same inputs and seed give the same bits on one device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .validation import check_finite

# ---------------------------------------------------------------------------------------------------------------
# the model's nearest words
# ---------------------------------------------------------------------------------------------------------------

def nearest_words(table: torch.Tensor, query_rows: Sequence[int], candidates: Sequence[tuple[int, str]], k: int,
                  exclude: Sequence[str] = ()) -> list[str]:
    """The ``k`` candidate words nearest (cosine) to the mean of ``table[query_rows]`` in a token-embedding table
    ``[V, d]``. ``candidates`` are ``(row, word)`` pairs the caller accepts as words (e.g. whole-word tokens of a
    BPE vocabulary); words in ``exclude`` (case-insensitive), substrings or extensions of an excluded word, and
    repeats are skipped."""
    if not query_rows:
        raise ValueError("nearest_words: no token rows for the concept")
    if table.ndim != 2:
        raise ValueError(f"nearest_words: expected a [V, d] table, got {tuple(table.shape)}")
    t = table.detach().float()
    query = t[list(query_rows)].mean(dim=0)
    rows = torch.tensor([r for r, _ in candidates], dtype=torch.long)
    if rows.numel() == 0:
        return []
    sims = torch.nn.functional.cosine_similarity(t[rows], query.unsqueeze(0), dim=1)
    # stable order: by similarity, ties by row index
    order = sorted(range(len(candidates)), key=lambda i: (-float(sims[i]), candidates[i][0]))
    banned = [e.lower() for e in exclude if e]
    out: list[str] = []
    for i in order:
        word = candidates[i][1]
        low = word.lower()
        if any(low == b or low in b or b in low for b in banned) or low in (w.lower() for w in out):
            continue
        out.append(word)
        if len(out) >= k:
            break
    return out


# ---------------------------------------------------------------------------------------------------------------
# soft tokens (UnlearnDiff-style)
# ---------------------------------------------------------------------------------------------------------------

class Denoiser(Protocol):
    """A diffusion model as the search sees it: noise levels, the forward process and a noise prediction.

    ``levels`` may be any per-sample tensor the model understands (timestep indices, sigmas)."""

    def sample_levels(self, count: int, generator: torch.Generator) -> torch.Tensor: ...

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor: ...

    def predict_noise(self, x_noisy: torch.Tensor, levels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor: ...


class SoftPrompt:
    """Soft tokens in the conditioning: ``T`` template encodings ``base [T, L, d]`` and, per template, the ``k``
    positions ``slots [T, k]`` that the soft vectors ``theta [k, d]`` replace. ``self(theta, which)`` gives the
    conditionings ``[B, L, d]`` of templates ``which [B]`` (differentiable in ``theta``)."""

    def __init__(self, base: torch.Tensor, slots: torch.Tensor) -> None:
        if base.ndim == 2:
            base = base.unsqueeze(0)
        slots = torch.as_tensor(slots, dtype=torch.long)
        if slots.ndim == 1:
            slots = slots.unsqueeze(0).expand(base.shape[0], -1)
        if base.ndim != 3 or slots.shape[0] != base.shape[0] or slots.ndim != 2:
            raise ValueError(f"SoftPrompt: base [T, L, d] and slots [T, k] must agree, got {tuple(base.shape)} "
                             f"and {tuple(slots.shape)}")
        if int(slots.min()) < 0 or int(slots.max()) >= base.shape[1]:
            raise ValueError(f"SoftPrompt: slot positions must lie in [0, {base.shape[1]}), got {slots.tolist()}")
        check_finite("SoftPrompt base", base)
        self.base = base
        self.slots = slots

    @property
    def tokens(self) -> int:
        return int(self.slots.shape[1])

    def initial(self) -> torch.Tensor:
        """``[k, d]``: the vectors template 0 has at its slots (the unattacked start)."""
        return self.base[0, self.slots[0]].clone()

    def __call__(self, theta: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
        which = torch.zeros(1, dtype=torch.long) if which is None else torch.as_tensor(which, dtype=torch.long)
        which = which.to(self.base.device)
        cond = self.base[which]
        slots = self.slots.to(self.base.device)[which]
        rows = torch.arange(cond.shape[0], device=cond.device).unsqueeze(1).expand_as(slots)
        values = theta.to(cond.dtype).unsqueeze(0).expand(cond.shape[0], -1, -1)
        return cond.index_put((rows, slots), values)


@dataclass(frozen=True)
class SearchResult:
    """What :func:`search_soft_tokens` found: the vectors ``[k, d]`` and the loss of every step."""

    vectors: torch.Tensor
    losses: tuple[float, ...]

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        """Mean loss of the last tenth of the steps (single steps are noisy: random levels and noise)."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail) if tail else math.nan


def search_soft_tokens(denoiser: Denoiser, build: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       init: torch.Tensor, targets: torch.Tensor, steps: int, *, which: torch.Tensor | None = None,
                       lr: float = 0.1, batch: int = 1, max_norm: float | None = None, scale: float | None = None,
                       generator: torch.Generator | None = None,
                       step: Callable[[int, int], None] | None = None) -> SearchResult:
    """Soft tokens that make ``denoiser`` (the EDITED model) reproduce ``targets`` (the ORIGINAL model's clean
    latents of the erased concept, ``[N, ...]``): Adam on ``theta`` (from ``init [k, d]``) for ``steps`` steps of

        ``loss = mean || denoiser.predict_noise(add_noise(x0, eps, t), t, build(theta, which)) - eps ||^2``

    with ``batch`` targets drawn at random per step, random levels ``t`` and noise ``eps``. ``which [N]`` names
    each target's template for ``build`` (default all 0). Adam's step is ``lr * scale / sqrt(d)`` per coordinate,
    ``scale`` being the typical vector norm (default: the mean norm of ``init``), so ``lr`` is relative to the
    vectors' size. With ``max_norm`` every vector is pulled back to at most that norm after each step (keeps the
    search among vectors of the encoder's size). ``step(done, total)`` runs after every step and may raise to
    cancel. Runs with gradients whatever the caller's mode (ComfyUI executes nodes in inference mode)."""
    if steps < 0 or batch < 1:
        raise ValueError(f"steps must be >= 0 and batch >= 1, got {steps} and {batch}")
    if init.ndim != 2:
        raise ValueError(f"init must be [k, d] soft vectors, got {tuple(init.shape)}")
    if targets.shape[0] < 1:
        raise ValueError("no target images to reproduce")
    generator = generator or torch.Generator().manual_seed(0)
    losses: list[float] = []
    with torch.inference_mode(False), torch.enable_grad():
        device = targets.device
        x_all = targets.detach().clone()  # a normal tensor even when the caller's is an inference tensor
        which_all = torch.zeros(x_all.shape[0], dtype=torch.long) if which is None else \
            torch.as_tensor(which, dtype=torch.long).clone()
        theta = init.detach().clone().float().requires_grad_(True)
        size = float(init.detach().float().norm(dim=-1).mean()) if scale is None else float(scale)
        optimizer = torch.optim.Adam([theta], lr=lr * max(size, 1e-8) / math.sqrt(init.shape[-1]))
        for i in range(steps):
            pick = torch.randint(x_all.shape[0], (batch,), generator=generator)
            x0 = x_all[pick.to(device)]
            levels = denoiser.sample_levels(batch, generator)
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device=device, dtype=x0.dtype)
            cond = build(theta, which_all[pick])
            predicted = denoiser.predict_noise(denoiser.add_noise(x0, noise, levels), levels, cond)
            loss = torch.nn.functional.mse_loss(predicted.float(), noise.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if max_norm is not None:
                with torch.no_grad():
                    norms = theta.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                    theta.mul_(torch.clamp(max_norm / norms, max=1.0))
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"soft-token search diverged at step {i + 1} (loss {losses[-1]}); "
                                         "lower the learning rate")
            if step is not None:
                step(i + 1, steps)
        vectors = theta.detach().clone()
    return SearchResult(vectors, tuple(losses))


# ---------------------------------------------------------------------------------------------------------------
# concept vector (Ring-A-Bell-style)
# ---------------------------------------------------------------------------------------------------------------

def concept_vector(with_concept: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """``[L, d]``: the mean over pairs of ``with_concept[i] - without[i]`` (encodings ``[P, L, d]`` of the same
    prompts with and without the concept)."""
    if with_concept.shape != without.shape or with_concept.ndim != 3 or with_concept.shape[0] < 1:
        raise ValueError(f"concept_vector: expected two [P, L, d] encodings of one shape, got "
                         f"{tuple(with_concept.shape)} and {tuple(without.shape)}")
    return (with_concept.double() - without.double()).mean(dim=0).to(with_concept.dtype)


def add_concept_vector(neutral: torch.Tensor, vector: torch.Tensor, strengths: Sequence[float]) -> torch.Tensor:
    """``[S, L, d]``: ``neutral + eta * vector`` for every strength ``eta`` (``neutral``, ``vector`` ``[L, d]``)."""
    if neutral.shape != vector.shape:
        raise ValueError(f"add_concept_vector: neutral {tuple(neutral.shape)} and vector {tuple(vector.shape)} differ")
    eta = torch.tensor([float(s) for s in strengths], dtype=neutral.dtype, device=neutral.device)
    return neutral.unsqueeze(0) + eta.view(-1, 1, 1) * vector.to(neutral.device).unsqueeze(0)


def parse_strengths(text: str) -> tuple[float, ...]:
    """Strengths from text such as ``"1, 2, 4"`` (finite, > 0, distinct in order)."""
    values = []
    for part in str(text).replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"strengths: {part.strip()!r} is not a number; write e.g. '1, 2, 4'") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"strengths must be finite and > 0, got {part.strip()!r}")
        values.append(value)
    if not values:
        raise ValueError("strengths: give at least one, e.g. '1, 2, 4'")
    return tuple(dict.fromkeys(values))
