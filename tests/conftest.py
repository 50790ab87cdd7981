"""Import the pack as a package, as ComfyUI does: its folder is loaded by path under a package name
(here ``comfyui_scapre``), so tests write ``from comfyui_scapre.scapre_core import ...`` and nothing puts the
repo root on ``sys.path`` (where the pack's ``nodes/`` would shadow ComfyUI's own ``nodes`` module)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_scapre"

if PACKAGE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py",
                                                   submodule_search_locations=[str(ROOT)])
    sys.modules[PACKAGE] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[PACKAGE])
