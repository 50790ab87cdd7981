"""One version: pyproject.toml's [project] version, read by the package and recorded in the CHANGELOG."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfyui_scapre.scapre_core import __version__
from comfyui_scapre.scapre_core._version import read_version

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_reports_pyprojects_version():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["name"] == "comfyui-scapre"
    assert __version__ == project["version"]


def test_the_changelog_has_a_section_for_this_version():
    assert f"## {__version__} " in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_another_projects_pyproject_is_not_read(tmp_path):
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "something-else"\nversion = "9.9.9"\n', encoding="utf-8")
    assert read_version(other) is None
    other.write_text('[tool.x]\nversion = "1.0.0"\n[project]\nname = "comfyui-scapre"\nversion = "1.2.3"\n',
                     encoding="utf-8")
    assert read_version(other) == "1.2.3"
    assert read_version(tmp_path / "missing.toml") is None
