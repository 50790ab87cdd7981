"""SD2.x (v-prediction, OpenCLIP-H text 1024 wide) and the SDXL refiner (CLIP-G alone, 1280 wide) end to end:
random-weight checkpoints made with ComfyUI's own classes (``formats_support.build_family_checkpoint``: small
UNets that ComfyUI's detection still reads as SD20 / SDXLRefiner, text encoders at their real size), encoded with
their own CLIP, erased, sampled, saved as a LoRA (and, for SD2.x, as a checkpoint that loads back as v-prediction)."""

from __future__ import annotations

from pathlib import Path

import comfy_support
import formats_support
import pytest

#: Run apart from the in-process SD1.5 model, with the SDXL family (tests/run_all.sh): the refiner's CLIP-G alone
#: is 2.8 GB in float32.
pytestmark = pytest.mark.sdxl

FAMILIES = {
    # arch: (ComfyUI model class, text width, cross-attention matrices, rows per matrix)
    "sd2v": ("SD20", 1024, 32, 320),
    "refiner": ("SDXLRefiner", 1280, 46, 384),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, comfy_inprocess, comfy_path, comfy_python, scapre_test_cache):
    arch = request.param
    path = formats_support.ensure_family_checkpoint(arch, comfy_path=comfy_path, python=comfy_python,
                                                    directory=scapre_test_cache)
    loaded = comfy_support.load_checkpoint(path)
    yield arch, path, loaded
    del loaded
    comfy_support.free_models()


def _weights(model, keys):
    import comfy.model_management as mm
    import comfy.utils

    mm.load_models_gpu([model], force_patch_weights=True)
    return {k: comfy.utils.get_attr(model.model, k).detach().float().cpu().clone() for k in keys}


def test_family_end_to_end(scapre_nodes, family):
    import comfy.model_base
    import safetensors
    import torch

    c = scapre_nodes
    arch, _path, (model, clip, vae) = family
    cls_name, width, matrices, rows = FAMILIES[arch]
    assert type(model.model.model_config).__name__ == cls_name
    expected_type = comfy.model_base.ModelType.V_PREDICTION if arch == "sd2v" else comfy.model_base.ModelType.EPS
    assert model.model.model_type == expected_type
    out_dir = Path(c.folder_paths.get_output_directory())
    with torch.inference_mode():
        (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts="Van Gogh", concept_type="style",
                                 expand_templates=False, templates="", guide="", preserve="",
                                 probes="Claude Monet")
        assert concepts.width == width
        edited, report = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="uce",
                                    strength=1.0, seed=0)[:2]
        record = edited.model_options["scapre_edits"][-1]
        keys = sorted(record.diffs)
        assert len(keys) == matrices and len(report.matrices) == matrices
        assert {tuple(d.shape) for d in record.diffs.values()} == {(rows, width)}
        assert report.summary()["mean_efficacy"] > 0.0

        (pos,) = c.run_node("CLIPTextEncode", text="a painting in the style of Van Gogh", clip=clip)
        (neg,) = c.run_node("CLIPTextEncode", text="", clip=clip)
        (latent,) = c.run_node("EmptyLatentImage", width=64, height=64, batch_size=1)
        samples = {}
        for name, m in (("original", model), ("edited", edited)):
            (out,) = c.run_node("KSampler", model=m, seed=0, steps=1, cfg=2.0, sampler_name="euler",
                                scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
            samples[name] = out["samples"]
        assert torch.isfinite(samples["edited"]).all() and not torch.equal(samples["original"], samples["edited"])

        target = _weights(edited, keys)
        saved = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix=f"{arch}_edit", rank=0,
                           contents="ScaPre edits")
        lora = out_dir / saved[0]
        c.folder_paths.add_model_folder_path("loras", str(lora.parent))
        loaded = c.run_node("LoraLoaderModelOnly", model=model, lora_name=lora.name, strength_model=1.0)[0]
        got = _weights(loaded, keys)
        assert max(float((got[k] - target[k]).norm() / target[k].norm()) for k in keys) < 1e-5

        if arch == "sd2v":
            c.run_node("ScaPreSaveCheckpoint", model=edited, clip=clip, vae=vae, filename_prefix="checkpoints/sd2v")
    if arch == "sd2v":  # the saved checkpoint is still SD2.x v-prediction and holds the edit
        (saved_ckpt,) = sorted((out_dir / "checkpoints").glob("sd2v_*.safetensors"))
        with safetensors.safe_open(str(saved_ckpt), framework="pt") as fh:
            stored = {k: fh.get_tensor("model." + k).float() for k in keys}
        assert max(float((stored[k] - target[k]).norm() / target[k].norm()) for k in keys) < 1e-3
        again = comfy_support.load_checkpoint(saved_ckpt)[0]
        assert again.model.model_type == comfy.model_base.ModelType.V_PREDICTION
        del again
