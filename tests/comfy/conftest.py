"""Fixtures for tests against a real ComfyUI (tier 2). Everything here skips without ``COMFYUI_PATH``, except
with ``CI=true``, where every skip in this folder is reported as a failure (CI must run them all).

Run (from the repo root, with the ComfyUI checkout's own python so in-process imports work)::

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest -q tests/comfy

This folder deliberately has no ``__init__.py``: with one, pytest's default (prepend) import mode would
import it as a top-level package named ``comfy`` and shadow ComfyUI's ``comfy`` namespace package.
Helpers live in ``comfy_support.py`` (standard library only at import time).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent

try:  # importable by name in prepend/append mode (this folder is put on sys.path)
    import comfy_support
except ImportError:  # --import-mode=importlib: load it by path under the same name
    _spec = importlib.util.spec_from_file_location("comfy_support", _HERE / "comfy_support.py")
    comfy_support = importlib.util.module_from_spec(_spec)
    sys.modules["comfy_support"] = comfy_support
    _spec.loader.exec_module(comfy_support)

log = logging.getLogger("scapre.comfy_tests")

_SKIP_REASON = comfy_support.comfyui_path_problem()
_SERVERS: list[comfy_support.ComfyServer] = []


#: Fixtures that load the SDXL-family checkpoint (about 6.6 GB of RAM in float32 on the CPU).
SDXL_FIXTURES = ("vega_loaded", "vega_ckpt_path")
#: Fixtures that start ComfyUI servers of their own: the session's server (HTTP, frontend; it loads SD1.5 in float32
#: and saves checkpoints), the two of ``evaluate`` (SD1.5 each) and the DiT examples' server (``test_dit_http.py``).
SERVER_FIXTURES = ("eval_world", "dit_server", "comfy_server")


def uses_sdxl(item: pytest.Item) -> bool:
    """Whether a test loads the SDXL-family checkpoint: it names a Vega fixture, or is parametrized with
    ``arch="vega"`` (its fixture is then requested inside the test)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(f in getattr(item, "fixturenames", ()) for f in SDXL_FIXTURES) or params.get("arch") == "vega"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that load the SDXL-family checkpoint ``sdxl`` and those that start servers of their own
    ``servers`` (``tests/run_all.sh`` runs the ``sdxl`` tests, and the ``servers`` and ``cli`` tests, in pytest
    processes of their own, so that the in-process SD1.5 model, the SDXL-family model, the servers' models and the
    command line's are never in memory together; ``cli`` is set in the test modules), and skip
    every test in this folder at collection when COMFYUI_PATH is unset or not a ComfyUI checkout."""
    for item in items:
        if _in_this_folder(item) and uses_sdxl(item):
            item.add_marker(pytest.mark.sdxl)
        if _in_this_folder(item) and any(f in getattr(item, "fixturenames", ()) for f in SERVER_FIXTURES):
            item.add_marker(pytest.mark.servers)
    if _SKIP_REASON is None:
        return
    marker = pytest.mark.skip(reason=_SKIP_REASON)
    for item in items:
        if _in_this_folder(item):
            item.add_marker(marker)


def _in_this_folder(item: pytest.Item) -> bool:
    path = Path(item.path).resolve()
    return _HERE == path.parent or _HERE in path.parents


def skips_fail() -> bool:
    """In CI (``CI=true``) a ComfyUI test must run: a skip here (no host, no Chromium, ...) is a failure."""
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the ComfyUI server log tail to the report of a failing test that used ``comfy_server``; with
    ``CI=true``, turn a skip of a test in this folder into a failure that keeps the skip's reason."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and skips_fail() and _in_this_folder(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped, but CI=true requires every ComfyUI test to run: {reason}"
    if report.failed and "comfy_server" in getattr(item, "fixturenames", ()) and _SERVERS:
        report.sections.append(("ComfyUI server log (tail)", _SERVERS[-1].log_tail()))


# ------------------------------------------------------------------------------------------------
# Locations
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def comfy_path() -> Path:
    """The ComfyUI checkout from ``COMFYUI_PATH`` (skips when unset or lacking main.py / comfy/)."""
    problem = comfy_support.comfyui_path_problem()
    if problem:
        pytest.skip(problem)
    return comfy_support.comfyui_path()


@pytest.fixture(scope="session")
def comfy_python() -> str:
    """Python for the server and checkpoint subprocesses: ``COMFYUI_PYTHON`` or this interpreter."""
    return comfy_support.comfyui_python()


@pytest.fixture(scope="session")
def comfy_version(comfy_path: Path) -> str:
    """ComfyUI's version string, e.g. "0.8.0"."""
    return comfy_support.comfyui_version(comfy_path)


@pytest.fixture(scope="session")
def scapre_test_cache() -> Path:
    """Cache for generated checkpoints: ``$SCAPRE_TEST_CACHE`` or ``~/.cache/scapre-tests`` (not the repo)."""
    return comfy_support.cache_dir()


@pytest.fixture(scope="session")
def comfy_custom_nodes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A custom_nodes folder holding only ``comfyui-scapre`` -> repo root (the pack as ComfyUI sees it)."""
    parent = tmp_path_factory.mktemp("custom_nodes")
    comfy_support.make_pack_link(parent)
    return parent


# ------------------------------------------------------------------------------------------------
# Random-weight checkpoints (generated once, cached outside the repo)
# ------------------------------------------------------------------------------------------------

def _checkpoint(arch: str, comfy_path: Path, comfy_python: str, cache: Path) -> Path:
    t0 = time.perf_counter()
    path = comfy_support.ensure_random_checkpoint(arch, comfy_path=comfy_path, python=comfy_python,
                                                  directory=cache)
    log.info("%s checkpoint ready in %.1f s: %s", arch, time.perf_counter() - t0, path)
    return path


@pytest.fixture(scope="session")
def sd15_ckpt_path(comfy_path: Path, comfy_python: str, scapre_test_cache: Path) -> Path:
    """Random-weight SD1.5 single-file checkpoint (fp16, about 2.0 GiB), in the checkpoints search path."""
    return _checkpoint("sd15", comfy_path, comfy_python, scapre_test_cache)


@pytest.fixture(scope="session")
def vega_ckpt_path(comfy_path: Path, comfy_python: str, scapre_test_cache: Path) -> Path:
    """Random-weight Segmind-Vega (SDXL family) checkpoint (fp16, about 3.1 GiB), in the checkpoints path."""
    return _checkpoint("vega", comfy_path, comfy_python, scapre_test_cache)


# ------------------------------------------------------------------------------------------------
# In-process ComfyUI
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def comfy_inprocess(comfy_path: Path, scapre_test_cache: Path, comfy_custom_nodes_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> comfy_support.InProcessComfy:
    """ComfyUI imported into this process (CPU), core + comfy_extras nodes registered, and this pack loaded
    through ``nodes.load_custom_node`` from ``<tmp>/comfyui-scapre``. Output/temp dirs live in a pytest tmp
    dir; the checkpoint cache is a ``checkpoints`` folder. Skips when this python cannot import ComfyUI."""
    missing = [m for m in ("torch", "safetensors", "aiohttp", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"this python ({sys.executable}) lacks ComfyUI's requirements {missing}; "
                    "run pytest with the ComfyUI venv's python")
    work = tmp_path_factory.mktemp("comfy_inprocess")
    return comfy_support.import_comfy_inprocess(
        comfy_path, output_dir=work / "output", temp_dir=work / "temp", input_dir=work / "input",
        user_dir=work / "user", model_dirs={"checkpoints": [scapre_test_cache]},
        pack_parent=comfy_custom_nodes_dir)


@pytest.fixture(scope="session")
def scapre_nodes(comfy_inprocess: comfy_support.InProcessComfy) -> comfy_support.InProcessComfy:
    """``comfy_inprocess`` with the pack's nodes registered; fails (not skips) if the pack did not load."""
    if not comfy_inprocess.pack_loaded or not comfy_inprocess.pack_node_ids:
        pytest.fail(f"the ScaPre pack did not register nodes in-process: {comfy_inprocess.pack_problem}")
    return comfy_inprocess


@pytest.fixture(scope="session")
def sd15_loaded(comfy_inprocess: comfy_support.InProcessComfy, sd15_ckpt_path: Path):
    """(MODEL, CLIP, VAE) of the SD1.5 fixture, loaded once per session as CheckpointLoaderSimple does.

    Always ``clone()`` the MODEL/CLIP before patching; the session shares these objects."""
    t0 = time.perf_counter()
    loaded = comfy_support.load_checkpoint(sd15_ckpt_path)
    log.info("SD1.5 fixture loaded in-process in %.1f s", time.perf_counter() - t0)
    yield loaded
    del loaded
    comfy_support.free_models()


@pytest.fixture
def sd15_own(comfy_inprocess: comfy_support.InProcessComfy, sd15_ckpt_path: Path):
    """(MODEL, CLIP, VAE) of the SD1.5 fixture loaded for one test and freed after it, for the tests that first run
    a command that loads the checkpoint itself (marker ``cli``): request it after the command with
    ``request.getfixturevalue``, so that the command's copy and this one are never in memory together."""
    loaded = comfy_support.load_checkpoint(sd15_ckpt_path)
    yield loaded
    del loaded
    comfy_support.free_models()


@pytest.fixture(scope="module")
def vega_loaded(comfy_inprocess: comfy_support.InProcessComfy, vega_ckpt_path: Path):
    """(MODEL, CLIP, VAE) of the Segmind-Vega fixture; module-scoped (about 6 GB of RAM while loaded)."""
    t0 = time.perf_counter()
    loaded = comfy_support.load_checkpoint(vega_ckpt_path)
    log.info("Vega fixture loaded in-process in %.1f s", time.perf_counter() - t0)
    yield loaded
    del loaded
    comfy_support.free_models()


# ------------------------------------------------------------------------------------------------
# ComfyUI server
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def comfy_server(comfy_path: Path, comfy_python: str, scapre_test_cache: Path, comfy_custom_nodes_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory):
    """A ComfyUI server (``main.py --cpu``) on a free 127.0.0.1 port, started once per session.

    The pack is loaded from ``comfy_custom_nodes_dir`` and checkpoints from the test cache, both through an
    ``--extra-model-paths-config`` YAML; output/input/user/temp dirs and the database are in a tmp dir, so
    the checkout is not modified. Yields a :class:`comfy_support.ComfyServer` (``base_url``, ``queue``,
    ``wait``, ``run``, ``object_info``, ``interrupt``, ``free``, ``output_files``, ``log_tail``)."""
    server = comfy_support.ComfyServer(comfy_path, tmp_path_factory.mktemp("comfy_server"),
                                       python=comfy_python, model_dirs={"checkpoints": [scapre_test_cache]},
                                       custom_nodes_dir=comfy_custom_nodes_dir)
    try:
        server.start(timeout=180)
    except comfy_support.ComfyError as err:
        pytest.fail(str(err))
    _SERVERS.append(server)
    yield server
    _SERVERS.remove(server)
    died = not server.alive
    server.stop()
    if died:
        log.error("ComfyUI server had died before teardown; log tail:\n%s", server.log_tail())
