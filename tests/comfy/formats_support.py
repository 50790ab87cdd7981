"""Test models in the formats people load: UNet-only files (float16, ComfyUI scaled fp8, GGUF Q8_0 and Q4_K)
of a small random SD1.5-class UNet (or derived from any SD1.5 checkpoint), small random SD2.x (v-prediction)
and SDXL-refiner checkpoints with their real text encoders, ComfyUI-GGUF unpacked into a test's own
custom_nodes folder, and a reader for the weights a loaded model really computes with.

Standard library only at import time (like ``comfy_support``); torch, numpy, safetensors and gguf are
imported where they are used. Generated files go to the test cache (``comfy_support.cache_dir()``), never
into the repo; they are built in a subprocess (``python formats_support.py make ...``) under a file lock.

Environment:
    SCAPRE_COMFY_PACKS  folder holding ``ComfyUI-GGUF-*.tar.gz`` (default ``../shared/comfyui-packs`` next to
                        the repo, as on CI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import comfy_support

log = logging.getLogger("scapre.comfy_tests")

PACKS_ENV = "SCAPRE_COMFY_PACKS"
GGUF_PACK_GLOB = "ComfyUI-GGUF-*.tar.gz"
FORMAT_VERSION = 1
"""Bump when a generated file's content changes, so stale cached files are not reused."""

UNET_PREFIX = "model.diffusion_model."
#: Derived UNet-only files of the SD1.5 test checkpoint: kind -> file suffix.
UNET_KINDS = {"fp16": "safetensors", "scaled_fp8": "safetensors", "Q8_0": "gguf", "Q4_K": "gguf"}

# ------------------------------------------------------------------------------------------------
# Small random checkpoints of the other UNet families, text encoders at their real widths
# ------------------------------------------------------------------------------------------------

#: UNet hyper-parameters: what ComfyUI's model detection must see for SD20 / SDXLRefiner (model_channels,
#: context_dim, linear projections, the refiner's input transformer depths), everything else shrunk (all
#: levels at model_channels, one transformer per attention level outside the refiner's fixed input depths).
FAMILY_UNETS: dict[str, dict[str, Any]] = {
    "sd2v": {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 1, 1, 1],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_linear_in_transformer": True, "context_dim": 1024, "num_heads": -1, "num_head_channels": 64,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
    "refiner": {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 384,
        "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential", "adm_in_channels": 2560,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 1, 1, 1],
        "transformer_depth": [0, 0, 4, 4, 4, 4, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_linear_in_transformer": True, "context_dim": 1280, "num_heads": -1, "num_head_channels": 64,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
}
FAMILY_CLASS = {"sd2v": "SD20", "refiner": "SDXLRefiner"}
#: ComfyUI tells SD2.x v-prediction from epsilon models by the spread of this bias (supported_models.SD20).
SD2_V_KEY = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_STD = 0.2


#: A small random UNet that ComfyUI's model detection reads as SD1.5 (320 channels, 768-wide text, attention in
#: the convolution layout), two levels with one transformer per block: 14 cross-attention key/value matrices of
#: 320 x 768 (the real SD1.5 has 32 of the same shape). The base of the fp8 and GGUF tests' UNet-only files.
TINY_SD15_UNET: dict[str, Any] = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "num_res_blocks": [1, 1], "channel_mult": [1, 1],
    "transformer_depth": [1, 1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def tiny_unet_name(seed: int = 0) -> str:
    return f"scapre-random-sd15tiny-seed{seed}-v{FORMAT_VERSION}.safetensors"


def build_tiny_unet(out_path: Path, seed: int = 0) -> dict[str, Any]:
    """The random :data:`TINY_SD15_UNET` as a UNet-only float16 file (keys without ``model.diffusion_model.``,
    as Load Diffusion Model reads them), built with ComfyUI's ``supported_models.SD15`` on the meta device;
    values as ``comfy_support._fill_tensor`` (the random SD1.5 checkpoint's)."""
    import comfy.cli_args
    import torch
    from safetensors.torch import save_file

    comfy.cli_args.args.cpu = True
    import comfy.supported_models

    model_config = comfy.supported_models.SD15(dict(TINY_SD15_UNET, dtype=torch.float16))
    with torch.device("meta"):
        model = model_config.get_model({})
    layout = model.diffusion_model.state_dict()
    tensors = {key: comfy_support._fill_tensor(UNET_PREFIX + key, tuple(t.shape), seed) if t.is_meta
               else t.detach().cpu().contiguous() for key, t in sorted(layout.items())}
    metadata = {"scapre_test_unet": "sd15tiny", "seed": str(seed), "format": str(FORMAT_VERSION)}
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), out_path)
    return {"arch": "sd15tiny", "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
            "bytes": out_path.stat().st_size}


def family_checkpoint_name(arch: str, seed: int = 0) -> str:
    return f"scapre-random-{arch}-seed{seed}-v{FORMAT_VERSION}.safetensors"


def build_family_checkpoint(arch: str, out_path: Path, seed: int = 0) -> dict[str, Any]:
    """A random-weight single-file checkpoint of ``arch`` ("sd2v" or "refiner") built with ComfyUI's own
    classes on the meta device (UNet from ``supported_models``, the model's own CLIP, the SD VAE), laid out
    by ``state_dict_for_saving`` as CheckpointSave writes it; values as ``comfy_support._fill_tensor``."""
    import comfy.cli_args
    import torch
    from safetensors.torch import save_file

    comfy.cli_args.args.cpu = True
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    unet_config = dict(FAMILY_UNETS[arch], dtype=torch.float16)
    model_config = getattr(comfy.supported_models, FAMILY_CLASS[arch])(unet_config)
    with torch.device("meta"):
        model = model_config.get_model({})
        clip_model = model_config.clip_target().clip(device="meta", dtype=torch.float16)
        vae_model = AutoencoderKL(ddconfig=dict(comfy_support.VAE_DDCONFIG), embed_dim=4)
    layout = model.state_dict_for_saving(clip_model.state_dict(), vae_model.state_dict())
    tensors = {}
    for key in sorted(layout):
        t = layout[key]
        if not t.is_meta:
            tensors[key] = t.detach().cpu().contiguous()
        elif key == SD2_V_KEY:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
            tensors[key] = torch.empty(tuple(t.shape), dtype=torch.float16).normal_(0.0, SD2_V_STD, generator=gen)
        else:
            tensors[key] = comfy_support._fill_tensor(key, tuple(t.shape), seed)
    metadata = {"scapre_test_checkpoint": arch, "seed": str(seed), "format": str(FORMAT_VERSION),
                "clip_class": type(clip_model).__name__, "model_config": type(model_config).__name__}
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), out_path)
    return {"arch": arch, "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
            "bytes": out_path.stat().st_size, **metadata}


# ------------------------------------------------------------------------------------------------
# UNet-only files in other formats, derived from an SD1.5 checkpoint or UNet-only file
# ------------------------------------------------------------------------------------------------

def unet_file_name(kind: str, source: Path) -> str:
    return f"{source.stem}-unet-{kind}-v{FORMAT_VERSION}.{UNET_KINDS[kind]}"


def _unet_tensors(source: Path) -> dict:
    from safetensors import safe_open

    out = {}
    with safe_open(str(source), framework="pt") as fh:
        keys = list(fh.keys())
        unet_only = not any(k.startswith(UNET_PREFIX) for k in keys)  # a UNet-only file: every key is the UNet's
        for key in keys:
            if unet_only or key.startswith(UNET_PREFIX):
                out[key.removeprefix(UNET_PREFIX)] = fh.get_tensor(key)
    return out


def write_unet_fp16(source: Path, out: Path) -> None:
    """The checkpoint's UNet alone, as Load Diffusion Model reads it (keys without ``model.diffusion_model.``)."""
    from safetensors.torch import save_file

    tensors = {k: v.half().contiguous() for k, v in _unet_tensors(source).items()}
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata={"scapre_test_unet": "fp16"}), out)


def write_unet_scaled_fp8(source: Path, out: Path) -> None:
    """ComfyUI's scaled fp8 layout: every Linear weight (the 2-D ``.weight`` tensors) stored as
    float8_e4m3fn ``weight / scale`` with a float32 ``scale_weight`` (absmax / 448) beside it, the rest
    float16, and the ``scaled_fp8`` marker ComfyUI looks for."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for key, value in _unet_tensors(source).items():
        if key.endswith(".weight") and value.ndim == 2:
            w = value.float()
            scale = (w.abs().max() / torch.finfo(torch.float8_e4m3fn).max).clamp(min=1e-12)
            tensors[key] = (w / scale).to(torch.float8_e4m3fn).contiguous()
            tensors[key[: -len("weight")] + "scale_weight"] = scale.reshape(()).to(torch.float32)
        else:
            tensors[key] = value.half().contiguous()
    tensors["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata={"scapre_test_unet": "scaled_fp8"}), out)


def quantize_q4_k(values) -> Any:
    """GGUF ``Q4_K`` blocks (ggml's layout, 144 bytes per 256 values) of a float32 array ``[rows, cols]``,
    ``cols % 256 == 0``: per 32-value sub-block a 6-bit scale and min under the block's float16 ``d`` /
    ``dmin``, and 4-bit quants. A plain min/max fit (ggml's own quantizer searches further); the gguf package
    reads these blocks back (``gguf.quants.dequantize``), which the GGUF tests check. Returns uint8
    ``[rows, cols // 256 * 144]``."""
    import numpy as np

    x = np.asarray(values, dtype=np.float32)
    rows, cols = x.shape
    if cols % 256:
        raise ValueError(f"Q4_K needs a multiple of 256 values per row, got {cols}")
    sub = x.reshape(-1, 8, 32)  # [blocks, sub-blocks, values]
    low = np.minimum(sub.min(axis=2), 0.0)
    high = sub.max(axis=2)
    scale = (high - low) / 15.0
    offset = -low
    d = (scale.max(axis=1) / 63.0).astype(np.float16)
    dmin = (offset.max(axis=1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.rint(np.where(d32 > 0, scale / d32, 0.0)), 0, 63).astype(np.uint8)
        mn = np.clip(np.rint(np.where(dmin32 > 0, offset / dmin32, 0.0)), 0, 63).astype(np.uint8)
        step = (d32 * sc)[:, :, None]
        base = (dmin32 * mn)[:, :, None]
        q = np.clip(np.rint(np.where(step > 0, (sub + base) / step, 0.0)), 0, 15).astype(np.uint8)
    scales = np.zeros((sub.shape[0], 12), dtype=np.uint8)
    scales[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0xF) | ((mn[:, 4:8] & 0xF) << 4)
    pairs = q.reshape(-1, 4, 2, 32)  # sub-blocks 2i (low nibbles) and 2i+1 (high nibbles)
    qs = (pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs],
                            axis=1)
    return blocks.reshape(rows, cols // 256 * 144)


def write_unet_gguf(source: Path, out: Path, qtype_name: str) -> None:
    """A GGUF UNet as ComfyUI-GGUF's converter lays one out (architecture ``sd1``, keys without the
    checkpoint prefix): 2-D weights whose rows divide into blocks in ``qtype_name`` (Q8_0 through the gguf
    package, Q4_K through :func:`quantize_q4_k`), 1-D tensors float32, the rest float16."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch="sd1")
        for key, value in sorted(_unet_tensors(source).items()):
            arr = value.float().numpy()
            if arr.ndim == 2 and arr.shape[1] % block == 0:
                data = quantize_q4_k(arr) if qtype_name == "Q4_K" else gguf.quants.quantize(arr, qtype)
                writer.add_tensor(key, data, raw_dtype=qtype)
            elif arr.ndim == 1:
                writer.add_tensor(key, arr.astype(np.float32))
            else:
                writer.add_tensor(key, arr.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _save_atomic(write, out)


def _save_atomic(write, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure(out: Path, args: list[str], python: str, comfy_path: Path, timeout: float) -> Path:
    """``out``, built by ``python formats_support.py <args> --out out`` first if it is missing."""
    if out.is_file():
        return out
    with _file_lock(out.with_name(out.name + ".lock")):
        if out.is_file():
            return out
        t0 = time.perf_counter()
        env = {**os.environ, comfy_support.COMFYUI_PATH_ENV: str(comfy_path)}
        proc = subprocess.run([python, str(Path(__file__).resolve()), *args, "--out", str(out)], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=str(Path(__file__).parent))
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"building {out.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        log.info("built %s in %.1f s", out.name, time.perf_counter() - t0)
    return out


def ensure_unet_file(kind: str, source: Path, *, comfy_path: Path, python: str, directory: Path,
                     timeout: float = 1200) -> Path:
    """The cached UNet-only file of ``kind`` (see :data:`UNET_KINDS`) derived from checkpoint ``source``."""
    if kind not in UNET_KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(UNET_KINDS)}")
    return _ensure(Path(directory) / unet_file_name(kind, source), ["make-unet", kind, "--source", str(source)],
                   python, comfy_path, timeout)


def ensure_tiny_unet(*, comfy_path: Path, python: str, directory: Path, timeout: float = 1200) -> Path:
    """The cached random :data:`TINY_SD15_UNET` (float16, UNet only)."""
    return _ensure(Path(directory) / tiny_unet_name(), ["make-tiny-unet"], python, comfy_path, timeout)


def ensure_tiny_unet_files(kinds, *, comfy_path: Path, python: str, directory: Path) -> dict[str, Path]:
    """kind -> the cached tiny SD1.5 UNet in that format (:data:`UNET_KINDS`; "fp16" is the UNet file itself)."""
    tiny = ensure_tiny_unet(comfy_path=comfy_path, python=python, directory=directory)
    return {kind: tiny if kind == "fp16" else
            ensure_unet_file(kind, tiny, comfy_path=comfy_path, python=python, directory=directory)
            for kind in kinds}


def ensure_family_checkpoint(arch: str, *, comfy_path: Path, python: str, directory: Path,
                             timeout: float = 1200) -> Path:
    """The cached random checkpoint of ``arch`` ("sd2v" or "refiner")."""
    return _ensure(Path(directory) / family_checkpoint_name(arch), ["make-checkpoint", arch], python, comfy_path,
                   timeout)


# ------------------------------------------------------------------------------------------------
# ComfyUI-GGUF in a test's own custom_nodes folder
# ------------------------------------------------------------------------------------------------

def packs_dir() -> Path:
    raw = os.environ.get(PACKS_ENV)
    return Path(raw).expanduser() if raw else comfy_support.PACK_ROOT.parent / "shared" / "comfyui-packs"


def gguf_pack_problem() -> str | None:
    """Why ComfyUI-GGUF cannot be set up here, or None."""
    found = sorted(packs_dir().glob(GGUF_PACK_GLOB))
    if not found:
        return f"no {GGUF_PACK_GLOB} in {packs_dir()} (set {PACKS_ENV} to the folder holding it)"
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        return f"the gguf package is not installed in {sys.executable} (pip install gguf)"
    return None


def unpack_gguf_pack(custom_nodes: Path) -> Path:
    """Unpack the ComfyUI-GGUF snapshot into ``custom_nodes/ComfyUI-GGUF`` (a test's own folder, never the
    host's) and return that folder."""
    (tarball,) = sorted(packs_dir().glob(GGUF_PACK_GLOB))[-1:]
    custom_nodes.mkdir(parents=True, exist_ok=True)
    target = custom_nodes / "ComfyUI-GGUF"
    if not target.is_dir():
        with tarfile.open(tarball) as tar:
            tar.extractall(custom_nodes, filter="data")
    if not (target / "__init__.py").is_file():
        raise RuntimeError(f"{tarball} did not unpack to {target}")
    return target


def load_gguf_pack(c: comfy_support.InProcessComfy, custom_nodes: Path) -> type:
    """Load ComfyUI-GGUF into the in-process ComfyUI ``c`` as ComfyUI loads custom nodes; returns its
    ``UnetLoaderGGUF`` node class."""
    if "UnetLoaderGGUF" not in c.nodes.NODE_CLASS_MAPPINGS:
        path = unpack_gguf_pack(custom_nodes)
        ok = asyncio.run(c.nodes.load_custom_node(str(path), ignore=set(c.nodes.NODE_CLASS_MAPPINGS),
                                                  module_parent="custom_nodes"))
        if not ok or "UnetLoaderGGUF" not in c.nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"ComfyUI-GGUF did not load from {path}")
    return c.nodes.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]


# ------------------------------------------------------------------------------------------------
# What a loaded model computes with
# ------------------------------------------------------------------------------------------------

def sampled_weights(model, keys, dtype=None, load: bool = True) -> dict:
    """The weights the model's layers multiply with when ComfyUI samples, read back by running each layer:
    ``layer(I)`` for a Linear layer without bias is ``W^T``, whatever the storage (fp8, scaled, GGUF blocks)
    and however the patches are applied (baked into the weights, LowVramPatch or weight functions at compute
    time, ComfyUI-GGUF's patches at dequantization). The model is loaded first, as the samplers load it
    (``load=False``: the caller loaded it). ``dtype``: the input dtype (default: the model's compute dtype,
    what ComfyUI feeds the layers). Float32 CPU copies."""
    import comfy.model_management as mm
    import comfy.utils
    import torch

    out = {}
    with torch.inference_mode():
        if load:
            mm.load_models_gpu([model])
        if dtype is None:
            dtype = model.model.manual_cast_dtype or model.model.get_dtype()
        device = model.load_device
        for key in keys:
            layer = comfy.utils.get_attr(model.model, key.rsplit(".", 1)[0])
            eye = torch.eye(int(layer.in_features), dtype=dtype, device=device)
            out[key] = layer(eye).T.to(device="cpu", dtype=torch.float32).clone()
    return out


def measured_survival(before: dict, after: dict, intended: dict) -> dict:
    """Surviving fraction and error of ``intended`` (key -> change) in ``after - before``, per key and pooled:
    ``<D, C> / ||C||^2`` and ``||D - C|| / ||C||`` (as documented in docs/model-formats.md)."""
    per, inner, norm2, err2 = {}, 0.0, 0.0, 0.0
    for key, c in intended.items():
        c = c.double()
        d = after[key].double() - before[key].double()
        i, n, e = float((d * c).sum()), float(c.pow(2).sum()), float((d - c).pow(2).sum())
        per[key] = (i / n, (e / n) ** 0.5)
        inner, norm2, err2 = inner + i, norm2 + n, err2 + e
    return {"surviving": inner / norm2, "error": (err2 / norm2) ** 0.5, "per_matrix": per}


# ------------------------------------------------------------------------------------------------
# Command line (the build subprocesses)
# ------------------------------------------------------------------------------------------------

def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    unet = sub.add_parser("make-unet", help="derive a UNet-only file from a checkpoint")
    unet.add_argument("kind", choices=sorted(UNET_KINDS))
    unet.add_argument("--source", type=Path, required=True)
    unet.add_argument("--out", type=Path, required=True)
    ckpt = sub.add_parser("make-checkpoint", help="a small random SD2.x-v or SDXL-refiner checkpoint")
    ckpt.add_argument("arch", choices=sorted(FAMILY_UNETS))
    ckpt.add_argument("--out", type=Path, required=True)
    tiny = sub.add_parser("make-tiny-unet", help="the small random SD1.5-class UNet (float16, UNet only)")
    tiny.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    if args.cmd == "make-unet":
        if args.kind == "fp16":
            write_unet_fp16(args.source, args.out)
        elif args.kind == "scaled_fp8":
            write_unet_scaled_fp8(args.source, args.out)
        else:
            write_unet_gguf(args.source, args.out, args.kind)
        summary: dict[str, Any] = {"kind": args.kind, "bytes": args.out.stat().st_size}
    else:
        path = comfy_support.comfyui_path()
        comfy_support._drop_foreign_modules(path)
        sys.path.insert(0, str(path))
        summary = (build_tiny_unet(args.out) if args.cmd == "make-tiny-unet"
                   else build_family_checkpoint(args.arch, args.out))
    log.info("built %s in %.1f s: %s", args.out, time.perf_counter() - t0, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
