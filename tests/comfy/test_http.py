"""The pack in a running ComfyUI server (``main.py --cpu`` on 127.0.0.1), driven over the HTTP API."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import comfy_support

log = logging.getLogger("scapre.comfy_tests")

EXAMPLES = comfy_support.PACK_ROOT / "example_workflows"
EXAMPLE = EXAMPLES / "erase_sd15.json"
#: erase_sd15.json as saved before ScaPre Erase got presets: the node id ScaPreErase with its 25 widget values.
LEGACY_WORKFLOW = Path(__file__).resolve().parent / "fixtures" / "erase_sd15_legacy_node.json"


def _example_prompt(server, ckpt_name: str, path: Path = EXAMPLE) -> dict:
    """The example workflow in API form, with only what CPU tests need changed: the checkpoint (a
    random-weight fixture instead of the real SD1.5 file) and the sampling work (64x64, one step)."""
    workflow = json.loads(path.read_text())
    prompt = comfy_support.ui_workflow_to_api(workflow, server.object_info())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt_name
        elif node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64, batch_size=1)
        elif node["class_type"] == "KSampler":
            inputs["steps"] = 1
    return prompt


def _nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def test_pack_nodes_are_served(comfy_server):
    ids = set(comfy_server.node_ids("ScaPre"))
    assert ids == {"ScaPreConceptEncode", "ScaPreInformax", "ScaPreEraseSimple", "ScaPreSettings", "ScaPreErase",
                   "ScaPreReport", "ScaPreSaveLoRA", "ScaPreSaveCheckpoint", "ScaPreCompare", "ScaPreAttackPrompts",
                   "ScaPreAttack"}
    for node_id in ("ScaPreEraseSimple", "ScaPreSettings", "ScaPreErase"):
        info = comfy_server.object_info(node_id)[node_id]
        assert info["category"] == "ScaPre" and info["description"]
        required = info["input"]["required"]
        assert all(spec[1].get("tooltip") for spec in required.values())
    infos = comfy_server.object_info()
    assert infos["ScaPreErase"]["display_name"] == "ScaPre Erase (legacy)" and infos["ScaPreErase"]["deprecated"]
    assert infos["ScaPreEraseSimple"]["display_name"] == "ScaPre Erase"
    assert not infos["ScaPreEraseSimple"].get("deprecated")
    assert comfy_server.get("/extensions") and any("comfyui-scapre" in e for e in comfy_server.get("/extensions"))


def test_example_workflow_runs_over_http(comfy_server, sd15_ckpt_path):
    prompt = _example_prompt(comfy_server, sd15_ckpt_path.name)
    assert _nodes_of(prompt, "ScaPreEraseSimple") and _nodes_of(prompt, "ScaPreSaveLoRA")
    assert not _nodes_of(prompt, "ScaPreErase")
    entry = comfy_server.run(prompt, timeout=1500)
    outputs = entry["outputs"]
    (erase_id,) = _nodes_of(prompt, "ScaPreEraseSimple")
    summary = outputs[erase_id]["scapre_summary"][0]
    assert summary["matrices"] == 32 and summary["concepts"] >= 1
    images = comfy_server.output_files(entry)
    assert images and all(p.is_file() for p in images)
    out_dir = Path(comfy_server.output_dir)
    loras = sorted((out_dir / "loras").glob("*.safetensors"))
    assert loras and loras[0].with_name(loras[0].name.replace(".safetensors", ".scapre.json")).is_file()
    if _nodes_of(prompt, "ScaPreSaveCheckpoint") or _nodes_of(prompt, "CheckpointSave"):
        assert sorted((out_dir / "checkpoints").glob("*.safetensors"))


def test_bad_input_reports_our_message_and_the_server_keeps_serving(comfy_server, sd15_ckpt_path):
    prompt = _example_prompt(comfy_server, sd15_ckpt_path.name)
    (encode_id,) = _nodes_of(prompt, "ScaPreConceptEncode")
    prompt[encode_id]["inputs"]["concepts"] = " , "
    entry = comfy_server.wait(comfy_server.queue(prompt), timeout=900)
    status = entry["status"]
    assert status["status_str"] == "error"
    errors = [m[1] for m in status["messages"] if m[0] == "execution_error"]
    assert errors and "no concepts to erase" in errors[0]["exception_message"]
    assert errors[0]["node_type"] == "ScaPreConceptEncode"
    # still serving: metadata, and a valid (changed) prompt runs to success
    assert "KSampler" in comfy_server.object_info("KSampler")
    prompt[encode_id]["inputs"]["concepts"] = "a red apple"
    for node_id in _nodes_of(prompt, "ScaPreSaveCheckpoint") + _nodes_of(prompt, "CheckpointSave"):
        del prompt[node_id]  # keep the rerun light
    assert comfy_server.run(prompt, timeout=1500)["status"]["status_str"] == "success"


def test_legacy_workflow_still_loads_and_runs(comfy_server, sd15_ckpt_path):
    """A workflow saved with the old ScaPreErase node (25 positional widget values) converts against today's
    schema to exactly its old settings and runs; the saved LoRA equals the new node's with those settings."""
    import torch
    from safetensors.torch import load_file

    prompt = _example_prompt(comfy_server, sd15_ckpt_path.name, LEGACY_WORKFLOW)
    (erase_id,) = _nodes_of(prompt, "ScaPreErase")
    legacy = {k: v for k, v in prompt[erase_id]["inputs"].items() if not isinstance(v, list)}
    # the values are read back under the names they were saved for (the old defaults of this workflow)
    assert legacy == {"edit": "keys and values", "variant": "scale", "lam": 0.5, "erase_scale": 2, "preserve_scale": 1,
                      "technique": "replace", "p": 2, "mi_temperature": 0.7, "mi_samples": 5, "noise_sigma": 0.01,
                      "use_informax": True, "entropy_samples": 20, "entropy_bins": 20, "mu_from_entropy": True,
                      "mu": 0.1, "ased": False, "t_sigma": 1, "p_sigma": 1, "bures_iters": 1, "egbr": False,
                      "alpha_min": 0.8, "svd_residual": False, "seed": 0, "mi_estimator": "sampled",
                      "precision": "float32"}
    for node_id in _nodes_of(prompt, "ScaPreSaveCheckpoint"):
        del prompt[node_id]  # keep it light
    for node_id in _nodes_of(prompt, "ScaPreSaveLoRA"):
        prompt[node_id]["inputs"]["filename_prefix"] = "loras/legacy_check"
    entry = comfy_server.run(prompt, timeout=1500)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"][erase_id]["scapre_summary"][0]["matrices"] == 32

    # the same edit through the new node: ScaPre Settings with the legacy values into ScaPre Erase
    settings = dict(legacy)
    new = json.loads(json.dumps(prompt))
    new[erase_id] = {"class_type": "ScaPreEraseSimple",
                     "inputs": {**{k: v for k, v in prompt[erase_id]["inputs"].items() if isinstance(v, list)},
                                "preset": "artists", "strength": 2.0, "seed": 1, "settings": ["900", 0]}}
    new["900"] = {"class_type": "ScaPreSettings", "inputs": settings}
    for node_id in _nodes_of(new, "ScaPreSaveLoRA"):
        new[node_id]["inputs"]["filename_prefix"] = "loras/new_check"
    assert comfy_server.run(new, timeout=1500)["status"]["status_str"] == "success"
    out = Path(comfy_server.output_dir) / "loras"
    (old_file,) = sorted(out.glob("legacy_check_*.safetensors"))
    (new_file,) = sorted(out.glob("new_check_*.safetensors"))
    a, b = load_file(str(old_file)), load_file(str(new_file))
    assert set(a) == set(b) and len(a) == 32
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compare_example_runs_over_http(comfy_server, sd15_ckpt_path):
    """The artist compare example (erase Van Gogh, compare with look-alike artists), with tiny sampling."""
    prompt = _example_prompt(comfy_server, sd15_ckpt_path.name, EXAMPLES / "compare_artist_sd15.json")
    (compare,) = _nodes_of(prompt, "ScaPreCompare")
    prompt[compare]["inputs"].update(images_per_prompt=1, steps=1, cfg=1.0, width=64, height=64)
    entry = comfy_server.run(prompt, timeout=1500)
    (result,) = entry["outputs"][compare]["scapre_compare"]
    erased = [p for p in result["prompts"] if p["kind"] == "erased"]
    kept = [p["prompt"] for p in result["prompts"] if p["kind"] == "kept"]
    assert len(erased) == 4 and "a painting in the style of Claude Monet" in kept
    assert result["erasure"] > 0 and all(0 <= p["change"] <= 1 for p in result["prompts"])
    saved = Path(comfy_server.output_dir) / result["file"]
    assert saved.is_file() and json.loads(saved.read_text())["erasure"] == result["erasure"]
    assert comfy_server.output_files(entry)  # the grid's Preview Image
