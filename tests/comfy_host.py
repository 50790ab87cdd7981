#!/usr/bin/env python3
"""Build (or reuse) a CPU-only ComfyUI test host for this pack, from a ComfyUI source directory or tarball.

Usage (from anywhere; standard library only, any Python >= 3.10 with ``venv``)::

    python3 tests/comfy_host.py /path/to/ComfyUI                 # your own checkout (git or plain)
    python3 tests/comfy_host.py ../shared/comfyui/comfyui-0.8.0.tar.gz

The last line printed is the host directory ``$SCAPRE_HOST_DIR/<version>/`` (default
``~/.cache/scapre-hosts/<version>/``), which holds:

* ``ComfyUI/``  a copy of the source (never the original: the pack is linked into its ``custom_nodes/``),
* ``venv/``     its Python: ``torch==2.13.0`` (CPU) and ``torchvision==0.28.0`` pinned in the same pip call as
  ComfyUI's ``requirements.txt`` (without its torch/torchvision/torchaudio lines), ``requests``, this pack's
  ``requirements.txt``, ``pytest``, ``playwright`` and the ``[eval]`` extra (``nudenet``,
  ``efficientnet-lite-pytorch``); torchvision's unguarded ``register_fake`` decorators
  are guarded by ``torchvision.extension._has_ops()`` so that it imports beside CPU torch,
* ``READY``     written last, recording what was built (source key, environment key).

Run the tests against it with::

    COMFYUI_PATH=<host>/ComfyUI <host>/venv/bin/python -m pytest -q tests/comfy

It is idempotent: a second call with the same source returns at once. The cache key is the tarball's
SHA-256, or for a directory its git commit plus uncommitted changes (a plain directory: every file's path,
size and mtime); a changed source replaces ``ComfyUI/``, and changed requirements (or a change of the recipe
below) rebuild ``venv/``. pip's own download cache is shared between hosts. One build per host at a time
(a lock file beside it). Pip is never shown a bare ``torch``: the pins always come in the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "comfyui-scapre"  # tests/comfy/comfy_support.py PACK_LINK_NAME
HOST_DIR_ENV = "SCAPRE_HOST_DIR"

TORCH_PINS = ("torch==2.13.0", "torchvision==0.28.0")
# requests: imported by ComfyUI but not listed; matplotlib, nudenet, efficientnet-lite-pytorch: the pack's optional
# parts (report figure, classifier measures), so that their tests run in the host instead of skipping; gguf: what
# ComfyUI-GGUF (../shared/comfyui-packs/) needs, for the GGUF tests
EXTRA_PACKAGES = ("requests", "pytest", "playwright", "matplotlib", "nudenet", "efficientnet-lite-pytorch", "gguf")
EXCLUDED_REQUIREMENTS = ("torch", "torchvision", "torchaudio")
RECIPE = "3"  # bump when the environment recipe changes, so that cached venvs rebuild

# Directories that hold user data, not source, in a ComfyUI checkout; left out of the key and the copy.
NON_SOURCE = {".git", "__pycache__", "custom_nodes", "models", "output", "input", "temp", "user", ".venv", "venv"}

_GUARD_MARK = "# scapre-host: guarded"
_UNGUARDED = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)\s*$', re.MULTILINE)


def say(message: str) -> None:
    print(f"[comfy_host] {message}", file=sys.stderr, flush=True)


def default_root() -> Path:
    raw = os.environ.get(HOST_DIR_ENV)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "scapre-hosts"


# ------------------------------------------------------------------------------------------------
# The source: a tarball or a directory
# ------------------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tar_root(tar: tarfile.TarFile) -> str:
    """The member folder holding ``main.py`` (e.g. ``ComfyUI``; "" when at the top)."""
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.isfile() and parts and parts[-1] == "main.py" and len(parts) <= 2:
            return "/".join(parts[:-1])
    raise SystemExit(f"no main.py at the top of the tarball {tar.name}: not a ComfyUI source")


def _version_text(text: str) -> str:
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    return match.group(1) if match else "unknown"


def _git(path: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout


def _dir_key(path: Path) -> str:
    top = _git(path, "rev-parse", "--show-toplevel")
    if top is not None and Path(top.strip()).resolve() == path.resolve():
        commit = (_git(path, "rev-parse", "HEAD") or "").strip()
        dirty = (_git(path, "status", "--porcelain", "--untracked-files=normal", "--", ".",
                      *(f":(exclude){d}" for d in sorted(NON_SOURCE))) or "")
        diff = _git(path, "diff", "HEAD") or ""
        if not dirty.strip():
            return f"git:{commit}"
        return f"git:{commit}+{hashlib.sha256((dirty + diff).encode()).hexdigest()[:16]}"
    digest = hashlib.sha256()
    for file in sorted(_source_files(path)):
        stat = (path / file).stat()
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"files:{digest.hexdigest()}"


def _source_files(path: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(path):
        rel = Path(dirpath).relative_to(path)
        dirnames[:] = [d for d in dirnames if not (d in NON_SOURCE and (rel == Path(".") or d == "__pycache__"))]
        for name in filenames:
            yield str(rel / name)


class Source:
    """A ComfyUI source: ``kind`` ("tarball" or "dir"), ``key`` (cache key) and ``version``."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        if self.path.is_file():
            self.kind = "tarball"
            self.key = "sha256:" + _sha256_file(self.path)
            with tarfile.open(self.path) as tar:
                self.tar_root = _tar_root(tar)
                member = tar.extractfile(f"{self.tar_root}/comfyui_version.py".lstrip("/"))
                self.version = _version_text(member.read().decode()) if member else "unknown"
        elif self.path.is_dir():
            if not ((self.path / "main.py").is_file() and (self.path / "comfy").is_dir()):
                raise SystemExit(f"{self.path} is not a ComfyUI checkout (no main.py and comfy/)")
            self.kind = "dir"
            self.key = _dir_key(self.path)
            version_file = self.path / "comfyui_version.py"
            self.version = _version_text(version_file.read_text()) if version_file.is_file() else "unknown"
        else:
            raise SystemExit(f"no such ComfyUI source: {path}")

    def export(self, target: Path) -> None:
        """Write the source tree into ``target`` (which must not exist)."""
        if self.kind == "tarball":
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
                with tarfile.open(self.path) as tar:
                    try:
                        tar.extractall(tmp, filter="data")
                    except TypeError:  # Python < 3.10.12 has no extraction filters
                        tar.extractall(tmp)  # our own pinned snapshot
                Path(tmp, self.tar_root).rename(target)
        else:
            ignore = shutil.ignore_patterns(*NON_SOURCE)
            shutil.copytree(self.path, target, symlinks=True, ignore=ignore)
        (target / "custom_nodes").mkdir(exist_ok=True)


# ------------------------------------------------------------------------------------------------
# The environment
# ------------------------------------------------------------------------------------------------

def filtered_requirements(text: str) -> str:
    """ComfyUI's requirements.txt without torch, torchvision and torchaudio (those are pinned instead)."""
    kept = []
    for line in text.splitlines():
        name = re.split(r"[\s<>=!~;\[@]", line.strip(), maxsplit=1)[0].lower()
        if name in EXCLUDED_REQUIREMENTS:
            kept.append(f"# (pinned by comfy_host.py) {line}")
        else:
            kept.append(line)
    return "\n".join(kept) + "\n"


def env_key(comfy_requirements: str, base_python: str) -> str:
    pack_requirements = (REPO_ROOT / "requirements.txt").read_text()
    py_version = subprocess.run([base_python, "-c", "import sys; print(sys.version)"], capture_output=True,
                                text=True, check=True).stdout.strip()
    blob = json.dumps([RECIPE, TORCH_PINS, EXTRA_PACKAGES, comfy_requirements, pack_requirements, py_version])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def build_venv(venv: Path, requirements_file: Path, base_python: str) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    run([base_python, "-m", "venv", str(venv)])
    py = str(venv_python(venv))
    # Everything in ONE pip command, so that the resolver never sees an unpinned torch (a bare "torch" would
    # pull a multi-GB CUDA build); pip's download cache (~/.cache/pip) is shared between hosts.
    run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *TORCH_PINS,
         "-r", str(requirements_file), "-r", str(REPO_ROOT / "requirements.txt"), *EXTRA_PACKAGES])


def patch_torchvision(venv: Path) -> Path:
    """Guard torchvision's unguarded ``register_fake`` decorators with ``torchvision.extension._has_ops()``.

    The torchvision 0.28.0 wheel here is CUDA-built; beside CPU torch its C++ ops do not load, and the two
    unguarded decorators then fail ``import torchvision`` ("operator torchvision::nms does not exist").
    torchvision guards its other meta registrations the same way. Idempotent."""
    find = "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])"
    out = subprocess.run([str(venv_python(venv)), "-c", find], capture_output=True, text=True,
                         check=True).stdout.strip()
    target = Path(out) / "_meta_registrations.py"
    text = target.read_text()
    patched = _UNGUARDED.sub(
        lambda m: (f"@(torch.library.register_fake({m.group(1)}) if torchvision.extension._has_ops() "
                   f"else (lambda fn: fn))  {_GUARD_MARK}"), text)
    if patched != text:
        target.write_text(patched)
        for cached in (target.parent / "__pycache__").glob("_meta_registrations.*.pyc"):
            cached.unlink()
        say(f"guarded {len(_UNGUARDED.findall(text))} register_fake decorator(s) in {target}")
    return target


def check_venv(venv: Path) -> None:
    run([str(venv_python(venv)), "-c",
         "import torch, torchvision, safetensors, aiohttp, yaml, requests, pytest, playwright; "
         "assert not torch.version.cuda, 'a CUDA torch was installed'; "
         "print('torch', torch.__version__, 'torchvision', torchvision.__version__)"])


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------

def run(cmd: list[str]) -> None:
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def link_pack(comfy: Path, relink: bool) -> Path:
    """``ComfyUI/custom_nodes/comfyui-scapre`` -> this repo (kept when it already points at a pack)."""
    link = comfy / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() and link.exists() and not relink:
        if link.resolve() != REPO_ROOT:
            say(f"{link} points at {link.resolve()} (kept; --relink points it here)")
        return link
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise SystemExit(f"{link} exists and is not a link; remove it")
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def read_ready(host: Path) -> dict:
    try:
        return json.loads((host / "READY").read_text())
    except (OSError, ValueError):
        return {}


def build(source: Source, root: Path, name: str | None, base_python: str, relink: bool) -> Path:
    host = root / (name or source.version)
    with locked(root / f".{host.name}.lock"):
        ready = read_ready(host)
        comfy, venv = host / "ComfyUI", host / "venv"
        t0 = time.perf_counter()
        if ready.get("source_key") == source.key and comfy.is_dir():
            comfy_requirements = filtered_requirements((comfy / "requirements.txt").read_text())
            key = env_key(comfy_requirements, base_python)
            if ready.get("env_key") == key and venv_python(venv).exists():
                link_pack(comfy, relink)
                say(f"ComfyUI {source.version} host is ready (cached): {host}")
                return host
        (host / "READY").unlink(missing_ok=True)
        host.mkdir(parents=True, exist_ok=True)
        if ready.get("source_key") != source.key or not comfy.is_dir():
            say(f"exporting ComfyUI {source.version} from {source.path} ({source.key})")
            if comfy.exists():
                shutil.rmtree(comfy)
            source.export(comfy)
        comfy_requirements = filtered_requirements((comfy / "requirements.txt").read_text())
        key = env_key(comfy_requirements, base_python)
        requirements_file = host / "requirements-host.txt"
        requirements_file.write_text(comfy_requirements)
        if ready.get("env_key") != key or not venv_python(venv).exists():
            say(f"building {venv} (pip; a few minutes on a cold pip cache)")
            build_venv(venv, requirements_file, base_python)
        patch_torchvision(venv)
        check_venv(venv)
        link_pack(comfy, relink)
        ready = {"version": source.version, "source": str(source.path), "source_key": source.key, "env_key": key,
                 "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "seconds": round(time.perf_counter() - t0, 1)}
        tmp = host / "READY.tmp"
        tmp.write_text(json.dumps(ready, indent=2) + "\n")
        tmp.rename(host / "READY")
        say(f"ComfyUI {source.version} host built in {ready['seconds']} s: {host}")
        return host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a ComfyUI source directory or a .tar.gz of one")
    parser.add_argument("--root", type=Path, default=default_root(),
                        help=f"where hosts are cached (default ${HOST_DIR_ENV} or ~/.cache/scapre-hosts)")
    parser.add_argument("--name", help="host folder name (default: the ComfyUI version)")
    parser.add_argument("--python", default=sys.executable, help="base Python for the venv (default: this one)")
    parser.add_argument("--relink", action="store_true",
                        help="point the host's custom_nodes/comfyui-scapre at this repo even if it points elsewhere")
    args = parser.parse_args(argv)
    host = build(Source(args.source), args.root.expanduser().resolve(), args.name, args.python, args.relink)
    print(host)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
