"""The pack for the benchmarks, loaded as ComfyUI loads it: its folder imported by path as the package
``comfyui_scapre`` (from this checkout, or from ``$SCAPRE_ROOT`` to measure another one), so that the repo root,
whose ``nodes/`` would shadow ComfyUI's own ``nodes`` module, never goes on ``sys.path``. Its pure-torch core is
also importable as ``scapre_core``, the name a user of the library has after ``pip install .``. Importing this
module is enough."""

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("SCAPRE_ROOT") or Path(__file__).resolve().parents[1])

if "comfyui_scapre" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("comfyui_scapre", ROOT / "__init__.py",
                                                   submodule_search_locations=[str(ROOT)])
    sys.modules["comfyui_scapre"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["comfyui_scapre"])
sys.modules.setdefault("scapre_core", importlib.import_module("comfyui_scapre.scapre_core"))
