"""Shared by the command-line tests (``test_cli_comfy.py``: evaluate; ``test_cli_erase_comfy.py``: erase): the
pack's folder as ComfyUI users clone it, the command run as ``python -m <that folder>``, and the nodes' edit to
compare with."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import comfy_support

log = logging.getLogger("scapre.comfy_tests")

CONCEPTS = "cat\ngolden retriever\n"


def _custom_nodes() -> Path:
    """A ``custom_nodes`` folder holding the pack (a link named as ComfyUI users clone it): the command's cwd."""
    folder = Path(tempfile.gettempdir()) / f"scapre-cli-custom-nodes-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    comfy_support.make_pack_link(folder)
    return folder


CUSTOM_NODES = _custom_nodes()
MODULE = comfy_support.PACK_LINK_NAME  # python -m <the pack's folder name>


def _env(comfy_path: Path) -> dict:
    return dict(os.environ, COMFYUI_PATH=str(comfy_path), PYTHONUNBUFFERED="1")


def _cli(comfy_path: Path, python: str, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    result = subprocess.run([python, "-m", MODULE, *args], cwd=CUSTOM_NODES, env=_env(comfy_path),
                            capture_output=True, text=True, timeout=timeout)
    log.info("python -m comfyui-scapre %s: exit %d in %.1f s", args[0], result.returncode, time.perf_counter() - t0)
    return result


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child: SIGINT raises KeyboardInterrupt, as at a terminal. A test suite started in the background
    by a shell (``cmd &``) inherits SIGINT ignored, and a Ctrl-C test would then see the command run on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _core(c):
    import sys

    return sys.modules[c.pack_module().__name__ + ".scapre_core"]


def _node_edit(c, model, clip, preset="custom", settings=None, **encode):
    """The nodes' edit: ScaPre Concept Encode + ScaPre Erase (preset, or ScaPre Settings), as a workflow does."""
    args = dict(concept_type="object", expand_templates=False, templates="", guide="", preserve="", probes="")
    args.update(encode)
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts=CONCEPTS, **args)
    extra = {}
    if settings is not None:
        (extra["settings"],) = c.run_node("ScaPreSettings", **settings)
    edited = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset=preset, strength=1.0, seed=0,
                        **extra)[0]
    return edited, comfy_support.edit_diffs(edited)


def _lora_diffs(c, path: Path) -> dict:
    from safetensors.torch import load_file

    lora = sys.modules[c.pack_module().__name__ + ".nodes.glue.lora_file"]
    tensors = load_file(str(path))
    names = {}
    for key in tensors:
        assert key.endswith(".diff"), key
        names[key[: -len(".diff")]] = tensors[key]
    return names, lora.lora_name


def _assert_same_as_lora(c, diffs: dict, lora_path: Path) -> None:
    import torch

    tensors, lora_name = _lora_diffs(c, lora_path)
    assert set(tensors) == {lora_name(k) for k in diffs}
    for key, diff in diffs.items():
        assert torch.equal(tensors[lora_name(key)], diff.float()), key
