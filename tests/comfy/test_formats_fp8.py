"""ScaPre Erase on low-precision weights (fp8 e4m3fn / e5m2 from Load Diffusion Model, ComfyUI scaled fp8,
float16): the edit is computed on the weights as numbers, reaches the weights the model samples with, and the
surviving fraction the report prints is the one read back from the loaded model (docs/model-formats.md).

Everything runs under ``torch.inference_mode()``, as ComfyUI's executor runs nodes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import comfy_support
import formats_support
import pytest

PRESET = "uce"  # the cheapest edit: what these tests check does not depend on the method's settings


def _core(c):
    import sys

    return sys.modules[c.pack_module().__name__ + ".scapre_core"]


@pytest.fixture(scope="module")
def fp8_env(scapre_nodes, sd15_loaded, comfy_path, comfy_python, scapre_test_cache):
    """The small SD1.5-class UNet's files (float16 and scaled fp8) in the diffusion_models folder, and the SD1.5
    CLIP's encoding of the concepts."""
    import torch

    c = scapre_nodes
    files = formats_support.ensure_tiny_unet_files(("fp16", "scaled_fp8"), comfy_path=comfy_path,
                                                   python=comfy_python, directory=scapre_test_cache)
    c.folder_paths.add_model_folder_path("diffusion_models", str(scapre_test_cache))
    with torch.inference_mode():
        (concepts,) = c.run_node("ScaPreConceptEncode", clip=sd15_loaded[1], concepts="cat, golden retriever",
                                 concept_type="object", expand_templates=False, templates="", guide="", preserve="",
                                 probes="tiger")
    yield {"files": files, "concepts": concepts}
    comfy_support.free_models()


def _load(c, env, weight_dtype: str = "default", scaled: bool = False):
    name = env["files"]["scaled_fp8" if scaled else "fp16"].name
    return c.run_node("UNETLoader", unet_name=name, weight_dtype=weight_dtype)[0]


def _erase(c, model, concepts, preset=PRESET, strength=1.0):
    edited, report = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset=preset,
                                strength=strength, seed=0)[:2]
    return edited, report, edited.model_options["scapre_edits"][-1]


def _assert_printed_is_measured(report, measured):
    printed = report.info["weights"]
    assert measured["surviving"] == pytest.approx(printed["surviving"], abs=1e-9)
    assert measured["error"] == pytest.approx(printed["error"], rel=1e-6, abs=1e-12)
    assert set(measured["per_matrix"]) == set(printed["per_matrix"])
    for key, (s, e) in measured["per_matrix"].items():
        assert s == pytest.approx(printed["per_matrix"][key][0], abs=1e-9)
        assert e == pytest.approx(printed["per_matrix"][key][1], rel=1e-6, abs=1e-12)


def _assert_table_prints_measured(table: str, measured) -> None:
    """The pooled surviving fraction and error as ScaPre Report's table prints them (4 decimals, 3 significant
    digits of a percentage) are the measured ones."""
    found = re.search(r"surviving fraction of the edit: (-?[0-9.]+); error ([0-9.e+-]+) % of the edit", table)
    assert found, table
    assert abs(float(found[1]) - measured["surviving"]) <= 0.5e-4 + 1e-9
    assert abs(float(found[2]) / 100 - measured["error"]) <= 0.005 * measured["error"] + 1e-12


@pytest.mark.parametrize(("weight_dtype", "compute"), [("fp8_e4m3fn", "default"), ("fp8_e4m3fn", "bf16"),
                                                       ("fp8_e5m2", "default")])
def test_fp8_edit_reaches_the_sampled_weights_as_printed(scapre_nodes, fp8_env, weight_dtype, compute):
    import torch

    c = scapre_nodes
    with torch.inference_mode():
        model = _load(c, fp8_env, weight_dtype)
        if compute != "default":
            model = c.run_node("ModelComputeDtype", model=model, dtype=compute)[0]
        edited, report, record = _erase(c, model, fp8_env["concepts"])
        keys = sorted(record.diffs)
        weights = report.info["weights"]
        assert weights["format"] == weight_dtype.replace("fp8", "float8")
        assert weights["methods"] == "compute"
        assert weights["compute_dtype"] == ("bfloat16" if compute == "bf16" else "float32")
        assert not any(k in edited.patches for k in keys)  # applied at compute time, not baked into fp8
        before = formats_support.sampled_weights(model, keys)
        after = formats_support.sampled_weights(edited, keys)
        measured = formats_support.measured_survival(before, after, record.diffs)
        _assert_printed_is_measured(report, measured)
        assert measured["error"] < 0.01
        if compute == "bf16":  # the compute dtype's own rounding shows, and is what the report predicted
            assert measured["error"] > 1e-4
        # ComfyUI's default weight patch rounds the edit into fp8 (stochastically): what issue 18 measured
        patched = model.clone()
        patched.add_patches({k: (d,) for k, d in record.diffs.items()}, 1.0, 1.0)
        lost = formats_support.measured_survival(before, formats_support.sampled_weights(patched, keys), record.diffs)
        assert lost["error"] > 0.05 and lost["error"] > 10 * measured["error"]
        # the input model still samples with its own weights
        again = formats_support.sampled_weights(model, keys)
        assert all(torch.equal(before[k], again[k]) for k in keys)
        table = c.run_node("ScaPreReport", report=report)[1]
    assert weights["format"] in table
    _assert_table_prints_measured(table, measured)
    assert "below the warning threshold" in table
    assert any("compute time" in w and "ScaPre Save Checkpoint" in w for w in report.warnings)
    assert not any("differ from the computed edit" in w for w in report.warnings)


def test_scaled_fp8_is_read_dequantized_and_edited_at_compute_time(scapre_nodes, fp8_env):
    import torch

    c = scapre_nodes
    with torch.inference_mode():
        model = _load(c, fp8_env, scaled=True)
        reference = _load(c, fp8_env)  # the same UNet in float16 on disk (float32 here)
        edited, report, record = _erase(c, model, fp8_env["concepts"])
        keys = sorted(record.diffs)
        assert report.info["weights"]["format"] == "scaled float8_e4m3fn"
        assert report.info["weights"]["methods"] == "compute"
        # read as numbers: the scaled weights are the float16 ones up to fp8 rounding, not the raw fp8 codes
        scaled, plain = formats_support.sampled_weights(model, keys), formats_support.sampled_weights(reference, keys)
        for k in keys:
            assert float((scaled[k] - plain[k]).norm() / plain[k].norm()) < 0.1
        measured = formats_support.measured_survival(scaled, formats_support.sampled_weights(edited, keys),
                                                     record.diffs)
        _assert_printed_is_measured(report, measured)
        assert measured["error"] < 1e-4


def test_float16_weights_take_weight_patches(scapre_nodes, fp8_env):
    import comfy.sd
    import torch

    c = scapre_nodes
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(fp8_env["files"]["fp16"]), model_options={"dtype": torch.float16})
        edited, report, record = _erase(c, model, fp8_env["concepts"])
        keys = sorted(record.diffs)
        weights = report.info["weights"]
        assert (weights["format"], weights["methods"]) == ("float16", "patch")
        assert set(keys) <= set(edited.patches)
        measured = formats_support.measured_survival(formats_support.sampled_weights(model, keys),
                                                     formats_support.sampled_weights(edited, keys),
                                                     comfy_support.edit_diffs(edited))
        _assert_printed_is_measured(report, measured)
        assert 0 < measured["error"] < 0.01  # float16 rounding of the stored sum
    assert not any("compute time" in w for w in report.warnings)


def test_a_weak_edit_on_bfloat16_weights_warns(scapre_nodes, fp8_env):
    """bfloat16 weights (8 significant bits) round a weak edit (strength 1e-5) coarsely: the report measures
    that, prints it and warns (pooled error above 5 %)."""
    import comfy.sd
    import torch

    c = scapre_nodes
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(fp8_env["files"]["fp16"]), model_options={"dtype": torch.bfloat16})
        edited, report, record = _erase(c, model, fp8_env["concepts"], strength=1e-5)
        keys = sorted(record.diffs)
        weights = report.info["weights"]
        assert (weights["format"], weights["methods"]) == ("bfloat16", "patch")
        # the dtype ComfyUI computes in on this device (the CPU may cast bfloat16 weights to float32)
        assert weights["compute_dtype"] in ("bfloat16", "float32")
        measured = formats_support.measured_survival(formats_support.sampled_weights(model, keys),
                                                     formats_support.sampled_weights(edited, keys),
                                                     comfy_support.edit_diffs(edited))
        _assert_printed_is_measured(report, measured)
        table = c.run_node("ScaPreReport", report=report)[1]
    assert measured["error"] > 0.05
    _assert_table_prints_measured(table, measured)
    assert "above the warning threshold" in table
    (warning,) = [w for w in report.warnings if "differ from the computed edit" in w]
    assert "bfloat16" in warning and "finer format" in warning


def test_fp8_edits_stack_save_as_lora_and_checkpoint(scapre_nodes, fp8_env, sd15_loaded):
    import safetensors
    import torch

    c = scapre_nodes
    _, clip, vae = sd15_loaded
    out_dir = Path(c.folder_paths.get_output_directory())
    with torch.inference_mode():
        model = _load(c, fp8_env, "fp8_e4m3fn")
        first, _, one = _erase(c, model, fp8_env["concepts"])
        (more,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts="tabby", concept_type="object",
                             expand_templates=False, templates="", guide="", preserve="", probes="")
        second, report, two = _erase(c, first, more)
        keys = sorted(one.diffs)
        assert report.info["computed_on"]["earlier_scapre_edits"] == 1
        assert "1 earlier ScaPre edit" in report.info["computed_on"]["text"]
        base = formats_support.sampled_weights(model, keys)
        both = formats_support.sampled_weights(second, keys)
        for k in keys:  # the second edit was computed on the first one's weights, and both are sampled
            want = one.diffs[k] + two.diffs[k]
            assert float((both[k] - base[k] - want).norm() / want.norm()) < 1e-5

        saved = c.run_node("ScaPreSaveLoRA", model=second, filename_prefix="fp8_twice", rank=0,
                           contents="ScaPre edits")
        lora = out_dir / saved[0]
        meta = json.loads(comfy_support.safetensors_header(lora)["__metadata__"]["scapre"])
        assert [e["weights"]["format"] for e in meta["edits"]] == ["float8_e4m3fn"] * 2
        assert meta["edits"][1]["computed_on"]["earlier_scapre_edits"] == 1
        assert meta["lora"]["applies_to"] == "the original model"
        c.folder_paths.add_model_folder_path("loras", str(lora.parent))
        full = _load(c, fp8_env)  # the same UNet at full precision
        loaded = c.run_node("LoraLoaderModelOnly", model=full, lora_name=lora.name, strength_model=1.0)[0]
        plain, got = formats_support.sampled_weights(full, keys), formats_support.sampled_weights(loaded, keys)
        for k in keys:
            want = one.diffs[k] + two.diffs[k]
            assert float((got[k] - plain[k] - want).norm() / want.norm()) < 1e-5

        c.run_node("ScaPreSaveCheckpoint", model=second, clip=clip, vae=vae, filename_prefix="checkpoints/fp8_edit")
    (path,) = sorted((out_dir / "checkpoints").glob("fp8_edit_*.safetensors"))
    with safetensors.safe_open(str(path), framework="pt") as fh:
        stored = {k: fh.get_tensor("model." + k) for k in keys}
    assert {v.dtype for v in stored.values()} == {torch.float8_e4m3fn}  # the model's own storage
    change = {k: stored[k].float() - base[k] for k in keys}
    written = formats_support.measured_survival({k: torch.zeros_like(v) for k, v in change.items()}, change,
                                                {k: one.diffs[k] + two.diffs[k] for k in keys})
    assert 0.8 < written["surviving"] < 1.2 and written["error"] < 0.5  # the edits, as fp8 can hold them
