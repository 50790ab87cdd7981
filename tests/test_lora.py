"""LoRA key names and factorization."""

from __future__ import annotations

import pytest
import torch

from scapre_core.lora import lora_name, lora_state_dict, low_rank, pooled_error

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
