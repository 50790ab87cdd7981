"""Sharing an edit as a LoRA file: key names, exact differences and low-rank factors.

ComfyUI's LoraLoader maps kohya-style names ``lora_unet_<ldm path with _>`` onto the UNet's
``diffusion_model.<ldm path>.weight`` keys (COMFY_NOTES (c)). An exact edit is written as full-rank ``.diff``
keys; a rank-``r`` edit as ``.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` (scale alpha/r = 1).
Other changes a MODEL can carry (ScaPre Save LoRA's "all changes": a LoRA's convolution or bias changes)
are written exactly: ``.diff`` for weights that are not matrices, ``.diff_b`` for biases.
Imports no ComfyUI module, so it is tested without one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...scapre_core.lora import low_rank

UNET_PREFIX = "diffusion_model."
LORA_PREFIX = "lora_unet_"


def lora_name(model_key: str) -> str:
    """``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight`` ->
    ``lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k`` (the same name for the layer's ``.bias``)."""
    if not model_key.startswith(UNET_PREFIX) or not model_key.endswith((".weight", ".bias")):
        raise ValueError(f"not a UNet weight key: {model_key!r} (expected 'diffusion_model.<path>.weight')")
    return LORA_PREFIX + model_key[len(UNET_PREFIX):].rsplit(".", 1)[0].replace(".", "_")


def lora_state_dict(
    diffs: dict[str, torch.Tensor],
    rank: int = 0,
    dtype: torch.dtype = torch.float16,
    progress: Callable[[int, int], object] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The tensors of a LoRA file for the UNet differences ``diffs`` (model key -> ``W_new - W_in``).

    ``rank`` 0 writes exact full-rank ``.diff`` keys in float32; ``rank`` r writes up/down/alpha in
    ``dtype``. Also returns the relative truncation error per model key (0 for exact).
    ``progress(done, total)`` is called after each matrix and may raise to cancel."""
    if rank < 0:
        raise ValueError(f"rank must be 0 (exact) or positive, got {rank}")
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for done, key in enumerate(sorted(diffs), start=1):
        if progress is not None and done > 1:
            progress(done - 1, len(diffs))
        name = lora_name(key)
        diff = diffs[key].detach().to(device="cpu")
        if key.endswith(".bias"):
            tensors[f"{name}.diff_b"] = diff.to(torch.float32).contiguous()
            errors[key] = 0.0
            continue
        if rank == 0 or diff.ndim != 2:
            tensors[f"{name}.diff"] = diff.to(torch.float32).contiguous()
            errors[key] = 0.0
            continue
        factors = low_rank(diff, rank, dtype)
        tensors[f"{name}.lora_up.weight"] = factors.up.contiguous()
        tensors[f"{name}.lora_down.weight"] = factors.down.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(factors.up.shape[1]), dtype=torch.float32)
        errors[key] = factors.rel_error
    if progress is not None:
        progress(len(diffs), len(diffs))
    return tensors, errors
