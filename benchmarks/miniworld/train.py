"""Training of the world's model (text encoder + UNet, jointly, from scratch) and of the judge, with a fixed
seed; weights are saved as safetensors in a cache folder outside the repository and reused when present.

Cache: ``${SCAPRE_MINIWORLD_CACHE:-~/.cache/scapre-miniworld}``; a file's name carries a hash of every setting
that made it, so a changed setting trains anew. Usage (from the repo root)::

    python benchmarks/miniworld/train.py                    # every registered world (worlds.py) and the judge
    python benchmarks/miniworld/train.py --worlds blind64   # one of them
    python benchmarks/miniworld/train.py --worlds clip64 --steps 500    # a variant (another cache file)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

if __package__ in (None, ""):  # run as a script: make ``miniworld`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "miniworld"

from .judge import Judge, train_judge
from .model import ModelConfig, Schedule, TextEncoder, UNet, build_denoiser, build_text_encoder
from .world import sample_batch

log = logging.getLogger("miniworld.train")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 2000
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    min_lr_share: float = 0.05  # cosine decay to this share of lr
    ema: float = 0.998
    seed: int = 0
    colours_only: bool = False  # the simpler world of quick tests (solid circles; see ``sample_batch``)

    def key(self) -> str:
        text = json.dumps({**asdict(self), "model": self.model.key_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class World:
    """A trained world: text encoder and denoiser (EMA weights), the schedule, and how it was made. ``unet`` is the
    denoiser whatever its kind (``config.model.denoiser``; the name is kept for the helpers built on it)."""

    config: TrainConfig
    text_encoder: TextEncoder
    unet: UNet
    schedule: Schedule
    seconds: float
    final_loss: float  # mean eps loss of the last 200 training steps
    trained_steps: int  # less than ``config.steps`` for a checkpoint saved during training
    cpu_seconds: float = float("nan")  # processor time of the training (wall ``seconds`` grows with the machine's load)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """``[n, L, d]`` encodings and last-word indices, as the denoiser reads them (``L`` and the indices in the
        text encoder's own layout: ``tokenize`` of ``world.py``, or ``t5_tokenize`` of ``dit.py``)."""
        toks = [self.text_encoder.tokenize(p) for p in prompts]
        ids = torch.stack([t[0] for t in toks])
        return self.text_encoder(ids), [t[1] for t in toks]


def cache_dir() -> Path:
    return Path(os.environ.get("SCAPRE_MINIWORLD_CACHE", "~/.cache/scapre-miniworld")).expanduser()


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_share + (1 - cfg.min_lr_share) * 0.5 * (1 + math.cos(math.pi * frac)))


def train_world(cfg: TrainConfig, log_every: int = 200,
                checkpoint: Callable[[World], None] | None = None,
                checkpoint_every: int = 0) -> World:
    """Train text encoder and UNet jointly on random pictures and prompts (eps-prediction, min-SNR-5 weights,
    AdamW, warm-up then cosine learning rate, EMA weights). Deterministic for a seed and thread count."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    text_encoder, unet = build_text_encoder(cfg.model), build_denoiser(cfg.model)
    ema_text, ema_unet = copy.deepcopy(text_encoder), copy.deepcopy(unet)
    for p in (*ema_text.parameters(), *ema_unet.parameters()):
        p.requires_grad_(False)
    params = [*text_encoder.parameters(), *unet.parameters()]
    ema_params = [*ema_text.parameters(), *ema_unet.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    schedule = Schedule()
    start, cpu_start = time.perf_counter(), time.process_time()
    running, recent = 0.0, []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = sample_batch(cfg.batch, g, cfg.model.size, colours_only=cfg.colours_only)
        ids = torch.stack([text_encoder.tokenize(p)[0] for p in batch.prompts])
        t = torch.randint(schedule.steps, (cfg.batch,), generator=g)
        noise = torch.randn(batch.images.shape, generator=g)
        pred = unet(schedule.add_noise(batch.images, noise, t), t, text_encoder(ids))
        per_image = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_image * schedule.loss_weight(t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        running += float(per_image.detach().mean())
        recent.append(float(per_image.detach().mean()))
        recent = recent[-200:]
        if log_every and (step + 1) % log_every == 0:
            log.info("step %d/%d  eps loss %.4f  (%.0f s)", step + 1, cfg.steps, running / log_every,
                     time.perf_counter() - start)
            running = 0.0
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            checkpoint(World(cfg, ema_text, ema_unet, schedule, time.perf_counter() - start,
                             sum(recent) / len(recent), step + 1, time.process_time() - cpu_start))
    seconds = time.perf_counter() - start
    final = sum(recent) / max(1, len(recent))
    ema_text.eval()
    ema_unet.eval()
    return World(cfg, ema_text, ema_unet, schedule, seconds, final, cfg.steps, time.process_time() - cpu_start)


def save_world(world: World, path: Path) -> None:
    tensors = {f"text_encoder.{k}": v.contiguous() for k, v in world.text_encoder.state_dict().items()}
    tensors.update({f"unet.{k}": v.contiguous() for k, v in world.unet.state_dict().items()})
    meta = {"train": json.dumps({**asdict(world.config), "model": world.config.model.to_dict()}),
            "seconds": f"{world.seconds:.1f}", "cpu_seconds": f"{world.cpu_seconds:.1f}",
            "final_loss": f"{world.final_loss:.5f}",
            "trained_steps": str(world.trained_steps)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_world(path: Path) -> World:
    """A world saved by :func:`save_world` (its settings are read from the file's metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    train = json.loads(meta["train"])
    model = ModelConfig.from_dict(train.pop("model"))
    cfg = TrainConfig(model=model, **train)
    tensors = load_file(str(path))
    text_encoder, unet = build_text_encoder(cfg.model), build_denoiser(cfg.model)
    text_encoder.load_state_dict({k[13:]: v for k, v in tensors.items() if k.startswith("text_encoder.")})
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    text_encoder.eval()
    unet.eval()
    steps = int(meta.get("trained_steps", cfg.steps))
    return World(cfg, text_encoder, unet, Schedule(), float(meta["seconds"]), float(meta["final_loss"]), steps,
                 float(meta.get("cpu_seconds", "nan")))


def get_world(cfg: TrainConfig, cache: Path | None = None, log_every: int = 200) -> World:
    """The world of ``cfg``: loaded from the cache when it is there, else trained and saved."""
    path = (cache or cache_dir()) / f"world-{cfg.key()}.safetensors"
    if path.exists():
        log.info("world: loading %s", path)
        return load_world(path)
    log.info("world: training %d steps (batch %d, %d threads)", cfg.steps, cfg.batch, torch.get_num_threads())

    def checkpoint(partial: World) -> None:
        save_world(partial, path.with_name(f"{path.stem}-step{partial.trained_steps}.safetensors"))

    world = train_world(cfg, log_every, checkpoint, checkpoint_every=500 if cfg.steps > 1000 else 0)
    save_world(world, path)
    log.info("world: trained in %.0f s (%.0f s of processor time), final eps loss %.4f (mean of the last 200 "
             "steps); saved %s", world.seconds, world.cpu_seconds, world.final_loss, path)
    return world


@dataclass(frozen=True)
class JudgeConfig:
    size: int = 16
    steps: int = 1500
    batch: int = 64
    lr: float = 2e-3
    seed: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def get_judge(cfg: JudgeConfig, cache: Path | None = None) -> tuple[Judge, dict[str, float]]:
    """The judge of ``cfg`` and its held-out accuracies: loaded from the cache or trained and saved."""
    path = (cache or cache_dir()) / f"judge-{cfg.key()}.safetensors"
    judge = Judge()
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            acc = json.loads(f.metadata()["accuracy"])
        judge.load_state_dict(load_file(str(path)))
        judge.eval()
        log.info("judge: loaded %s (held-out accuracy %s)", path, acc)
        return judge, acc
    judge, acc = train_judge(cfg.size, cfg.steps, cfg.batch, cfg.lr, cfg.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path),
              metadata={"accuracy": json.dumps(acc)})
    log.info("judge: trained, held-out accuracy %s; saved %s", acc, path)
    return judge, acc


def main() -> None:
    from .worlds import WORLD_NAMES, world_spec

    parser = argparse.ArgumentParser(description="Train (or load) the registered miniature worlds and the judge.")
    parser.add_argument("--worlds", nargs="+", default=list(WORLD_NAMES), choices=WORLD_NAMES,
                        help="registered worlds to train when missing (default: all, one after the other)")
    parser.add_argument("--steps", type=int, default=None, help="override the spec's training steps (a new world)")
    parser.add_argument("--batch", type=int, default=None, help="override the spec's batch (a new world)")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed (a new world)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    get_judge(JudgeConfig())
    overrides = {k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("seed", args.seed)) if v is not None}
    for name in args.worlds:
        cfg = dataclasses.replace(world_spec(name).train, **overrides)
        log.info("world %s: %s", name, cfg.key())
        get_world(cfg)


if __name__ == "__main__":
    main()
