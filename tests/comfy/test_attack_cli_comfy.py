"""``python -m comfyui-scapre attack`` in a fresh process with a real ComfyUI, on the random SD1.5 fixture and a small
LoRA written here (no model is loaded in the test process: the command loads its own)."""

from __future__ import annotations

import json
import os
import subprocess

import comfy_support
import pytest

#: The command loads its own SD1.5: tests/run_all.sh runs this apart from the in-process SD1.5 model.
pytestmark = pytest.mark.cli

KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v"


def test_command_line_attack_on_a_lora(sd15_ckpt_path, comfy_path, comfy_python, tmp_path):
    """The checkpoint and the LoRA loaded by the command, the concepts read from the LoRA's metadata, one search step;
    the results, images and the found conditioning are written."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    lora = tmp_path / "no_cat.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({f"{KEY}.diff": (0.5 * torch.randn(320, 768, generator=g)).half()}, str(lora),
              metadata={"scapre": json.dumps({"format": "scapre-metadata/1", "concepts": ["cat"]})})
    folder = tmp_path / "custom_nodes"
    comfy_support.make_pack_link(folder)
    out = tmp_path / "attack"
    args = ["attack", str(sd15_ckpt_path), "--edit", str(lora), "--method", "soft", "--tokens", "2", "--steps", "1",
            "--train-images", "1", "--images", "1", "--sample-steps", "1", "--cfg", "1", "--width", "64", "--height",
            "64", "--cpu", "--out", str(out), "-q"]
    result = subprocess.run([comfy_python, "-m", comfy_support.PACK_LINK_NAME, *args], cwd=folder, capture_output=True,
                            text=True, timeout=1200, env=dict(os.environ, COMFYUI_PATH=str(comfy_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| soft tokens |" in result.stdout and "counted image(s); wrote" in result.stdout
    data = json.loads((out / "attack.json").read_text())
    assert data["concepts"] == ["cat"] and data["search"]["cat"]["steps"] == 1
    assert data["recovery"]["soft tokens"]["images"] == 1
    assert len(list((out / "images").glob("*.png"))) == 4  # original | plain edit, original | attacked
    with safe_open(str(out / "attack.safetensors"), "pt") as f:
        assert f.get_tensor("conditioning/0").shape == (1, 77, 768)
        assert f.get_tensor("cat/soft_tokens").shape == (2, 768)
        entry = json.loads(f.metadata()["scapre"])
    assert entry["format"] == "scapre-attack/1" and entry["conditionings"] == ["cat | soft tokens"]
    assert entry["result"]["recovery"]["soft tokens"]["images"] == 1
