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


def _alias_submodules() -> None:
    """``scapre_core.X`` is the very module ``comfyui_scapre.scapre_core.X``: every submodule is imported once under
    the pack's name and registered under both. Without this, ``from scapre_core.report import ...`` would load a
    second copy of ``report`` (and of what it imports), and Python would rebind the package's ``solve``, ``config``
    ... attributes to the copies: two ``ScaPreConfig`` classes, and a monkeypatch through one copy that the edit,
    running on the other, never sees."""
    import pkgutil

    package = sys.modules["comfyui_scapre.scapre_core"]
    if sys.modules["scapre_core"] is not package:
        return  # another scapre_core (an installed library) was imported first: leave it alone
    for info in pkgutil.walk_packages(package.__path__, prefix="comfyui_scapre.scapre_core."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency missing: that module cannot be used by either name
            continue
        sys.modules.setdefault(info.name.replace("comfyui_scapre.", "", 1), module)


_alias_submodules()
