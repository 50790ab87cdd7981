"""The judge: a small CNN trained on procedural pictures that reads colour, shape and style."""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from .world import COLOURS, SHAPES, STYLES, sample_batch

log = logging.getLogger("miniworld.judge")


class Judge(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(2), nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Linear(96 * 4, 128), nn.ReLU())
        self.colour = nn.Linear(128, len(COLOURS))
        self.shape = nn.Linear(128, len(SHAPES))
        self.style = nn.Linear(128, len(STYLES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.hidden(self.features(x))
        return self.colour(h), self.shape(h), self.style(h)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Softmax probabilities of colour, shape and style for pictures in [-1, 1]."""
        outs = [self(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
        return tuple(torch.cat([o[k] for o in outs]).softmax(dim=1) for k in range(3))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Pictures as a sampler may draw them: some Gaussian noise and a little blur, at random strengths."""
    n = x.shape[0]
    noise = 0.15 * torch.rand(n, 1, 1, 1, generator=g)
    x = x + noise * torch.randn(x.shape, generator=g)
    blur = torch.rand(n, 1, 1, 1, generator=g) < 0.3
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur, 0.5 * x + 0.5 * soft, x)
    return x.clamp(-1, 1)


def train_judge(size: int, steps: int, batch: int, lr: float, seed: int) -> tuple[Judge, dict[str, float]]:
    """Train on fresh random pictures (augmented); returns the judge and its accuracy on 2000 held-out clean
    pictures."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * (1 - step / steps))
        b = sample_batch(batch, g, size, with_prompts=False)
        logits = judge(_augment(b.images, g))
        loss = sum(F.cross_entropy(lo, y) for lo, y in zip(logits, (b.colour, b.shape, b.style), strict=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            log.info("judge step %d/%d  loss %.4f  (%.0f s)", step + 1, steps, float(loss.detach()),
                     time.perf_counter() - start)
    judge.eval()
    held = sample_batch(2000, torch.Generator().manual_seed(seed + 1000), size, with_prompts=False)
    pc, ps, pst = judge.probs(held.images)
    acc = {
        "colour": round(float((pc.argmax(1) == held.colour).float().mean()), 4),
        "shape": round(float((ps.argmax(1) == held.shape).float().mean()), 4),
        "style": round(float((pst.argmax(1) == held.style).float().mean()), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return judge, acc
