"""Make the pack's pure core importable as ``scapre_core`` without putting the repo root on
sys.path (the root also holds ``nodes/``, which would shadow ComfyUI's own ``nodes`` module)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if "scapre_core" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "scapre_core", ROOT / "scapre_core" / "__init__.py", submodule_search_locations=[str(ROOT / "scapre_core")]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["scapre_core"] = _module
    _spec.loader.exec_module(_module)
