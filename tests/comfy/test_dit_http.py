"""The DiT example workflows (Wan: cross-attention, as published; Flux: text-input projection, beyond the paper)
in a running ComfyUI server, driven over HTTP.

The examples name the published model files; here the diffusion model is a random-weight file of
``dit_support.py`` loaded by the example's own UNETLoader, the text encoder its stand-in (a test-only node,
``fixture_nodes/dit_test_text_encoders``, in place of CLIPLoader / DualCLIPLoader), the sampling is one step on
a tiny latent, and the VAE decode is replaced by SaveLatent (no VAE file is built)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import comfy_support
import pytest

_HERE = Path(__file__).resolve().parent
try:
    import dit_support
except ImportError:  # --import-mode=importlib
    _spec = importlib.util.spec_from_file_location("dit_support", _HERE / "dit_support.py")
    dit_support = importlib.util.module_from_spec(_spec)
    sys.modules["dit_support"] = dit_support
    _spec.loader.exec_module(dit_support)

EXAMPLES = comfy_support.PACK_ROOT / "example_workflows"
FIXTURE_NODES = _HERE / "fixture_nodes" / "dit_test_text_encoders"
#: example -> (tiny model, stand-in text encoder kind, edited matrices)
CASES = {"erase_wan": ("wan", "wan", 4), "erase_flux": ("flux", "flux", 2)}
DROPPED = {"VAELoader", "VAEDecode", "SaveImage", "SaveAnimatedWEBP"}


@pytest.fixture(scope="module")
def dit_server(comfy_path, comfy_python, scapre_test_cache, tmp_path_factory):
    """A ComfyUI server with this pack and the stand-in text-encoder node, diffusion models from the test cache."""
    for name in {m for m, _, _ in CASES.values()}:
        dit_support.ensure_model_file(name, scapre_test_cache)
    nodes = tmp_path_factory.mktemp("dit_custom_nodes")
    comfy_support.make_pack_link(nodes)
    (nodes / FIXTURE_NODES.name).symlink_to(FIXTURE_NODES, target_is_directory=True)
    server = comfy_support.ComfyServer(comfy_path, tmp_path_factory.mktemp("dit_server"), python=comfy_python,
                                       model_dirs={"diffusion_models": [scapre_test_cache]}, custom_nodes_dir=nodes)
    try:
        server.start(timeout=180)
    except comfy_support.ComfyError as err:
        pytest.fail(str(err))
    yield server
    server.stop()


def _prompt(server, example: str) -> dict:
    """The example in API form with the stand-ins and tiny sampling described in the module docstring."""
    model, kind, _ = CASES[example]
    workflow = json.loads((EXAMPLES / f"{example}.json").read_text())
    prompt = comfy_support.ui_workflow_to_api(workflow, server.object_info())
    sampler = None
    for node_id in list(prompt):
        node = prompt[node_id]
        kind_of, inputs = node["class_type"], node["inputs"]
        if kind_of in DROPPED:
            del prompt[node_id]
        elif kind_of in ("CLIPLoader", "DualCLIPLoader"):
            prompt[node_id] = {"class_type": "DiTTestTextEncoder", "inputs": {"kind": kind}}
        elif kind_of == "UNETLoader":
            inputs["unet_name"] = dit_support.model_file_name(model)
        elif kind_of in ("EmptyHunyuanLatentVideo", "EmptySD3LatentImage"):
            inputs.update(width=64, height=64, batch_size=1, **({"length": 1} if "length" in inputs else {}))
        elif kind_of == "KSampler":
            inputs["steps"] = 1
            sampler = node_id
    prompt["900"] = {"class_type": "SaveLatent",
                     "inputs": {"samples": [sampler, 0], "filename_prefix": f"latents/{example}"}}
    return prompt


@pytest.mark.parametrize("example", [e for e in CASES if dit_support.host_has(CASES[e][0])])
def test_dit_example_runs_over_http(dit_server, example):
    _, _, matrices = CASES[example]
    prompt = _prompt(dit_server, example)
    entry = dit_server.run(prompt, timeout=1500)
    (erase_id,) = [k for k, v in prompt.items() if v["class_type"] == "ScaPreEraseSimple"]
    summary = entry["outputs"][erase_id]["scapre_summary"][0]
    assert summary["matrices"] == matrices and summary["concepts"] == 1
    out = Path(dit_server.output_dir)
    loras = sorted((out / "loras").glob(f"scapre_{example.split('_')[1]}_van_gogh*.safetensors"))
    assert loras and loras[0].with_name(loras[0].name.replace(".safetensors", ".scapre.json")).is_file()
    assert sorted((out / "latents").glob(f"{example}*.latent"))
    assert dit_server.output_files(entry)  # the report figure's Preview Image


def test_unsupported_model_is_refused_over_http(dit_server):
    """A CLIP of the wrong family into a DiT: the error names the model and the text encoder it reads."""
    prompt = _prompt(dit_server, "erase_wan")
    for node in prompt.values():
        if node["class_type"] == "DiTTestTextEncoder":
            node["inputs"]["kind"] = "flux"
    entry = dit_server.wait(dit_server.queue(prompt), timeout=900)
    assert entry["status"]["status_str"] == "error"
    (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert error["node_type"] == "ScaPreEraseSimple"
    assert "Wan" in error["exception_message"] and "umT5-XXL" in error["exception_message"]
