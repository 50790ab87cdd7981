"""ScaPre Compare inside a real ComfyUI (in-process, CPU) on the random-weight SD1.5 fixture.

Random weights give noise images, so these tests check behaviour (same noise, zero change for a no-op
edit, caching, pages, cancel), not quality. Sampling is tiny: 64 x 64, one step, cfg 1 (no uncond pass).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import comfy_support
import pytest

PACK_ROOT = comfy_support.PACK_ROOT
TINY = dict(seed=7, images_per_prompt=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", width=64,
            height=64, classifiers="off")


def _pack(c, name: str):
    return sys.modules[c.pack_module().__name__ + "." + name]


def _compare(c, original, edited, clip, vae, **kw):
    args = dict(TINY, erased_prompts="", kept_prompts="")
    args.update(kw)
    return c.run_node("ScaPreCompare", original=original, edited=edited, clip=clip, vae=vae, **args)


def _result(out) -> dict:
    (result,) = out.ui["scapre_compare"]
    return result


@pytest.fixture()
def clear_cache(scapre_nodes):
    _pack(scapre_nodes, "nodes.compare")._ORIGINALS.clear()
    yield
    _pack(scapre_nodes, "nodes.compare")._ORIGINALS.clear()


@pytest.fixture()
def count_samples(scapre_nodes, monkeypatch):
    """Counts calls of ComfyUI's comfy.sample.sample (each one generation of the node)."""
    import comfy.sample

    calls = []
    real = comfy.sample.sample

    def counting(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", counting)
    return calls


@pytest.fixture(scope="module")
def cat_edit(scapre_nodes, sd15_loaded):
    model, clip, _ = sd15_loaded
    c = scapre_nodes
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts="cat", concept_type="object",
                             expand_templates=False, templates="", guide="", preserve="", probes="tiger")
    values = _pack(c, "scapre_core").ScaPreConfig(erase_scale=3.0).to_dict()
    edited = c.run_node("ScaPreErase", model=model, concepts=concepts, edit="keys and values", **values)[0]
    return concepts, edited


def test_schema_tooltips_and_help(scapre_nodes):
    cls = scapre_nodes.node_class("ScaPreCompare")
    schema = cls.GET_SCHEMA()
    assert schema.category == "ScaPre" and schema.description and schema.is_output_node
    for item in [*schema.inputs, *schema.outputs]:
        assert item.tooltip, f"ScaPreCompare.{item.id} has no tooltip"
    import comfy.samplers

    combos = {i.id: i.options for i in schema.inputs if hasattr(i, "options")}
    assert combos["sampler_name"] == list(comfy.samplers.KSampler.SAMPLERS)
    assert combos["scheduler"] == list(comfy.samplers.KSampler.SCHEDULERS)
    assert (PACK_ROOT / "web" / "docs" / "ScaPreCompare.md").is_file()


def test_noop_edit_changes_nothing(scapre_nodes, sd15_loaded, clear_cache):
    import torch

    model, clip, vae = sd15_loaded
    out = _compare(scapre_nodes, model, model.clone(), clip, vae, erased_prompts="a photo of a cat",
                   kept_prompts="a red car")
    grid, images, table = out[0], out[1], out[2]
    result = _result(out)
    assert result["erasure"] == 0.0 and result["retention"] == 1.0 and result["gap"] == 0.0
    assert [p["change"] for p in result["prompts"]] == [0.0, 0.0]
    assert images.shape == (4, 64, 64, 3)  # per prompt: original, edited
    assert torch.equal(images[0], images[1]) and torch.equal(images[2], images[3])
    assert not torch.equal(images[0], images[2])  # different prompts, different images
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    assert "| erased | a photo of a cat |" in table and "retention 1.000" in table
    saved = Path(scapre_nodes.folder_paths.get_output_directory()) / result["file"]
    assert saved.parent.name == "scapre" and saved.name.startswith("compare_")
    assert json.loads(saved.read_text())["prompts"][0]["prompt"] == "a photo of a cat"


def test_same_seed_same_originals_and_cache(scapre_nodes, sd15_loaded, cat_edit, clear_cache, count_samples):
    import torch

    model, clip, vae = sd15_loaded
    concepts, edited = cat_edit
    first = _compare(scapre_nodes, model, edited, clip, vae, concepts=concepts)
    prompts = [p["prompt"] for p in _result(first)["prompts"]]
    assert prompts == ["an image of cat", "cat in a scene", "an image of tiger", "tiger in a scene"]
    assert len(count_samples) == 8 and sum(m is model for m in count_samples) == 4
    # a repeated run with another edited model samples only the edited side
    count_samples.clear()
    again = _compare(scapre_nodes, model, model.clone(), clip, vae, concepts=concepts)
    assert len(count_samples) == 4 and not any(m is model for m in count_samples)
    originals_first = first[1][0::2]
    assert torch.equal(again[1][0::2], originals_first)
    # without the cache the originals come out bit-identical (same seed, same noise)
    _pack(scapre_nodes, "nodes.compare")._ORIGINALS.clear()
    count_samples.clear()
    fresh = _compare(scapre_nodes, model, edited, clip, vae, concepts=concepts)
    assert len(count_samples) == 8
    assert torch.equal(fresh[1], first[1])
    # another seed: new originals
    other = _compare(scapre_nodes, model, edited, clip, vae, concepts=concepts, seed=8)
    assert not torch.equal(other[1][0::2], originals_first)


def test_real_edit_changes_the_erased_prompts(scapre_nodes, sd15_loaded, cat_edit, clear_cache):
    model, clip, vae = sd15_loaded
    concepts, edited = cat_edit
    out = _compare(scapre_nodes, model, edited, clip, vae, concepts=concepts, images_per_prompt=2)
    result = _result(out)
    erased = [p for p in result["prompts"] if p["kind"] == "erased"]
    assert erased and all(p["change"] > 0 for p in erased)
    assert all(len(p["changes"]) == 2 for p in result["prompts"])
    assert result["erasure"] > 0 and result["per_concept"]["cat"]["erased"]["prompts"] == 2
    assert out[1].shape[0] == 4 * 2 * 2
    assert 0 <= result["retention"] <= 1 and result["gap"] == pytest.approx(
        result["erasure"] - (1 - result["retention"]))


@pytest.mark.parametrize("count", [1, 10, 40])
def test_grid_pages_and_labels(scapre_nodes, count):
    import torch

    grid = _pack(scapre_nodes, "nodes.grid")
    rows = [grid.GridRow(f"kept | prompt number {i} | change 0.{i:03d}", torch.rand(2, 64, 48, 3),
                         torch.rand(2, 64, 48, 3)) for i in range(count)]
    pages, labels = grid.render_pages(rows)
    expected_pages = -(-count // grid.ROWS_PER_PAGE)
    assert pages.shape[0] == expected_pages and len(labels) == expected_pages
    assert [label for page in labels for label in page] == [r.label for r in rows]
    height = grid.HEADER_H + grid.ROWS_PER_PAGE * (grid.LABEL_H + 64 + grid.GAP)
    assert pages.shape[1:] == (height, grid.MIN_WIDTH, 3)
    # the label band holds text (light pixels on the dark background); images sit under it
    band = pages[0, grid.HEADER_H:grid.HEADER_H + grid.LABEL_H]
    assert float(band.max()) > 0.8
    first_cell = pages[0, grid.HEADER_H + grid.LABEL_H:grid.HEADER_H + grid.LABEL_H + 64, 8:56]
    assert torch.allclose(first_cell, rows[0].original[0], atol=1 / 255 + 1e-6)


def test_cancel_stops_between_generations(scapre_nodes, sd15_loaded, clear_cache):
    import comfy.model_management as mm

    model, clip, vae = sd15_loaded
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _compare(scapre_nodes, model, model.clone(), clip, vae, erased_prompts="a cat")
    finally:
        mm.interrupt_current_processing(False)
    assert not _pack(scapre_nodes, "nodes.compare")._ORIGINALS


def test_missing_classifier_is_reported_not_raised(scapre_nodes, sd15_loaded, clear_cache, monkeypatch):
    model, clip, vae = sd15_loaded
    clf = _pack(scapre_nodes, "scapre_core.evaluation.classifiers")
    monkeypatch.setattr(clf, "missing", lambda name: f"{name} measure: pip install something")
    out = _compare(scapre_nodes, model, model.clone(), clip, vae, erased_prompts="a cat", classifiers="both")
    notes = _result(out)["notes"]
    assert any("nudenet measure: pip install" in n for n in notes)
    assert any("imagenet measure: pip install" in n for n in notes)
    assert "pip install something" in out[2]


def test_classifier_measures_run_when_installed(scapre_nodes, sd15_loaded, clear_cache, monkeypatch, tmp_path):
    clf = _pack(scapre_nodes, "scapre_core.evaluation.classifiers")
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None or clf.missing("nudenet") \
            or not clf.imagenet_labels():
        pytest.skip("comfyui-scapre[eval] packages not installed in this ComfyUI")
    # the ImageNet weights are read from safetensors only: a seeded random EfficientNet-Lite0 stands in
    import safetensors.torch
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    weights = tmp_path / "lite0.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in EfficientNet.from_name("efficientnet-lite0")
                                 .state_dict().items()}, str(weights))
    monkeypatch.setenv(clf.WEIGHTS_ENV, str(weights))
    assert clf.missing("imagenet") is None
    model, clip, vae = sd15_loaded
    c = scapre_nodes
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts="tench", concept_type="object",
                             expand_templates=False, templates="", guide="", preserve="", probes="goldfish")
    out = _compare(c, model, model.clone(), clip, vae, concepts=concepts, classifiers="both")
    result = _result(out)
    assert not result["notes"]
    by_prompt = {p["prompt"]: p for p in result["prompts"]}
    assert by_prompt["an image of tench"]["imagenet_class"] == "tench"
    assert by_prompt["goldfish in a scene"]["imagenet_class"] == "goldfish"
    for p in result["prompts"]:
        # a no-op edit: the classifier sees the same images on both sides
        assert p["imagenet_original"] == p["imagenet_edited"] and 0 <= p["imagenet_edited"] <= 1
        assert p["nudenet_original"] == p["nudenet_edited"] == 0  # noise images have no exposed parts
    figures = result["classifiers"]
    assert figures["imagenet"]["forgetting_accuracy"]["prompts"] == 2
    assert figures["imagenet"]["kept_accuracy"]["prompts"] == 2
    assert figures["nudenet"]["erased_exposed_per_image"]["edited"] == 0
    assert "imagenet: forgetting accuracy" in out[2]


def test_bad_inputs(scapre_nodes, sd15_loaded):
    model, clip, vae = sd15_loaded
    with pytest.raises(ValueError, match="nothing to compare"):
        _compare(scapre_nodes, model, model, clip, vae)
    with pytest.raises(ValueError, match="ScaPre Concept Encode"):
        _compare(scapre_nodes, model, model, clip, vae, concepts="cat")


def test_clip_vision_cosine(scapre_nodes, sd15_loaded, cat_edit, clear_cache, tmp_path):
    """A tiny random-weight CLIP vision model (ComfyUI's own class): identical images give cosine 1."""
    import comfy.clip_vision
    import torch

    config = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64,
              "image_size": 224, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
              "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 4,
              "num_channels": 3, "num_hidden_layers": 2, "patch_size": 32, "projection_dim": 32,
              "torch_dtype": "float32"}
    path = tmp_path / "tiny_clip_vision.json"
    path.write_text(json.dumps(config))
    vision = comfy.clip_vision.ClipVisionModel(str(path))
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.ones_like(v) if k.endswith("weight") and v.ndim == 1 else
                 torch.zeros_like(v) if k.endswith("bias") else torch.randn(v.shape, generator=gen) * 0.05)
             for k, v in vision.model.state_dict().items()}
    vision.load_sd(state)
    model, clip, vae = sd15_loaded
    edited = cat_edit[1]
    same = _result(_compare(scapre_nodes, model, model.clone(), clip, vae, erased_prompts="a cat",
                            clip_vision=vision))
    assert same["prompts"][0]["clip_cosine"] == pytest.approx(1.0, abs=1e-6)
    moved = _compare(scapre_nodes, model, edited, clip, vae, erased_prompts="a cat", clip_vision=vision)
    assert -1 <= _result(moved)["prompts"][0]["clip_cosine"] < 1.0
    assert "clip cosine" in moved[2]
