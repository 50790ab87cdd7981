"""ComfyUI in this process, for the command line: found from ``--comfyui`` or ``COMFYUI_PATH``,
imported on the device ComfyUI would pick (``--cpu`` forces the CPU), nothing written into it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("scapre")


class HostError(RuntimeError):
    """ComfyUI cannot be found or imported; worded for the command line."""


def installed_in() -> Path | None:
    """The ComfyUI this pack sits in (``<ComfyUI>/custom_nodes/<pack>``), if it does."""
    # <ComfyUI>/custom_nodes/<pack>/nodes/cli/host.py; not resolved, so that a linked pack finds the ComfyUI
    # it is linked into
    candidate = Path(os.path.abspath(__file__)).parents[4]
    return candidate if _is_comfyui(candidate) else None


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def find_comfyui(given: str | None) -> Path:
    """The ComfyUI folder from ``given``, ``$COMFYUI_PATH`` or the install this pack sits in (it holds
    ``main.py`` and ``comfy/``)."""
    value = given or os.environ.get("COMFYUI_PATH")
    if not value:
        found = installed_in()
        if found is None:
            raise HostError("no ComfyUI install given: pass --comfyui PATH or set COMFYUI_PATH "
                            "(the folder with ComfyUI's main.py)")
        return found
    path = Path(value).expanduser().resolve()
    if not _is_comfyui(path):
        raise HostError(f"{path} is not a ComfyUI folder (no main.py and comfy/ in it)")
    return path


def accelerator_available() -> bool:
    """Whether torch sees a device ComfyUI would run on instead of the CPU (CUDA/ROCm, Apple MPS, Intel
    XPU, or the Ascend/Cambricon plug-ins). Without one, ComfyUI must be told to use the CPU (as
    ``main.py --cpu``), or its device lookup stops with "Torch not compiled with CUDA enabled"."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    return any(importlib.util.find_spec(name) is not None for name in ("torch_npu", "torch_mlu"))


def import_comfyui(path: Path, cpu: bool = False) -> None:
    """Put ComfyUI on ``sys.path`` and import what loading, encoding and saving need; on the CPU when
    ``cpu`` is set or when no accelerator is available (said in one line)."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        import comfy.options
        from comfy import cli_args

        if not cpu and getattr(cli_args.args, "directml", None) is None and not accelerator_available():
            log.warning("no GPU found: running on the CPU (slower, same results)")
            cpu = True
        if cpu:
            cli_args.args.cpu = True
        import comfy.model_management
        import comfy.sd
        import comfy.utils  # noqa: F401
    except ImportError as err:
        raise HostError(f"cannot import ComfyUI from {path} with this Python ({sys.executable}): {err}; "
                        "run with the Python of that ComfyUI install") from None


def load_checkpoint(path: Path):
    """(MODEL, CLIP, VAE) as Load Checkpoint gives them (``comfy.sd.load_checkpoint_guess_config``)."""
    import comfy.sd

    try:
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    except Exception as err:  # ComfyUI raises plain RuntimeErrors for unknown or broken files
        raise HostError(f"ComfyUI cannot load {path} as a checkpoint: {err}") from None
    if model is None or clip is None:
        raise HostError(f"{path} holds no UNet and text encoder (need a full SD1.x/SD2.x/SDXL checkpoint)")
    return model, clip, vae
