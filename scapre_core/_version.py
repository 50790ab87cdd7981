"""The pack's version, from its one source: ``version`` in the ``[project]`` table of ``pyproject.toml``
(what the ComfyUI registry reads). In the pack's folder (a checkout or a ComfyUI install) that file sits
beside this package; a ``pip install`` of the library carries it in its metadata instead."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "comfyui-scapre"


def read_version(pyproject: Path) -> str | None:
    """``[project] version`` of ``pyproject`` when that table names this distribution, else None."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    table = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    if table is None or not re.search(rf'^name\s*=\s*"{DISTRIBUTION}"\s*$', table.group(1), re.MULTILINE):
        return None
    found = re.search(r'^version\s*=\s*"([^"]+)"\s*$', table.group(1), re.MULTILINE)
    return found.group(1) if found else None


def _version() -> str:
    found = read_version(Path(__file__).resolve().parents[1] / "pyproject.toml")
    if found:
        return found
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()
