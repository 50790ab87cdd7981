"""The pack in a running ComfyUI server (``main.py --cpu`` on 127.0.0.1), driven over the HTTP API."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import comfy_support

log = logging.getLogger("scapre.comfy_tests")

EXAMPLE = comfy_support.PACK_ROOT / "example_workflows" / "erase_sd15.json"


def _example_prompt(server, ckpt_name: str) -> dict:
    """The example workflow in API form, with only what CPU tests need changed: the checkpoint (a
    random-weight fixture instead of the real SD1.5 file) and the sampling work (64x64, one step)."""
    workflow = json.loads(EXAMPLE.read_text())
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
    assert ids == {"ScaPreConceptEncode", "ScaPreInformax", "ScaPreErase", "ScaPreReport", "ScaPreSaveLoRA",
                   "ScaPreSaveCheckpoint"}
    info = comfy_server.object_info("ScaPreErase")["ScaPreErase"]
    assert info["category"] == "ScaPre" and info["description"]
    required = info["input"]["required"]
    assert all(spec[1].get("tooltip") for spec in required.values())
    assert comfy_server.get("/extensions") and any("comfyui-scapre" in e for e in comfy_server.get("/extensions"))


def test_example_workflow_runs_over_http(comfy_server, sd15_ckpt_path):
    prompt = _example_prompt(comfy_server, sd15_ckpt_path.name)
    assert _nodes_of(prompt, "ScaPreErase") and _nodes_of(prompt, "ScaPreSaveLoRA")
    entry = comfy_server.run(prompt, timeout=1500)
    outputs = entry["outputs"]
    (erase_id,) = _nodes_of(prompt, "ScaPreErase")
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
