"""Helpers for the tests that run against a real ComfyUI checkout (tier 2).

Everything here imports only the standard library at module level, so the test suite collects (and
skips) cleanly in CI where neither ComfyUI nor torch need be present. ComfyUI itself is used three ways:

* in-process (:func:`import_comfy_inprocess`): ComfyUI's modules imported into the pytest process, the
  pack loaded through ``nodes.load_custom_node`` exactly as ComfyUI loads ``custom_nodes/*``; node
  classes are then run with :func:`run_node`.
* as a server (:class:`ComfyServer`): ``main.py`` in a subprocess, driven over HTTP.
* as a script runner: :func:`ensure_random_checkpoint` builds random-weight checkpoints in a subprocess
  with ComfyUI's own model classes (``python comfy_support.py make-checkpoint sd15 --out X``).

Environment:
    COMFYUI_PATH       a ComfyUI checkout (holding ``main.py`` and ``comfy/``); tier-2 tests skip without it.
    COMFYUI_PYTHON     python that runs the server and builds checkpoints (default: this interpreter).
    SCAPRE_TEST_CACHE  cache for generated checkpoints (default ``~/.cache/scapre-tests``). Never commit it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import gc
import inspect
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("scapre.comfy_tests")

COMFYUI_PATH_ENV = "COMFYUI_PATH"
COMFYUI_PYTHON_ENV = "COMFYUI_PYTHON"
CACHE_ENV = "SCAPRE_TEST_CACHE"

PACK_ROOT = Path(__file__).resolve().parents[2]
"""The repo root, which is the pack directory ComfyUI loads."""

PACK_LINK_NAME = "comfyui-scapre"
"""Name of the symlink (to :data:`PACK_ROOT`) that ComfyUI loads. It sets the pack's module name, its
``/extensions/<name>/`` web path and ``RELATIVE_PYTHON_MODULE`` (``custom_nodes.comfyui-scapre``)."""

NODE_ID_PREFIX = "ScaPre"

# Top-level module names of a ComfyUI checkout that a test process could have imported from elsewhere
# (the pack itself has a ``nodes/`` package; ``comfy`` is a namespace package in ComfyUI).
_COMFY_TOP_LEVEL = (
    "comfy", "comfy_api", "comfy_execution", "comfy_extras", "comfy_config", "nodes", "folder_paths",
    "node_helpers", "latent_preview", "utils", "app", "server", "execution", "protocol", "middleware",
)


# --------------------------------------------------------------------------------------------------
# Locating ComfyUI
# --------------------------------------------------------------------------------------------------

def comfyui_path_problem(value: str | None = None) -> str | None:
    """Why ``COMFYUI_PATH`` (or ``value``) is unusable, or None when it names a ComfyUI checkout."""
    raw = os.environ.get(COMFYUI_PATH_ENV) if value is None else value
    if not raw:
        return f"{COMFYUI_PATH_ENV} is not set (point it at a ComfyUI checkout to run the ComfyUI host tests)"
    path = Path(raw).expanduser()
    missing = [name for name, ok in (("main.py", (path / "main.py").is_file()),
                                     ("comfy/", (path / "comfy").is_dir())) if not ok]
    if missing:
        return f"{COMFYUI_PATH_ENV}={raw} is not a ComfyUI checkout (missing {', '.join(missing)})"
    return None


def comfyui_path() -> Path:
    """The checkout named by ``COMFYUI_PATH``; raises ValueError when unusable."""
    problem = comfyui_path_problem()
    if problem:
        raise ValueError(problem)
    return Path(os.environ[COMFYUI_PATH_ENV]).expanduser().resolve()


def comfyui_python() -> str:
    """Interpreter for the server and checkpoint subprocesses: ``COMFYUI_PYTHON`` or this one."""
    return os.environ.get(COMFYUI_PYTHON_ENV) or sys.executable


def comfyui_version(path: Path) -> str:
    """ComfyUI's ``__version__`` from ``comfyui_version.py``, without importing it ("unknown" if absent)."""
    version_file = Path(path) / "comfyui_version.py"
    if version_file.is_file():
        for line in version_file.read_text(encoding="utf-8").splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def cache_dir() -> Path:
    """Directory for generated test artefacts, outside the repo; created on demand."""
    raw = os.environ.get(CACHE_ENV)
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "scapre-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def make_pack_link(parent: Path, name: str = PACK_LINK_NAME) -> Path:
    """Create ``parent/name`` as a symlink to the repo root and return it.

    The repo root is the pack, but its folder name (``main`` here, anything in CI) would become the pack's
    module and web-extension name; the link gives ComfyUI a stable, distinct name instead.
    """
    parent.mkdir(parents=True, exist_ok=True)
    link = parent / name
    if link.is_symlink() and link.resolve() == PACK_ROOT:
        return link
    if link.exists() or link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a link to {PACK_ROOT}")
    link.symlink_to(PACK_ROOT, target_is_directory=True)
    return link


def pack_problem() -> str | None:
    """Why the pack cannot be loaded at all yet (no ``__init__.py`` at the repo root), or None."""
    if not (PACK_ROOT / "__init__.py").is_file():
        return f"the pack has no {PACK_ROOT / '__init__.py'} yet, so ComfyUI has nothing to load"
    return None


# --------------------------------------------------------------------------------------------------
# In-process ComfyUI
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeResult:
    """Outputs of one node call: ``outputs`` (the RETURN tuple) and ``ui`` (None when the node has none)."""

    outputs: tuple
    ui: Any = None

    def __getitem__(self, index: int) -> Any:
        return self.outputs[index]

    def __len__(self) -> int:
        return len(self.outputs)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.outputs)


def _await_if_needed(value: Any) -> Any:
    if inspect.isawaitable(value):
        async def _wait() -> Any:
            return await value
        return asyncio.run(_wait())
    return value


def is_v3_node(node_cls: type) -> bool:
    """True for a V3 (``comfy_api`` ``io.ComfyNode``) class, False for a classic V1 class."""
    return hasattr(node_cls, "GET_SCHEMA") and hasattr(node_cls, "PREPARE_CLASS_CLONE")


def run_node(node_cls: type, /, *, unique_id: str = "1", prompt: dict | None = None,
             **inputs: Any) -> NodeResult:
    """Run one node class the way ComfyUI's executor does, for a single (non-list) set of inputs.

    V3: a locked class clone carrying the hidden inputs (``cls.hidden.unique_id``, ``.prompt``) is made with
    ``PREPARE_CLASS_CLONE`` (0.3.64 takes the hidden dict, 0.8.0 a ``{"hidden_inputs": ...}`` V3Data) and
    ``EXECUTE_NORMALIZED[_ASYNC]`` is called on it, giving an ``io.NodeOutput`` (``.result``, ``.ui``).
    V1: ``getattr(cls(), cls.FUNCTION)(**inputs)``, which returns a tuple or ``{"result": ..., "ui": ...}``.
    Coroutines (async ``execute``) are run to completion. Input validation is not run.
    """
    if is_v3_node(node_cls):
        from comfy_api.internal import make_locked_method_func
        from comfy_api.latest import io

        hidden = {io.Hidden.unique_id: unique_id, io.Hidden.prompt: prompt or {},
                  io.Hidden.extra_pnginfo: None, io.Hidden.dynprompt: None}
        params = list(inspect.signature(node_cls.PREPARE_CLASS_CLONE).parameters)
        arg = {"hidden_inputs": hidden} if params and params[0] == "v3_data" else hidden
        node_cls.VALIDATE_CLASS()
        clone = node_cls.PREPARE_CLASS_CLONE(arg)
        func = make_locked_method_func(node_cls, node_cls.FUNCTION, clone)
        out = _await_if_needed(func(**inputs))
        result = out.result
        return NodeResult(tuple(result) if result is not None else (), out.ui)
    out = _await_if_needed(getattr(node_cls(), node_cls.FUNCTION)(**inputs))
    if isinstance(out, dict):
        return NodeResult(tuple(out.get("result", ())), out.get("ui"))
    return NodeResult(tuple(out) if out is not None else (), None)


def edit_diffs(model, index: int = -1) -> dict:
    """``{key: W_new - W_in}`` (float32) of ``model``'s ScaPre edit number ``index`` (default: the last), every
    change as a matrix (an edit holds a change with a compact form in that form: the pack's
    ``stack.edit_changes`` makes it dense from the model)."""
    record = model.model_options["scapre_edits"][index]
    stack = sys.modules[type(record).__module__.rsplit(".", 1)[0] + ".stack"]
    changes = stack.edit_changes(model, (record,))
    return {k: changes[k] for k in changes}


@dataclass
class InProcessComfy:
    """A ComfyUI imported into this process, with core nodes, comfy_extras and (if loadable) this pack."""

    path: Path
    version: str
    nodes: ModuleType
    folder_paths: ModuleType
    pack_dir: Path | None
    pack_loaded: bool
    pack_problem: str | None
    pack_node_ids: tuple[str, ...]
    core_node_ids: frozenset[str] = field(repr=False)

    def node_class(self, node_id: str) -> type:
        """Class registered under ``node_id`` in ``nodes.NODE_CLASS_MAPPINGS``."""
        try:
            return self.nodes.NODE_CLASS_MAPPINGS[node_id]
        except KeyError:
            raise KeyError(f"node {node_id!r} is not registered (pack loaded: {self.pack_loaded}, "
                           f"problem: {self.pack_problem})") from None

    def run_node(self, node_id: str, /, *, unique_id: str = "1", prompt: dict | None = None,
                 **inputs: Any) -> NodeResult:
        """:func:`run_node` on the class registered as ``node_id``."""
        return run_node(self.node_class(node_id), unique_id=unique_id, prompt=prompt, **inputs)

    def pack_module(self) -> ModuleType | None:
        """The pack's module object as ComfyUI imported it (its name is the link path), if loaded."""
        if self.pack_dir is None:
            return None
        return sys.modules.get(str(self.pack_dir).replace(".", "_x_"))


class _RecordWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _drop_foreign_modules(path: Path) -> None:
    """Forget ComfyUI-named modules imported from outside ``path`` (e.g. the pack's own ``nodes``)."""
    root = str(path)
    for name in list(sys.modules):
        top = name.split(".", 1)[0]
        if top not in _COMFY_TOP_LEVEL:
            continue
        module = sys.modules[name]
        origin = getattr(module, "__file__", None)
        locations = list(getattr(module, "__path__", []) or [])
        if origin is None and locations and any(str(p).startswith(root) for p in locations):
            continue
        if origin is not None and str(Path(origin).resolve()).startswith(root):
            continue
        log.warning("dropping module %r (%s) that shadows ComfyUI's", name, origin or locations)
        del sys.modules[name]


_INPROCESS: InProcessComfy | None = None


def import_comfy_inprocess(path: Path, *, output_dir: Path, temp_dir: Path, input_dir: Path | None = None,
                           user_dir: Path | None = None, model_dirs: Mapping[str, list[Path]] | None = None,
                           pack_parent: Path | None = None) -> InProcessComfy:
    """Import ComfyUI from ``path`` into this process on the CPU and load this pack like ComfyUI does.

    * ``comfy.cli_args.args.cpu = True`` is set before ``comfy.model_management`` is first imported.
    * output/temp/input/user directories are created and redirected (``folder_paths.set_*_directory``) so
      nothing is written into the checkout (0.3.64's nodes_video lists the input dir at import);
      ``model_dirs`` are added as extra model folders (e.g. ``{"checkpoints": [...]}``).
    * ``nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)`` registers core and
      comfy_extras nodes (async in both 0.3.64 and 0.8.0); the user's ``custom_nodes/`` are not loaded.
    * when ``pack_parent`` is given and the pack has an ``__init__.py``, a link ``pack_parent/comfyui-scapre``
      is loaded with ``await nodes.load_custom_node(link, ignore=<core ids>, module_parent="custom_nodes")``.

    A process can host one ComfyUI only; a second call with the same path returns the first result.
    """
    global _INPROCESS
    path = Path(path).resolve()
    if _INPROCESS is not None:
        if _INPROCESS.path != path:
            raise RuntimeError(f"ComfyUI from {_INPROCESS.path} is already imported in this process")
        return _INPROCESS

    _drop_foreign_modules(path)
    if str(path) in sys.path:
        sys.path.remove(str(path))
    sys.path.insert(0, str(path))

    import comfy.options  # noqa: F401  (args_parsing stays False: cli_args parses an empty argv)
    from comfy import cli_args

    if "comfy.model_management" in sys.modules and not cli_args.args.cpu:
        log.warning("comfy.model_management was imported before --cpu could be set")
    cli_args.args.cpu = True

    # main.py imports the ``utils`` package before ``nodes``; nodes.py then puts ``<ComfyUI>/comfy`` first on
    # sys.path, after which a fresh ``import utils`` would find comfy/utils.py instead of the package.
    import utils.extra_config  # noqa: F401, I001  (must come first)
    import folder_paths

    for directory in (output_dir, temp_dir, input_dir, user_dir):
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output_dir))
    folder_paths.set_temp_directory(str(temp_dir))
    if input_dir is not None:
        folder_paths.set_input_directory(str(input_dir))
    if user_dir is not None:
        folder_paths.set_user_directory(str(user_dir))
    for kind, dirs in (model_dirs or {}).items():
        for directory in dirs:
            folder_paths.add_model_folder_path(kind, str(directory))

    import nodes

    t0 = time.perf_counter()
    failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if failed:
        log.info("comfy_extras that failed to import (missing optional deps): %s", failed)
    core_ids = frozenset(nodes.NODE_CLASS_MAPPINGS)
    log.info("ComfyUI %s imported in-process: %d core nodes in %.1f s", comfyui_version(path), len(core_ids),
             time.perf_counter() - t0)

    pack_dir, loaded, problem, pack_ids = None, False, pack_problem(), ()
    if pack_parent is not None and problem is None:
        pack_dir = make_pack_link(pack_parent)
        recorder = _RecordWarnings()
        logging.getLogger().addHandler(recorder)
        try:
            loaded = bool(asyncio.run(nodes.load_custom_node(str(pack_dir), ignore=set(core_ids),
                                                             module_parent="custom_nodes")))
        finally:
            logging.getLogger().removeHandler(recorder)
        pack_ids = tuple(sorted(set(nodes.NODE_CLASS_MAPPINGS) - core_ids))
        if not loaded:
            problem = "nodes.load_custom_node failed: " + " | ".join(recorder.messages[-3:])
        log.info("pack loaded=%s, node ids: %s", loaded, pack_ids)
    elif pack_parent is None:
        problem = "pack loading not requested"

    _INPROCESS = InProcessComfy(path=path, version=comfyui_version(path), nodes=nodes,
                                folder_paths=folder_paths, pack_dir=pack_dir, pack_loaded=loaded,
                                pack_problem=problem, pack_node_ids=pack_ids, core_node_ids=core_ids)
    return _INPROCESS


def load_checkpoint(ckpt_path: Path | str) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) from a single-file checkpoint, as ``CheckpointLoaderSimple`` loads it.

    Needs ComfyUI imported in-process (:func:`import_comfy_inprocess`).
    """
    import comfy.sd
    import folder_paths

    out = comfy.sd.load_checkpoint_guess_config(str(ckpt_path), output_vae=True, output_clip=True,
                                               embedding_directory=folder_paths.get_folder_paths("embeddings"))
    return out[0], out[1], out[2]


def free_models() -> None:
    """Unload every model ComfyUI holds in this process and collect garbage (drop your references first)."""
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()


def attn2_kv_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of every UNet cross-attention ``attn2.to_k/to_v`` weight, read through
    ``model.get_key_patches("diffusion_model.")`` (original, unpatched weights)."""
    patches = model.get_key_patches("diffusion_model.")
    return {key: tuple(value[0][0].shape) for key, value in sorted(patches.items())
            if key.endswith((".attn2.to_k.weight", ".attn2.to_v.weight"))}


# --------------------------------------------------------------------------------------------------
# Random-weight checkpoints built with ComfyUI's own classes
# --------------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = 1
"""Bump when the generated content changes, so stale cached files are not reused."""

# Full UNet hyper-parameters (the published architectures; ComfyUI's supported_models classes hold only
# the subset they match on). dtype is added at build time.
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
    "vega": {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "use_spatial_transformer": True, "legacy": False, "num_classes": "sequential",
        "adm_in_channels": 2816,
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_middle": -1,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
}
SUPPORTED_MODEL_CLASS = {"sd15": "SD15", "vega": "Segmind_Vega"}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                "dropout": 0.0}
INIT_STD = 0.02


def checkpoint_name(arch: str, seed: int = 0) -> str:
    """File name of the cached random checkpoint for ``arch`` ("sd15" or "vega")."""
    return f"scapre-random-{arch}-seed{seed}-f{CHECKPOINT_FORMAT}.safetensors"


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names -> dtype/shape/offsets, plus ``__metadata__``)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(size))


def _fill_tensor(key: str, shape: tuple[int, ...], seed: int):
    """Deterministic value for one tensor: 1-D ``*.weight`` (norm gains) = 1, ``*.bias`` = 0, rest N(0, 0.02).

    The generator is seeded from (seed, key), so a value does not depend on which other keys exist.
    """
    import torch

    if key.endswith(".weight") and len(shape) == 1:
        return torch.ones(shape, dtype=torch.float16)
    if key.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.float16)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    return torch.empty(shape, dtype=torch.float16).normal_(0.0, INIT_STD, generator=gen)


def build_random_checkpoint(arch: str, out_path: Path, seed: int = 0) -> dict[str, Any]:
    """Write a random-weight single-file checkpoint for ``arch`` with ComfyUI's own classes (in-process).

    Modules are built on the meta device: ``supported_models.<SD15|Segmind_Vega>(unet_config).get_model({})``,
    ``model_config.clip_target().clip`` (``SD1ClipModel`` / ``SDXLClipModel``) and ``AutoencoderKL``; the key
    layout comes from ``BaseModel.state_dict_for_saving(clip_sd, vae_sd)``, which is what CheckpointSave
    writes. Real (non-meta) tensors it adds, such as ``position_ids``, are kept. Values: :func:`_fill_tensor`,
    fp16, saved with safetensors. Returns a small summary dict.
    """
    import comfy.cli_args
    import torch
    from safetensors.torch import save_file

    comfy.cli_args.args.cpu = True
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    unet_config = dict(UNET_CONFIGS[arch], dtype=torch.float16)
    model_config = getattr(comfy.supported_models, SUPPORTED_MODEL_CLASS[arch])(unet_config)
    with torch.device("meta"):
        model = model_config.get_model({})
        clip_model = model_config.clip_target().clip(device="meta", dtype=torch.float16)
        vae_model = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
    layout = model.state_dict_for_saving(clip_model.state_dict(), vae_model.state_dict())

    tensors = {}
    for key in sorted(layout):
        t = layout[key]
        tensors[key] = _fill_tensor(key, tuple(t.shape), seed) if t.is_meta else t.detach().cpu().contiguous()
    metadata = {"scapre_test_checkpoint": arch, "seed": str(seed), "format": str(CHECKPOINT_FORMAT),
                "clip_class": type(clip_model).__name__, "model_config": type(model_config).__name__}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_path), metadata=metadata)
    n_params = sum(t.numel() for t in tensors.values())
    return {"arch": arch, "tensors": len(tensors), "parameters": n_params, "bytes": out_path.stat().st_size,
            **metadata}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _valid_checkpoint(path: Path, arch: str) -> bool:
    try:
        meta = safetensors_header(path).get("__metadata__", {})
    except (OSError, ValueError, struct.error):
        return False
    return meta.get("scapre_test_checkpoint") == arch and meta.get("format") == str(CHECKPOINT_FORMAT)


def ensure_random_checkpoint(arch: str, *, comfy_path: Path, python: str | None = None, seed: int = 0,
                             directory: Path | None = None, timeout: float = 900) -> Path:
    """Path of the cached random checkpoint for ``arch``, generating it first if needed.

    Generation runs ``python comfy_support.py make-checkpoint`` in a subprocess (ComfyUI's ``python``,
    default :func:`comfyui_python`) under a file lock, writing to a temporary name that is renamed at the
    end, so concurrent test sessions (e.g. two ComfyUI versions) share one file safely.
    """
    if arch not in UNET_CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(UNET_CONFIGS)}")
    directory = directory or cache_dir()
    target = directory / checkpoint_name(arch, seed)
    if _valid_checkpoint(target, arch):
        return target
    with _file_lock(directory / f".{target.name}.lock"):
        if _valid_checkpoint(target, arch):
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        cmd = [python or comfyui_python(), str(Path(__file__).resolve()), "make-checkpoint", arch,
               "--out", str(tmp), "--seed", str(seed), "--comfyui", str(comfy_path)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"checkpoint generation failed ({proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        tmp.chmod(0o644)  # safetensors writes 0600
        os.replace(tmp, target)
        log.info("generated %s in %.1f s (%.2f GiB)", target, time.perf_counter() - t0,
                 target.stat().st_size / 2**30)
    return target


# --------------------------------------------------------------------------------------------------
# ComfyUI server in a subprocess
# --------------------------------------------------------------------------------------------------

class ComfyError(RuntimeError):
    """A prompt was rejected by /prompt, or its execution failed or timed out."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel SIGTERM the server if the test process dies without tearing it down."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_LIVE_SERVERS: set[ComfyServer] = set()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_LIVE_SERVERS):
        server.stop()


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_extra_model_paths(path: Path, folders: Mapping[str, list[Path]]) -> Path:
    """Write an ``--extra-model-paths-config`` YAML adding ``folders`` (e.g. checkpoints, custom_nodes).

    ComfyUI's ``utils/extra_config.py`` (same in 0.3.64 and 0.8.0) calls
    ``folder_paths.add_model_folder_path`` for every key, including ``custom_nodes``, before custom nodes
    are loaded. Values are JSON strings, which YAML reads as double-quoted scalars; several paths are
    newline-separated.
    """
    lines = ["scapre_tests:"]
    for kind, dirs in folders.items():
        lines.append(f"  {kind}: {json.dumps(chr(10).join(str(Path(d).resolve()) for d in dirs))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ComfyServer:
    """``main.py`` run from a ComfyUI checkout in a subprocess, with HTTP helpers.

    Nothing is written into the checkout: ``--base-directory workdir`` moves its models, custom_nodes, output,
    temp, input and user folders there (so a ``custom_nodes/comfyui-scapre`` link in the checkout, which may
    point at another copy of the pack, is not loaded too), and the database lives there; models and this pack
    come in through an ``--extra-model-paths-config`` YAML
    (``checkpoints:`` and ``custom_nodes:`` keys). ``--disable-all-custom-nodes --whitelist-custom-nodes``
    with the folders of ``custom_nodes_dir`` (the pack, fixture nodes) keeps the user's other custom nodes out,
    ``--disable-api-nodes`` the API nodes.
    """

    def __init__(self, comfy_path: Path, workdir: Path, *, python: str | None = None, port: int | None = None,
                 model_dirs: Mapping[str, list[Path]] | None = None, custom_nodes_dir: Path | None = None,
                 extra_args: tuple[str, ...] = (), isolate_custom_nodes: bool = True) -> None:
        self.comfy_path = Path(comfy_path).resolve()
        self.workdir = Path(workdir)
        self.python = python or comfyui_python()
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.output_dir = self.workdir / "output"
        self.input_dir = self.workdir / "input"
        self.user_dir = self.workdir / "user"
        self.log_path = self.workdir / "server.log"
        self.startup_seconds: float | None = None
        self.client_id = uuid.uuid4().hex
        for d in (self.output_dir, self.input_dir, self.user_dir, self.workdir / "custom_nodes"):
            d.mkdir(parents=True, exist_ok=True)  # main.py lists <base>/custom_nodes at start-up
        folders = {kind: list(dirs) for kind, dirs in (model_dirs or {}).items()}
        if custom_nodes_dir is not None:
            folders.setdefault("custom_nodes", []).append(custom_nodes_dir)
        self.extra_paths_yaml = write_extra_model_paths(self.workdir / "extra_model_paths.yaml", folders)
        self.args = [
            "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
            "--base-directory", str(self.workdir),
            "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.workdir), "--user-directory", str(self.user_dir),
            "--database-url", f"sqlite:///{self.workdir / 'comfyui.db'}",
            "--extra-model-paths-config", str(self.extra_paths_yaml), "--disable-api-nodes",
        ]
        if isolate_custom_nodes:
            # only what the test put into its own custom_nodes folder (the pack, and fixture nodes such as the DiT
            # tests' stand-in text encoders): never the user's other custom nodes
            allowed = sorted({PACK_LINK_NAME, *(p.name for p in Path(custom_nodes_dir).iterdir())}
                             if custom_nodes_dir is not None else {PACK_LINK_NAME})
            self.args += ["--disable-all-custom-nodes", "--whitelist-custom-nodes", *allowed]
        self.args += list(extra_args)
        self.process: subprocess.Popen | None = None
        self._log_fh = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> ComfyServer:
        """Start the server and wait until ``GET /object_info`` answers; ComfyError (with the log) if not."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log_fh = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.process = subprocess.Popen([self.python, *self.args], cwd=self.comfy_path, stdout=self._log_fh,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        _LIVE_SERVERS.add(self)
        deadline = t0 + timeout
        while True:
            if self.process.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.process.returncode} during start-up\n"
                                 f"{self.log_tail()}")
            try:
                self._request("GET", "/object_info", timeout=30)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.perf_counter() > deadline:
                    self.stop()
                    raise ComfyError(f"ComfyUI did not answer within {timeout} s\n"
                                     f"{self.log_tail()}") from None
                time.sleep(0.5)
        self.startup_seconds = time.perf_counter() - t0
        log.info("ComfyUI server up at %s in %.1f s", self.base_url, self.startup_seconds)
        return self

    def stop(self, timeout: float = 20) -> None:
        """Terminate the server (SIGTERM to its process group), then kill it if it lingers."""
        proc, self.process = self.process, None
        _LIVE_SERVERS.discard(self)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 12000) -> str:
        text = self.log_text()
        return text[-chars:]

    # ---- HTTP --------------------------------------------------------------------------------------
    def _request(self, method: str, route: str, body: Any = None, timeout: float = 60) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, route: str, timeout: float = 60) -> Any:
        return self._request("GET", route, timeout=timeout)

    def post(self, route: str, body: Any = None, timeout: float = 60) -> Any:
        return self._request("POST", route, body if body is not None else {}, timeout=timeout)

    def object_info(self, node_id: str | None = None) -> dict[str, Any]:
        """``GET /object_info`` (all nodes) or ``/object_info/<node_id>`` (``{node_id: info}``)."""
        return self.get("/object_info" if node_id is None else f"/object_info/{node_id}")

    def queue(self, prompt: Mapping[str, Any], *, extra_data: Mapping[str, Any] | None = None) -> str:
        """``POST /prompt`` an API-format prompt and return its prompt_id (ComfyError if it is rejected)."""
        body = {"prompt": dict(prompt), "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        try:
            answer = self.post("/prompt", body)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise ComfyError(f"/prompt rejected the prompt ({err.code}): {detail}") from None
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The ``/history/<prompt_id>`` entry, or None while the prompt has not finished."""
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300, poll: float = 0.25) -> dict[str, Any]:
        """Poll ``/history/<prompt_id>`` until the prompt has finished; returns the history entry.

        The entry has ``outputs`` (node id -> ui dict, e.g. ``{"images": [...]}``) and ``status``
        (``status_str`` "success" or "error", ``completed``, ``messages``). Raises ComfyError on timeout or
        if the server dies.
        """
        deadline = time.perf_counter() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") is not None:
                return entry
            if not self.alive:
                raise ComfyError(f"ComfyUI died while running {prompt_id}\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise ComfyError(f"prompt {prompt_id} did not finish within {timeout} s")
            time.sleep(poll)

    def run(self, prompt: Mapping[str, Any], timeout: float = 300) -> dict[str, Any]:
        """Queue ``prompt``, wait, and return the history entry; raises ComfyError unless it succeeded."""
        entry = self.wait(self.queue(prompt), timeout=timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise ComfyError(f"prompt failed: {json.dumps(status.get('messages'), indent=1)[-6000:]}")
        return entry

    def output_files(self, entry: Mapping[str, Any], kind: str = "images") -> list[Path]:
        """Paths of the files (``kind``: images, gifs, ...) listed in a history entry's outputs."""
        roots = {"output": self.output_dir, "temp": self.workdir / "temp", "input": self.input_dir}
        paths = []
        for node_out in entry.get("outputs", {}).values():
            for item in node_out.get(kind, []):
                paths.append(roots[item.get("type", "output")] / item.get("subfolder", "") / item["filename"])
        return paths

    def interrupt(self) -> None:
        """``POST /interrupt``: stop the prompt that is running."""
        self.post("/interrupt")

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """``POST /free``: unload models / free cached memory (do this before switching big models)."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def node_ids(self, prefix: str = "") -> list[str]:
        """Sorted ids from ``/object_info`` starting with ``prefix``."""
        return sorted(k for k in self.object_info() if k.startswith(prefix))


# --------------------------------------------------------------------------------------------------
# UI workflow (frontend "nodes"/"links" JSON) -> API prompt
# --------------------------------------------------------------------------------------------------

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_AFTER_GENERATE = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "upload")
VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MODE_MUTED, MODE_BYPASS = 2, 4


def _input_specs(info: Mapping[str, Any]) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of a node's required+optional inputs in object_info order."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {}
    specs = []
    for section in ("required", "optional"):
        section_inputs = inputs.get(section) or {}
        names = order.get(section) or list(section_inputs)
        for name in names:
            spec = section_inputs[name]
            kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
            has_options = isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict)
            options = spec[1] if has_options else {}
            specs.append((name, kind, options))
    return specs


def combo_options(node_info: Mapping[str, Any], input_name: str) -> list[Any]:
    """Choices of a combo input in one ``/object_info`` node entry, in either spelling:
    ``[[choices...], {...}]`` (V1 style, 0.3.64 and most 0.8.0 nodes) or ``["COMBO", {"options": [...]}]``."""
    for name, kind, options in _input_specs(node_info):
        if name == input_name:
            if isinstance(kind, list):
                return list(kind)
            if kind == "COMBO":
                return list(options.get("options", []))
            raise ValueError(f"input {input_name!r} is {kind!r}, not a combo")
    raise KeyError(input_name)


def _is_widget(kind: Any, options: Mapping[str, Any]) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or (isinstance(kind, str) and kind in WIDGET_TYPES)


def _has_control_widget(name: str, kind: Any, options: Mapping[str, Any]) -> bool:
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return kind == "INT" and name in ("seed", "noise_seed")


def ui_workflow_to_api(workflow: Mapping[str, Any],
                       object_info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Convert a frontend-saved workflow (``{"nodes": [...], "links": [...]}``) to the API prompt format.

    For each node, the widget inputs of ``object_info[type]`` (required then optional, in ``input_order``
    when present) take ``widgets_values`` in order; an INT widget with ``control_after_generate`` (or named
    seed/noise_seed) is followed by its control value ("randomize", ...), and a combo with an upload flag by
    the upload widget's value, which are skipped; widgets past the end of ``widgets_values`` (added to the node
    after the workflow was saved) take the schema's default, as the frontend gives them. A dict
    ``widgets_values`` maps by name. Linked inputs
    become ``[source_node_id_str, output_index]``. Note/MarkdownNote are dropped, Reroute nodes are
    followed to their source, PrimitiveNode values are taken from the target's own widget value, muted
    nodes (mode 2) are dropped with their links, and bypassed nodes (mode 4) pass the first input of the
    same type through. Subgraphs and groups-as-nodes are not supported (unknown types raise ValueError).
    """
    nodes_by_id = {int(n["id"]): n for n in workflow["nodes"]}
    # link id -> (from_node, from_slot, type); links are [id, from, slot, to, slot, type] (schema 0.4)
    # or {"id", "origin_id", "origin_slot", "target_id", "target_slot", "type"} (schema 1)
    link_src = {}
    for lk in workflow.get("links", []):
        if isinstance(lk, Mapping):
            link_src[int(lk["id"])] = (int(lk["origin_id"]), int(lk["origin_slot"]), lk.get("type"))
        else:
            link_src[int(lk[0])] = (int(lk[1]), int(lk[2]), lk[5] if len(lk) > 5 else None)

    unknown = sorted({n["type"] for n in workflow["nodes"]
                      if n["type"] not in object_info and n["type"] not in VIRTUAL_NODE_TYPES})
    if unknown:
        raise ValueError(f"node types not in object_info (pack not loaded, or a subgraph?): {unknown}")

    def resolve(link_id: int, seen: frozenset[int] = frozenset()) -> list | None:
        """Follow reroutes and bypassed nodes back to a real output: [node_id_str, slot] or None."""
        if link_id in seen:
            raise ValueError(f"link cycle through link {link_id}")
        src_id, slot, link_type = link_src[link_id]
        src = nodes_by_id[src_id]
        mode = src.get("mode", 0)
        if src["type"] == "Reroute":
            upstream = next((i.get("link") for i in src.get("inputs", []) if i.get("link") is not None), None)
            return None if upstream is None else resolve(int(upstream), seen | {link_id})
        if src["type"] == "PrimitiveNode" or mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASS:
            out_type = (src.get("outputs") or [{}])[slot].get("type", link_type)
            for inp in src.get("inputs", []):
                if inp.get("link") is not None and inp.get("type") == out_type:
                    return resolve(int(inp["link"]), seen | {link_id})
            return None
        return [str(src_id), slot]

    prompt: dict[str, dict[str, Any]] = {}
    for node_id, node in sorted(nodes_by_id.items()):
        if node["type"] in VIRTUAL_NODE_TYPES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values") or []
        inputs: dict[str, Any] = {}
        pos = 0
        for name, kind, options in _input_specs(info):
            widget = _is_widget(kind, options)
            widget_value, has_value = None, False
            if widget and isinstance(values, dict):
                has_value, widget_value = name in values, values.get(name)
            elif widget and pos < len(values):
                widget_value, has_value = values[pos], True
                pos += 1
                if _has_control_widget(name, kind, options) and pos < len(values) \
                        and values[pos] in CONTROL_AFTER_GENERATE:
                    pos += 1
                if any(options.get(flag) for flag in UPLOAD_FLAGS) and pos < len(values) \
                        and values[pos] in ("image", "video", "audio"):
                    pos += 1
            elif widget and "default" in options:
                # a widget added after the workflow was saved: the frontend gives it the schema's default
                widget_value, has_value = options["default"], True
            if name in linked:
                source = resolve(int(linked[name]))
                if source is not None:
                    inputs[name] = source
                    continue
            if has_value:
                inputs[name] = widget_value
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node_id)] = entry
    return prompt


# --------------------------------------------------------------------------------------------------
# Command line: checkpoint generation subprocess, and a manual server for poking around
# --------------------------------------------------------------------------------------------------

def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    make = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint with ComfyUI's classes")
    make.add_argument("arch", choices=sorted(UNET_CONFIGS))
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--comfyui", type=Path, default=None,
                      help=f"ComfyUI checkout (default ${COMFYUI_PATH_ENV})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    path = (args.comfyui or comfyui_path()).resolve()
    _drop_foreign_modules(path)
    sys.path.insert(0, str(path))
    t0 = time.perf_counter()
    summary = build_random_checkpoint(args.arch, args.out, seed=args.seed)
    log.info("built %s in %.1f s: %s", args.out, time.perf_counter() - t0, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
