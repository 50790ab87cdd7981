"""Import the pack as a package named ``comfyui_scapre`` (what ComfyUI does under a path-derived
name), so that the command line and the modules it shares with the nodes keep their relative imports.

The pack's folder is taken off ``sys.path``: its ``nodes/`` would otherwise shadow ComfyUI's own
``nodes`` module. The pack's ``__init__.py`` (node registration) is not run."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import ModuleType

PACK_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_scapre"


def _is_pack_root(entry: str) -> bool:
    try:
        return Path(entry or ".").resolve() == PACK_ROOT
    except OSError:
        return False


def package() -> str:
    """Register the pack under :data:`PACKAGE` (once) and return that name."""
    sys.path[:] = [p for p in sys.path if not _is_pack_root(p)]
    if PACKAGE not in sys.modules:
        pack = types.ModuleType(PACKAGE, "comfyui-scapre (loaded by the command line)")
        pack.__path__ = [str(PACK_ROOT)]
        sys.modules[PACKAGE] = pack
    return PACKAGE


def load(module: str) -> ModuleType:
    """``load("scapre.cli")`` -> the pack's ``scapre/cli.py`` with working relative imports."""
    return importlib.import_module(f"{package()}.{module}")
