"""An edit computed on a model with a LoRA already applied: the report and the saved LoRA's metadata say what
it was computed on, ScaPre Save LoRA warns when the file of the edits alone will likely be loaded elsewhere,
and ``contents='all changes'`` writes one file that turns the original checkpoint into the edited model."""

from __future__ import annotations

import json
from pathlib import Path

import comfy_support
import pytest

KV = "diffusion_model.{}.1.transformer_blocks.0.attn2.to_{}.weight"
Q = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
CONV = "diffusion_model.input_blocks.1.1.proj_in.weight"  # a 1x1 convolution in SD1.5


def _write_lora(model, path: Path, rank: int = 4) -> list[str]:
    """A random kohya-style LoRA on every cross-attention key/value matrix, one self-attention query and one
    convolution; returns the model keys it changes."""
    import safetensors.torch
    import torch

    entries = model.get_key_patches("diffusion_model.")
    keys = [*sorted(k for k in entries if k.endswith((".attn2.to_k.weight", ".attn2.to_v.weight"))), Q, CONV]
    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for key in keys:
        shape = tuple(entries[key][0][0].shape)
        name = "lora_unet_" + key.removeprefix("diffusion_model.").removesuffix(".weight").replace(".", "_")
        tail = (1, 1) if len(shape) == 4 else ()
        tensors[f"{name}.lora_down.weight"] = 0.05 * torch.randn((rank, shape[1], *tail), generator=gen)
        tensors[f"{name}.lora_up.weight"] = 0.05 * torch.randn((shape[0], rank, *tail), generator=gen)
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    safetensors.torch.save_file(tensors, str(path))
    return keys


def _weights(model, keys):
    """The weights ``model`` computes with (patches baked in by a full load), float32 CPU copies."""
    import comfy.model_management as mm
    import comfy.utils

    mm.load_models_gpu([model], force_patch_weights=True)
    return {k: comfy.utils.get_attr(model.model, k).detach().float().cpu().clone() for k in keys}


def _metadata(path: Path) -> dict:
    """The pack's ``scapre`` metadata entry of a saved file."""
    return json.loads(comfy_support.safetensors_header(path)["__metadata__"]["scapre"])


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_an_edit_on_a_lora_says_so_and_saves_for_either_base(scapre_nodes, sd15_loaded, tmp_path):
    import torch

    c = scapre_nodes
    model, clip, _ = sd15_loaded
    loras = tmp_path / "loras"
    loras.mkdir()
    lora_keys = _write_lora(model, loras / "style.safetensors")
    c.folder_paths.add_model_folder_path("loras", str(loras))
    out_dir = Path(c.folder_paths.get_output_directory())
    with torch.inference_mode():
        styled = c.run_node("LoraLoaderModelOnly", model=model, lora_name="style.safetensors", strength_model=0.8)[0]
        (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts="cat", concept_type="object",
                                 expand_templates=False, templates="", guide="", preserve="", probes="")
        edited, report = c.run_node("ScaPreEraseSimple", model=styled, concepts=concepts, preset="uce",
                                    strength=1.0, seed=0)[:2]
        record = edited.model_options["scapre_edits"][-1]
        kv = sorted(record.diffs)
        base = report.info["computed_on"]
        assert base["other_patches"] == [{"kind": "LoRA", "strength": 0.8, "strength_model": 1.0, "matrices": 32}]
        assert base["earlier_scapre_edits"] == 0
        assert "LoRA (strength 0.8) on 32 of 32 matrices" in c.run_node("ScaPreReport", report=report)[1]

        target = _weights(edited, lora_keys)
        original = _weights(model, lora_keys)

        only = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix="on_style", rank=0, contents="ScaPre edits")
        assert "warning" in only.ui["text"][0] and "all changes" in only.ui["text"][0]
        meta = _metadata(out_dir / only[0])
        assert meta["lora"]["contents"] == "ScaPre edits" and "LoRA (strength 0.8)" in meta["lora"]["applies_to"]
        assert meta["edits"][0]["computed_on"]["other_patches"][0]["kind"] == "LoRA"
        c.folder_paths.add_model_folder_path("loras", str((out_dir / only[0]).parent))
        # on the model it was computed on (the same LoRA first) it gives the edited model...
        again = c.run_node("LoraLoaderModelOnly", model=styled, lora_name=Path(only[0]).name, strength_model=1.0)[0]
        got = _weights(again, kv)
        assert max(_rel(got[k], target[k]) for k in kv) < 1e-5
        # ...on the original checkpoint it does not (the warning's point)
        bare = c.run_node("LoraLoaderModelOnly", model=model, lora_name=Path(only[0]).name, strength_model=1.0)[0]
        got = _weights(bare, kv)
        assert min(_rel(got[k], target[k]) for k in kv) > 1e-3

        whole = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix="whole", rank=0, contents="all changes")
        assert "warning" not in whole.ui["text"][0]
        meta = _metadata(out_dir / whole[0])
        assert meta["lora"]["contents"] == "all changes"
        assert meta["lora"]["applies_to"].startswith("the original model")
        loaded = c.run_node("LoraLoaderModelOnly", model=model, lora_name=Path(whole[0]).name, strength_model=1.0)[0]
        got = _weights(loaded, lora_keys)
    for k in lora_keys:  # every weight the LoRA and the edit changed, the convolution included
        assert _rel(got[k], target[k]) < 1e-5
        assert _rel(got[k], original[k]) > 1e-4


def test_an_edit_on_the_original_model_applies_to_it(scapre_nodes, sd15_loaded):
    import torch

    c = scapre_nodes
    model, clip, _ = sd15_loaded
    with torch.inference_mode():
        (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts="cat", concept_type="object",
                                 expand_templates=False, templates="", guide="", preserve="", probes="")
        edited, report = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="uce", strength=1.0,
                                    seed=0)[:2]
        saved = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix="plain", rank=4, contents="ScaPre edits")
    assert report.info["computed_on"]["text"] == "the original weights"
    assert "warning" not in saved.ui["text"][0]
    meta = _metadata(Path(c.folder_paths.get_output_directory()) / saved[0])
    assert meta["lora"]["applies_to"] == "the original model" and meta["lora"]["rank"] == 4
    with pytest.raises(ValueError, match="contents must be one of"):
        c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix="plain", rank=0, contents="everything")
