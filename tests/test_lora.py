"""LoRA key names and factorization."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.nodes.glue.lora_file import lora_name, lora_state_dict
from comfyui_scapre.scapre_core.lora import low_rank, pooled_error

KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def test_lora_names_follow_kohya_ldm_convention():
    assert lora_name(KEY) == "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    assert lora_name("diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_v.weight") == \
        "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_v"
    with pytest.raises(ValueError, match="not a UNet weight key"):
        lora_name("model.diffusion_model.x.weight")


def test_exact_mode_writes_float32_diffs():
    diffs = {KEY: torch.randn(8, 6, dtype=torch.float64)}
    tensors, errors = lora_state_dict(diffs, rank=0)
    (name,) = tensors
    assert name.endswith(".diff") and tensors[name].dtype == torch.float32
    assert torch.equal(tensors[name], diffs[KEY].float()) and errors[KEY] == 0.0


def test_low_rank_is_exact_for_low_rank_input_and_reports_truncation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 3, generator=g), torch.randn(3, 12, generator=g)
    exact = low_rank(a @ b, 3, dtype=torch.float32)
    assert exact.rel_error < 1e-5 and exact.up.shape == (20, 3) and exact.down.shape == (3, 12)
    full = torch.randn(20, 12, generator=g)
    trunc = low_rank(full, 2, dtype=torch.float32)
    s = torch.linalg.svdvals(full)
    assert trunc.rel_error == pytest.approx(float(s[2:].norm() / s.norm()), rel=1e-4)  # Eckart-Young
    tensors, errors = lora_state_dict({KEY: full}, rank=2)
    base = lora_name(KEY)
    assert tensors[f"{base}.alpha"].item() == 2.0 and tensors[f"{base}.lora_up.weight"].dtype == torch.float16
    assert 0 < errors[KEY] < 1 and pooled_error({KEY: full}, errors) == pytest.approx(errors[KEY])
    with pytest.raises(ValueError, match="rank"):
        lora_state_dict({KEY: full}, rank=-1)


def test_progress_per_matrix_and_cancel():
    diffs = {KEY: torch.randn(6, 4), KEY.replace("to_k", "to_v"): torch.randn(6, 4)}
    seen = []
    lora_state_dict(diffs, rank=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lora_state_dict(diffs, rank=0, progress=stop)


def _applied(tensors: dict, name: str) -> torch.Tensor:
    """What a LoRA loader adds for one module: ``alpha / rank(down) * up @ down`` (the kohya convention)."""
    up, down = tensors[f"{name}.lora_up.weight"].float(), tensors[f"{name}.lora_down.weight"].float()
    alpha = float(tensors[f"{name}.alpha"])
    return (alpha / down.shape[0]) * (up @ down)


@pytest.mark.parametrize("shape", [(5, 4), (4, 6)], ids=["tall", "wide"])
@pytest.mark.parametrize("rank", [1, 3, 4, 5, 8, 100])
def test_low_rank_lora_applies_at_scale_one_at_every_rank(shape, rank):
    """Ranks above min(o, d) are capped at min(o, d); alpha must follow the stored rank so that the
    loader's scale alpha / r is 1 and a full-rank request reproduces the difference exactly."""
    g = torch.Generator().manual_seed(rank)
    diff = torch.randn(*shape, generator=g)
    tensors, errors = lora_state_dict({KEY: diff}, rank=rank, dtype=torch.float32)
    name = lora_name(KEY)
    stored = min(rank, *shape)
    assert tensors[f"{name}.lora_down.weight"].shape == (stored, shape[1])
    assert tensors[f"{name}.alpha"].item() == float(stored)
    best = low_rank(diff, stored, dtype=torch.float32)
    assert torch.allclose(_applied(tensors, name), best.up @ best.down, atol=1e-5)
    if rank >= min(shape):
        assert torch.allclose(_applied(tensors, name), diff, atol=1e-5) and errors[KEY] < 1e-5


def _sdxl_kv_keys() -> list[str]:
    """The 140 cross-attention key/value weights of an SDXL UNet (ComfyUI's LDM names)."""
    blocks = [(f"input_blocks.{b}.1", 2) for b in (4, 5)] + [(f"input_blocks.{b}.1", 10) for b in (7, 8)]
    blocks += [("middle_block.1", 10)] + [(f"output_blocks.{b}.1", 10) for b in (0, 1, 2)]
    blocks += [(f"output_blocks.{b}.1", 2) for b in (3, 4, 5)]
    return [f"diffusion_model.{block}.transformer_blocks.{t}.attn2.to_{kv}.weight"
            for block, depth in blocks for t in range(depth) for kv in "kv"]


def test_sdxl_keys_export_to_distinct_kohya_names():
    keys = _sdxl_kv_keys()
    assert len(keys) == 140
    diffs = {k: torch.full((2, 3), float(i)) for i, k in enumerate(keys)}
    tensors, _ = lora_state_dict(diffs, rank=0)
    assert len(tensors) == 140 and all(name.endswith(".diff") for name in tensors)
    assert "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_v.diff" in tensors
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.diff" in tensors
    for k in keys:  # every matrix lands under its own name
        assert torch.equal(tensors[lora_name(k) + ".diff"], diffs[k])


def test_sdxl_shaped_low_rank_export():
    """SDXL widths: [640 | 1280, 2048] differences; a rank-r export stores r-wide factors that reproduce
    the best rank-r approximation."""
    g = torch.Generator().manual_seed(0)
    keys = {"diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": 640,
            "diffusion_model.middle_block.1.transformer_blocks.3.attn2.to_v.weight": 1280}
    diffs = {k: torch.randn(o, 6, generator=g) @ torch.randn(6, 2048, generator=g) * 1e-3 for k, o in keys.items()}
    tensors, errors = lora_state_dict(diffs, rank=6)
    for k, o in keys.items():
        name = lora_name(k)
        assert tensors[f"{name}.lora_up.weight"].shape == (o, 6)
        assert tensors[f"{name}.lora_down.weight"].shape == (6, 2048)
        rel = float((_applied(tensors, name) - diffs[k]).norm() / diffs[k].norm())
        assert rel < 2e-3 and errors[k] == pytest.approx(rel, abs=1e-4)  # float16 storage only
