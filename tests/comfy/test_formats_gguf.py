"""ScaPre on GGUF models loaded by ComfyUI-GGUF's ``UnetLoaderGGUF`` (the snapshot in ../shared/comfyui-packs,
unpacked into this test session's own custom_nodes folder): the weights are read dequantized through that
pack's own code, the edit reaches the weights it samples with, and a saved LoRA loads on the GGUF model and on
the full-precision one. GGUF files (Q8_0 and the K-quant Q4_K) are built from a small random SD1.5-class UNet.

Everything runs under ``torch.inference_mode()``, as ComfyUI's executor runs nodes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import comfy_support
import formats_support
import pytest

QTYPES = ("Q8_0", "Q4_K")


@pytest.fixture(scope="module")
def gguf_env(scapre_nodes, sd15_loaded, comfy_path, comfy_python, scapre_test_cache, tmp_path_factory):
    """ComfyUI-GGUF loaded in-process, the GGUF files in the diffusion_models folder, the encoded concepts."""
    import torch

    problem = formats_support.gguf_pack_problem()
    if problem:
        if os.environ.get("CI"):  # CI has ../shared and installs gguf: a missing piece is a failure there
            pytest.fail(f"ComfyUI-GGUF tests cannot run on CI: {problem}")
        pytest.skip(problem)
    c = scapre_nodes
    loader = formats_support.load_gguf_pack(c, tmp_path_factory.mktemp("gguf_custom_nodes"))
    files = formats_support.ensure_tiny_unet_files(("fp16", *QTYPES), comfy_path=comfy_path, python=comfy_python,
                                                   directory=scapre_test_cache)
    c.folder_paths.add_model_folder_path("diffusion_models", str(scapre_test_cache))
    with torch.inference_mode():
        (concepts,) = c.run_node("ScaPreConceptEncode", clip=sd15_loaded[1], concepts="cat, golden retriever",
                                 concept_type="object", expand_templates=False, templates="", guide="", preserve="",
                                 probes="tiger")
    yield {"loader": loader, "files": files, "concepts": concepts}
    comfy_support.free_models()


def _load(env, qtype: str, dequant_dtype: str = "default"):
    return comfy_support.run_node(env["loader"], unet_name=env["files"][qtype].name, dequant_dtype=dequant_dtype)[0]


def _load_full(c, env):
    """The UNet the GGUF files were quantized from, at full precision (float16 on disk, float32 on the CPU)."""
    return c.run_node("UNETLoader", unet_name=env["files"]["fp16"].name, weight_dtype="default")[0]


def _erase(c, model, concepts):
    edited, report = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="uce", strength=1.0,
                                seed=0)[:2]
    return edited, report, edited.model_options["scapre_edits"][-1]


def _file_blocks(path: Path, key: str):
    """The GGUF file's own values for ``key``, dequantized by the gguf package."""
    import gguf
    import torch

    reader = gguf.GGUFReader(str(path))
    (tensor,) = [t for t in reader.tensors if t.name == key]
    return torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy()).float()


@pytest.mark.parametrize("qtype", QTYPES)
def test_gguf_weights_are_read_dequantized(scapre_nodes, gguf_env, qtype):
    """The edit reads ComfyUI-GGUF's tensors as numbers (issue 18: it read the quantized bytes and stopped with
    'mat1 and mat2 shapes cannot be multiplied'): exactly the weight the loaded layer multiplies with, which
    is the file's blocks as the gguf package dequantizes them up to ComfyUI-GGUF's arithmetic (float16 by
    default, the loader's ``dequant_dtype``), and close to the float16 weights they were quantized from."""
    import sys

    import torch

    c = scapre_nodes
    weights_module = sys.modules[c.pack_module().__name__ + ".nodes.glue.weights"]
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    file_values = _file_blocks(gguf_env["files"][qtype], key.removeprefix("diffusion_model."))
    with torch.inference_mode():
        original = weights_module.EffectiveWeights(_load_full(c, gguf_env), [key])[key]
        read = {}
        # dequant_dtype is a class attribute of ComfyUI-GGUF's layers (each load sets it for all GGUF models):
        # each model is read before the next load
        for dequant_dtype in ("default", "float32"):
            model = _load(gguf_env, qtype, dequant_dtype=dequant_dtype)
            if dequant_dtype == "default":
                arch = sys.modules[c.pack_module().__name__ + ".nodes.glue.architectures"]
                keys = {t.key for t in arch.edit_targets(model, arch.architecture(model), "keys and values")}
                assert {key, key.replace("to_k", "to_v")} <= keys
            read[dequant_dtype] = weights_module.EffectiveWeights(model, [key])[key]
            assert read[dequant_dtype].shape == (320, 768)
            sampled = formats_support.sampled_weights(model, [key])[key]
            assert torch.equal(read[dequant_dtype], sampled)
            del model
            comfy_support.free_models()
    # dequantized in float32, ComfyUI-GGUF computes the gguf package's numbers
    assert torch.equal(read["float32"], file_values)
    # ComfyUI-GGUF's default dequantizes in float16 (unit roundoff 2^-11, subnormal spacing 2^-24)
    difference = read["default"] - file_values
    assert float(difference.abs().max()) > 0.0
    if qtype == "Q8_0":  # one rounding of (float16 scale) * int8
        assert bool((difference.abs() <= 2.0**-11 * file_values.abs() + 2.0**-25).all())
    else:
        # Q4_K: d*sc, (d*sc)*q, dmin*m and their difference, each rounded to float16 from operands no larger
        # than twice the block's largest magnitude (the subtracted minimum is about one of the block's values):
        # at most 8 * 2^-11 * max|w| per value. Measured: 1.1e-4 of 3.7e-4 allowed, 0.08 % in norm.
        assert float(difference.abs().max()) <= 8 * 2.0**-11 * float(file_values.abs().max())
    assert float(difference.norm() / file_values.norm()) < 2e-3
    assert float((read["default"] - original).norm() / original.norm()) < (0.01 if qtype == "Q8_0" else 0.12)


@pytest.mark.parametrize("qtype", QTYPES)
def test_gguf_edit_is_sampled_as_printed(scapre_nodes, gguf_env, sd15_loaded, qtype):
    import torch

    c = scapre_nodes
    clip = sd15_loaded[1]
    with torch.inference_mode():
        model = _load(gguf_env, qtype)
        edited, report, record = _erase(c, model, gguf_env["concepts"])
        keys = sorted(record.diffs)
        weights = report.info["weights"]
        assert (weights["format"], weights["methods"]) == (f"GGUF {qtype}", "gguf")
        assert set(keys) <= set(edited.patches)  # ComfyUI-GGUF applies them when it dequantizes
        before = formats_support.sampled_weights(model, keys)
        after = formats_support.sampled_weights(edited, keys)
        measured = formats_support.measured_survival(before, after, comfy_support.edit_diffs(edited))
        assert measured["surviving"] == pytest.approx(weights["surviving"], abs=1e-9)
        assert measured["error"] == pytest.approx(weights["error"], rel=1e-6, abs=1e-12)
        assert measured["error"] < 1e-4
        (pos,) = c.run_node("CLIPTextEncode", text="a photo of a cat", clip=clip)
        (latent,) = c.run_node("EmptyLatentImage", width=64, height=64, batch_size=1)
        samples = {}
        for name, m in (("original", model), ("edited", edited)):
            (out,) = c.run_node("KSampler", model=m, seed=0, steps=1, cfg=1.0, sampler_name="euler",
                                scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=1.0)
            samples[name] = out["samples"]
    assert torch.isfinite(samples["edited"]).all() and not torch.equal(samples["original"], samples["edited"])
    assert "GGUF" in c.run_node("ScaPreReport", report=report)[1]


def test_gguf_lora_loads_on_the_gguf_and_on_the_full_precision_model(scapre_nodes, gguf_env, sd15_loaded):
    import torch

    c = scapre_nodes
    out_dir = Path(c.folder_paths.get_output_directory())
    with torch.inference_mode():
        model = _load(gguf_env, "Q8_0")
        full = _load_full(c, gguf_env)
        edited, _, record = _erase(c, model, gguf_env["concepts"])
        keys = sorted(record.diffs)
        saved = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix="gguf_edit", rank=0,
                           contents="ScaPre edits")
        lora = out_dir / saved[0]
        meta = json.loads(comfy_support.safetensors_header(lora)["__metadata__"]["scapre"])
        assert meta["edits"][0]["weights"]["format"] == "GGUF Q8_0"
        c.folder_paths.add_model_folder_path("loras", str(lora.parent))
        for base in (model, full):
            loaded = c.run_node("LoraLoaderModelOnly", model=base, lora_name=lora.name, strength_model=1.0)[0]
            before = formats_support.sampled_weights(base, keys)
            after = formats_support.sampled_weights(loaded, keys)
            got = formats_support.measured_survival(before, after, comfy_support.edit_diffs(edited))
            assert got["surviving"] == pytest.approx(1.0, abs=1e-5) and got["error"] < 1e-4
        with pytest.raises(ValueError, match="GGUF"):
            c.run_node("ScaPreSaveCheckpoint", model=edited, clip=sd15_loaded[1], vae=sd15_loaded[2],
                       filename_prefix="checkpoints/gguf_edit")
    assert not list((out_dir / "checkpoints").glob("gguf_edit*"))


def test_q4_k_blocks_read_back_by_comfyui_gguf(scapre_nodes, gguf_env):
    """The test's own Q4_K writer (formats_support.quantize_q4_k) against ComfyUI-GGUF's torch dequantizer and the
    gguf package's: the same numbers, within the error of a 4-bit quantization of the input."""
    import sys

    import gguf
    import numpy as np
    import torch

    gen = np.random.default_rng(0)
    values = (gen.standard_normal((6, 512)) * 0.02).astype(np.float32)
    values[0, :256] = 0.0
    values[1, :256] = np.abs(values[1, :256])
    blocks = formats_support.quantize_q4_k(values)
    reference = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_K)
    dequant = next(m for name, m in sys.modules.items() if name.endswith("ComfyUI-GGUF.dequant"))
    ours = dequant.dequantize(torch.from_numpy(blocks), gguf.GGMLQuantizationType.Q4_K, (6, 512),
                              dtype=torch.float32).float().numpy()
    assert np.allclose(ours, reference, atol=1e-6)
    assert np.abs(reference[0, :256]).max() == 0.0
    assert np.linalg.norm(reference - values) / np.linalg.norm(values) < 0.1
