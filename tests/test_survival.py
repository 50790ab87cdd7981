"""The surviving fraction of an edit (scapre_core/survival.py), the LoRA file's non-matrix keys, and the
pack's independence from ComfyUI-GGUF (no import of it anywhere)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from comfyui_scapre.nodes.glue.lora_file import lora_name, lora_state_dict
from comfyui_scapre.scapre_core.survival import WARN_ERROR, Survival, SurvivalMeter, survival, weights_markdown

ROOT = Path(__file__).resolve().parents[1]


def _edit(seed: int = 0, shape=(64, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64),
            0.1 * torch.randn(shape, generator=gen, dtype=torch.float64))


def test_the_edit_carried_exactly_survives_whole():
    w, c = _edit()
    s = survival(c, w, w + c)
    assert s.fraction == pytest.approx(1.0, abs=1e-12) and s.error == pytest.approx(0.0, abs=1e-6)


def test_a_lost_edit_survives_nothing_and_errs_by_all_of_it():
    w, c = _edit()
    s = survival(c, w, w)
    assert s.fraction == 0.0 and s.error == pytest.approx(1.0)


def test_half_the_edit_and_orthogonal_noise():
    w, c = _edit()
    half = survival(c, w, w + 0.5 * c)
    assert half.fraction == pytest.approx(0.5) and half.error == pytest.approx(0.5)
    noise = torch.randn(c.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    noise -= (noise * c).sum() / c.pow(2).sum() * c  # orthogonal to the edit
    noisy = survival(c, w, w + c + noise)
    assert noisy.fraction == pytest.approx(1.0, abs=1e-9)
    assert noisy.error == pytest.approx(float(noise.norm() / c.norm()), rel=1e-9)
    assert noisy.error >= abs(1 - noisy.fraction)


def test_pooled_is_the_measure_of_all_matrices_together():
    meter = SurvivalMeter()
    parts = []
    for i, scale in enumerate((0.2, 0.9, 1.3)):
        w, c = _edit(i, (16 + 8 * i, 12))
        after = w + scale * c + 0.01 * torch.randn(c.shape, generator=torch.Generator().manual_seed(10 + i))
        meter.add(f"m{i}", c, w, after)
        parts.append((c.flatten(), w.flatten(), after.flatten()))
    whole = survival(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                     torch.cat([p[2] for p in parts]))
    pooled = meter.pooled()
    assert pooled.fraction == pytest.approx(whole.fraction, rel=1e-12)
    assert pooled.error == pytest.approx(whole.error, rel=1e-12)
    summary = meter.summary()
    assert summary["per_matrix"]["m1"][0] == pytest.approx(meter.matrices["m1"].fraction)
    assert summary["threshold"] == WARN_ERROR


def test_empty_edits():
    assert Survival(0.0, 0.0, 0.0).fraction == 1.0 and Survival(0.0, 0.0, 0.0).error == 0.0
    assert math.isinf(Survival(0.0, 0.0, 1.0).error)
    meter = SurvivalMeter()
    meter.add("x", torch.zeros(3, 3), torch.zeros(3, 3), torch.ones(3, 3))
    assert meter.summary()["error"] is None  # JSON has no infinity


def test_weights_markdown_names_format_method_and_the_worst_matrices():
    info = {"format": "float8_e4m3fn", "compute_dtype": "bfloat16", "applied": "at compute time", "surviving": 0.99,
            "error": 0.08, "threshold": 0.05,
            "per_matrix": {"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [0.99, 0.02],
                           "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight": [0.9, 0.3]}}
    text = weights_markdown(info, {"text": "the original weights + LoRA (strength 0.8) on 32 of 32 matrices"})
    assert "float8_e4m3fn" in text and "bfloat16" in text and "at compute time" in text
    assert "0.9900" in text and "8 %" in text and "above the warning threshold" in text
    assert "LoRA (strength 0.8)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "matrix" not in line]
    assert rows[0].startswith("| mid.t0.v") and rows[1].startswith("| in1.t0.k")  # largest error first
    assert weights_markdown(None) == ""
    assert "held by the edited MODEL" not in text
    held = weights_markdown(info, patches={"weights": 80, "compact": 80, "mb": 159.8, "dense_mb": 8000.0})
    assert "held by the edited MODEL: 159.8 MB (80 of 80 weights as a row rescaling" in held and "8000.0 MB" in held


def test_lora_file_writes_biases_and_non_matrix_weights_exactly():
    conv = "diffusion_model.input_blocks.1.1.proj_in.weight"
    bias = "diffusion_model.input_blocks.1.1.proj_in.bias"
    mat = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert lora_name(bias) == lora_name(conv) == "lora_unet_input_blocks_1_1_proj_in"
    gen = torch.Generator().manual_seed(0)
    diffs = {conv: torch.randn(8, 8, 1, 1, generator=gen), bias: torch.randn(8, generator=gen),
             mat: torch.randn(8, 16, generator=gen)}
    tensors, errors = lora_state_dict(diffs, rank=2)
    assert torch.equal(tensors["lora_unet_input_blocks_1_1_proj_in.diff"], diffs[conv])
    assert torch.equal(tensors["lora_unet_input_blocks_1_1_proj_in.diff_b"], diffs[bias])
    assert errors[conv] == errors[bias] == 0.0 and errors[mat] > 0.0
    assert f"{lora_name(mat)}.lora_up.weight" in tensors


def test_the_pack_never_imports_comfyui_gguf():
    """ComfyUI-GGUF's tensors are recognised by their attributes and dequantized through their own module,
    so the pack loads without that pack (and without the gguf package)."""
    pattern = re.compile(r"^\s*(import gguf|from gguf|import .*GGUF|from .*GGUF)", re.MULTILINE)
    sources = [p for d in ("nodes", "scapre_core") for p in (ROOT / d).rglob("*.py")] + [ROOT / "__init__.py"]
    offenders = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders
