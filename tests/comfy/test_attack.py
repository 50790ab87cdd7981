"""ScaPre Attack and ScaPre Attack Prompts inside a real ComfyUI (in-process, CPU), on the random-weight SD1.5 fixture.

ComfyUI executes nodes under ``torch.inference_mode()`` and a checkpoint loaded there holds inference tensors, which
autograd refuses to save; so the fixture here is loaded and every node run under inference mode, as in the server.
Random weights draw noise, so these tests check behaviour (the search moves the soft tokens, determinism, Cancel,
the CONDITIONING output in KSampler, the input models untouched), not whether a concept comes back (that is
``tests/test_attacks_miniworld.py`` and the miniworld benchmark). Budgets are tiny: 64 x 64, one sampling step,
cfg 1, two search steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import comfy_support
import pytest

PACK_ROOT = comfy_support.PACK_ROOT
TINY = dict(seed=3, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", width=64, height=64,
            classifiers="off", template="", soft_tokens=2, attack_steps=2, learning_rate=0.1, norm_limit=1.0,
            train_images=1, strengths="1, 3", images_per_concept=1)


def _pack(c, name: str):
    return sys.modules[c.pack_module().__name__ + "." + name]


@pytest.fixture(scope="module")
def inference_sd15(scapre_nodes, sd15_ckpt_path):
    """(MODEL, CLIP, VAE) loaded under inference mode, as CheckpointLoaderSimple loads them in a server."""
    import torch

    with torch.inference_mode():
        loaded = comfy_support.load_checkpoint(sd15_ckpt_path)
    yield loaded
    del loaded
    comfy_support.free_models()


@pytest.fixture(scope="module")
def cat_edit(scapre_nodes, inference_sd15):
    import torch

    model, clip, _ = inference_sd15
    c = scapre_nodes
    with torch.inference_mode():
        (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts="cat", concept_type="object",
                                 expand_templates=False, templates="", guide="", preserve="", probes="")
        edited = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="uce", strength=3.0,
                            seed=0)[0]
    return concepts, edited


def _attack(c, model, edited, clip, vae, concepts, **kw):
    import torch

    args = dict(TINY, method="soft tokens")
    args.update(kw)
    with torch.inference_mode():
        return c.run_node("ScaPreAttack", original=model, edited=edited, clip=clip, vae=vae, concepts=concepts, **args)


def _kv(model):
    entries = model.get_key_patches("diffusion_model.")
    keys = sorted(comfy_support.attn2_kv_shapes(model))[:2]
    return {k: entries[k][0][0].detach().float().clone() for k in keys}


def test_schemas_tooltips_help_and_output_list(scapre_nodes):
    for node_id in ("ScaPreAttack", "ScaPreAttackPrompts"):
        schema = scapre_nodes.node_class(node_id).GET_SCHEMA()
        assert schema.category == "ScaPre" and schema.description and node_id.startswith("ScaPre")
        for item in [*schema.inputs, *schema.outputs]:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
        assert (PACK_ROOT / "web" / "docs" / f"{node_id}.md").is_file()
    outputs = {o.id: o for o in scapre_nodes.node_class("ScaPreAttack").GET_SCHEMA().outputs}
    assert outputs["conditioning"].is_output_list and not outputs["grid"].is_output_list
    compare = {i.id for i in scapre_nodes.node_class("ScaPreCompare").GET_SCHEMA().inputs}
    assert "attack_prompts" in compare


def test_soft_tokens_search_in_inference_mode_and_leave_the_models_alone(scapre_nodes, inference_sd15, cat_edit):
    import torch

    model, clip, vae = inference_sd15
    concepts, edited = cat_edit
    glue = _pack(scapre_nodes, "nodes.glue.attack")
    before = (_kv(model), dict(edited.patches), edited.patches_uuid, dict(model.patches))
    out = _attack(scapre_nodes, model, edited, clip, vae, concepts)
    conditionings, grid, images, table = out[0], out[1], out[2], out[3]
    assert len(conditionings) == 1
    cond, extra = conditionings[0][0]
    assert cond.shape == (1, 77, 768) and torch.isfinite(cond).all() and "pooled_output" in extra
    # the soft tokens sit in the filler's places, and the search moved them; every other position is the template's
    template, slots = glue.soft_template(clip, "an image of {c}", 2)
    base = template[0][0][0].float()
    others = [i for i in range(77) if i not in slots]
    assert torch.equal(cond[0, others], base[others])
    assert not torch.equal(cond[0, slots], base[slots])
    limit = float(base[1:].norm(dim=-1).max())
    assert float(cond[0, slots].norm(dim=-1).max()) <= limit * (1 + 1e-5)
    assert images.shape == (3, 64, 64, 3) and grid.ndim == 4  # original, plain edit, attacked
    (result,) = out.ui["scapre_attack"]
    assert set(result["recovery"]) == {"soft tokens", "all"} and result["search"]["cat"]["steps"] == 2
    assert "| soft tokens |" in table and "recovered: the attacked image" in table
    saved = Path(scapre_nodes.folder_paths.get_output_directory()) / result["file"]
    assert json.loads(saved.read_text())["records"][0]["concept"] == "cat"
    assert (saved.parent / Path(result["tensors"]).name).is_file()
    after = (_kv(model), dict(edited.patches), edited.patches_uuid, dict(model.patches))
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1].keys() == after[1].keys() and before[2] == after[2] and before[3] == after[3]


def test_same_seed_same_bits_other_seed_other_tokens(scapre_nodes, inference_sd15, cat_edit):
    import torch

    model, clip, vae = inference_sd15
    concepts, edited = cat_edit
    first = _attack(scapre_nodes, model, edited, clip, vae, concepts)
    again = _attack(scapre_nodes, model, edited, clip, vae, concepts)
    assert torch.equal(first[0][0][0][0], again[0][0][0][0]) and torch.equal(first[2], again[2])
    other = _attack(scapre_nodes, model, edited, clip, vae, concepts, seed=4)
    assert not torch.equal(first[0][0][0][0], other[0][0][0][0])


def test_cancel_stops_the_search(scapre_nodes, inference_sd15, cat_edit, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    model, clip, vae = inference_sd15
    concepts, edited = cat_edit
    ticks = []
    real = comfy.utils.ProgressBar.update

    def update(self, value):
        ticks.append(value)
        if len(ticks) == 4:  # after the samplings, within the search
            mm.interrupt_current_processing(True)
        return real(self, value)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update", update)
    folder = Path(scapre_nodes.folder_paths.get_output_directory()) / "scapre"
    saved = set(folder.glob("attack_*")) if folder.is_dir() else set()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _attack(scapre_nodes, model, edited, clip, vae, concepts, attack_steps=50)
    finally:
        mm.interrupt_current_processing(False)
    assert len(ticks) == 4  # stopped at the next tick, not after 50 steps
    assert (set(folder.glob("attack_*")) if folder.is_dir() else set()) == saved


def test_conditioning_samples_in_ksampler_and_vector_gives_one_per_strength(scapre_nodes, inference_sd15, cat_edit):
    import torch

    model, clip, vae = inference_sd15
    concepts, edited = cat_edit
    c = scapre_nodes
    out = _attack(c, model, edited, clip, vae, concepts, method="concept vector")
    assert len(out[0]) == 2  # strengths 1 and 3
    (result,) = out.ui["scapre_attack"]
    assert set(result["recovery"]) == {"vector x1", "vector x3", "all"}
    assert not torch.equal(out[0][0][0][0], out[0][1][0][0])
    with torch.inference_mode():
        (neg,) = c.run_node("CLIPTextEncode", text="", clip=clip)
        (latent,) = c.run_node("EmptyLatentImage", width=64, height=64, batch_size=1)
        samples = [c.run_node("KSampler", model=edited, seed=3, steps=1, cfg=1.0, sampler_name="euler",
                              scheduler="normal", positive=positive, negative=neg, latent_image=latent,
                              denoise=1.0)[0]["samples"] for positive in out[0]]
        (decoded,) = c.run_node("VAEDecode", samples={"samples": samples[1]}, vae=vae)
    assert all(s.shape == (1, 4, 8, 8) and torch.isfinite(s).all() for s in samples)
    assert not torch.equal(samples[0], samples[1])
    # KSampler with the found conditioning and the node's seed draws the node's attacked image
    assert torch.allclose(decoded[..., :3].float().clamp(0, 1), out[2][3:4], atol=1e-5)


def test_attack_prompts_feed_compare_with_recovery_per_kind(scapre_nodes, inference_sd15, cat_edit):
    import torch

    model, clip, vae = inference_sd15
    concepts, edited = cat_edit
    c = scapre_nodes
    with torch.inference_mode():
        prompts, text = c.run_node("ScaPreAttackPrompts", clip=clip, concepts=concepts, concept_type="object",
                                   synonym=True, neighbour=True, context=True, misspelling=False, language=False,
                                   per_kind=1, synonyms="kitten", translations="", seed=0)
        kinds = [v.kind for v in prompts.variants]
        assert kinds == ["plain", "plain", "synonym", "neighbour", "context"]
        neighbour = next(v for v in prompts.variants if v.kind == "neighbour")
        assert neighbour.word.isalpha() and neighbour.word.lower() != "cat"
        assert text.splitlines()[:2] == ["an image of cat", "cat in a scene"]
        out = c.run_node("ScaPreCompare", original=model, edited=edited, clip=clip, vae=vae, concepts=concepts,
                         erased_prompts="", kept_prompts="a red car", seed=1, images_per_prompt=1, steps=1, cfg=1.0,
                         sampler_name="euler", scheduler="normal", width=64, height=64, classifiers="off",
                         attack_prompts=prompts)
    (result,) = out.ui["scapre_compare"]
    by_prompt = {p["prompt"]: p for p in result["prompts"]}
    assert by_prompt["an image of cat"]["kind"] == "erased" and by_prompt["an image of cat"]["variant"] == "plain"
    assert by_prompt["an image of kitten"]["kind"] == "attack"
    assert result["per_kind"]["erased"]["prompts"] == 2  # attack prompts stay out of erasure and retention
    escaped = result["attack"]["escaped"]
    assert {"plain", "synonym", "neighbour", "context", "all"} <= set(escaped)
    assert escaped["all"]["images"] == 5
    assert "### attack prompts" in out[2]

