"""The pack's nodes inside a real ComfyUI (in-process, CPU), on random-weight SD1.5 and SDXL-family models.

Run with the ComfyUI venv's python and ``COMFYUI_PATH`` (see README); skipped without them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import comfy_support
import pytest
import torch

log = logging.getLogger("scapre.comfy_tests")

NODE_IDS = {"ScaPreConceptEncode", "ScaPreInformax", "ScaPreEraseSimple", "ScaPreSettings", "ScaPreErase",
            "ScaPreReport", "ScaPreSaveLoRA", "ScaPreSaveCheckpoint", "ScaPreCompare", "ScaPreAttackPrompts",
            "ScaPreAttack"}
#: The legacy ScaPreErase node's widgets in the order saved workflows store their values: never change it.
LEGACY_WIDGETS = ["edit", "variant", "lam", "erase_scale", "preserve_scale", "technique", "p", "mi_temperature",
                  "mi_samples", "noise_sigma", "use_informax", "entropy_samples", "entropy_bins", "mu_from_entropy",
                  "mu", "ased", "t_sigma", "p_sigma", "bures_iters", "egbr", "alpha_min", "svd_residual", "seed",
                  "mi_estimator", "precision"]
PACK_ROOT = comfy_support.PACK_ROOT


def _core(c):
    """The pack's scapre_core as ComfyUI imported it (relative to the pack module)."""
    import sys

    return sys.modules[c.pack_module().__name__ + ".scapre_core"]


def _defaults(c) -> dict:
    return _core(c).ScaPreConfig().to_dict()


def _encode(c, clip, concepts="cat, golden retriever", **kw):
    args = dict(concept_type="object", expand_templates=False, templates="", guide="", preserve="dog",
                probes="tiger")
    args.update(kw)
    return c.run_node("ScaPreConceptEncode", clip=clip, concepts=concepts, **args)


def _erase(c, model, concepts, informax=None, edit="keys and values", **overrides):
    """The legacy node (every field a widget): the reference the new nodes are checked against."""
    values = {**_defaults(c), **overrides}
    extra = {} if informax is None else {"informax": informax}
    return c.run_node("ScaPreErase", model=model, concepts=concepts, edit=edit, **extra, **values)


def _erase_simple(c, model, concepts, preset="custom", strength=1.0, seed=0, **optional):
    return c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset=preset, strength=strength,
                      seed=seed, **optional)


def _diffs(edited):
    return comfy_support.edit_diffs(edited)


def _same_edit(a, b) -> bool:
    da, db = _diffs(a), _diffs(b)
    return set(da) == set(db) and all(bool((da[k] == db[k]).all()) for k in da)


def _sample(c, model, clip, seed=0):
    (pos,) = c.run_node("CLIPTextEncode", text="a photo of a cat", clip=clip)
    (neg,) = c.run_node("CLIPTextEncode", text="", clip=clip)
    (latent,) = c.run_node("EmptyLatentImage", width=64, height=64, batch_size=1)
    (out,) = c.run_node("KSampler", model=model, seed=seed, steps=1, cfg=2.0, sampler_name="euler",
                        scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    return out["samples"]


def _live_weights(model, keys):
    """The weights ComfyUI computes with for ``model`` (patches applied), as float32 CPU copies."""
    import comfy.model_management as mm

    mm.load_models_gpu([model], force_patch_weights=True)
    sd = model.model.state_dict()
    return {k: sd[k].detach().float().cpu().clone() for k in keys}


def _originals(model, keys):
    entries = model.get_key_patches("diffusion_model.")
    return {k: entries[k][0][0].detach().float().cpu().clone() for k in keys}


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def sd15_edit(scapre_nodes, sd15_loaded):
    """One encode + informax + erase on the SD1.5 fixture, shared by the tests below."""
    model, clip, _ = sd15_loaded
    c = scapre_nodes
    (concepts,) = _encode(c, clip)
    info_inputs = {k: v for k, v in _defaults(c).items() if k in _core(c).INFORMAX_FIELDS}
    (informax,) = c.run_node("ScaPreInformax", model=model, concepts=concepts, **info_inputs)
    result = _erase(c, model, concepts, informax=informax)
    return {"concepts": concepts, "informax": informax, "edited": result[0], "report": result[1], "ui": result.ui}


# ------------------------------------------------------------------------------------------------
# registration and schema
# ------------------------------------------------------------------------------------------------

def test_pack_registers_exactly_its_nodes_with_help(scapre_nodes):
    assert set(scapre_nodes.pack_node_ids) == NODE_IDS
    for node_id in NODE_IDS:
        cls = scapre_nodes.node_class(node_id)
        schema = cls.GET_SCHEMA() if hasattr(cls, "GET_SCHEMA") else cls.define_schema()
        assert schema.category == "ScaPre" and schema.description
        for item in [*schema.inputs, *schema.outputs]:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
        assert (PACK_ROOT / "web" / "docs" / f"{node_id}.md").is_file()
    fields = {f.name for f in dataclasses.fields(_core(scapre_nodes).ScaPreConfig)}
    # every config field is an input of the same name (the legacy node: those it had, in their saved order)
    assert fields <= {i.id for i in scapre_nodes.node_class("ScaPreSettings").GET_SCHEMA().inputs}
    assert set(LEGACY_WIDGETS[1:]) <= {i.id for i in scapre_nodes.node_class("ScaPreErase").GET_SCHEMA().inputs}


def test_erase_nodes_names_and_the_legacy_widget_order(scapre_nodes):
    simple = scapre_nodes.node_class("ScaPreEraseSimple").GET_SCHEMA()
    legacy = scapre_nodes.node_class("ScaPreErase").GET_SCHEMA()
    settings = scapre_nodes.node_class("ScaPreSettings").GET_SCHEMA()
    assert (simple.display_name, simple.is_deprecated) == ("ScaPre Erase", False)
    assert (legacy.display_name, legacy.is_deprecated) == ("ScaPre Erase (legacy)", True)
    assert settings.display_name == "ScaPre Settings"
    # new inputs go last and optional: a workflow saved before them keeps its widget values in place
    assert [i.id for i in simple.inputs] == ["model", "concepts", "preset", "strength", "seed", "informax", "settings",
                                             "report_tokens"]
    report_tokens = simple.inputs[-1]
    assert report_tokens.optional and report_tokens.default == "key" and list(report_tokens.options) == ["key", "full"]
    assert "key" in report_tokens.tooltip and "full" in report_tokens.tooltip
    presets = next(i for i in simple.inputs if i.id == "preset")
    core = _core(scapre_nodes)
    assert list(presets.options) == ["auto", *core.presets.PRESET_NAMES]
    assert presets.default == core.presets.DEFAULT_PRESET == "auto" and "auto: precise (beyond the paper)" in \
        presets.tooltip and all(f"{name}:" in presets.tooltip for name in core.presets.PRESET_NAMES)
    # ScaPre Concept Encode finds look-alikes by default (what preset auto needs to run precise); a prompt made
    # before the input existed runs as then (off)
    encode = scapre_nodes.node_class("ScaPreConceptEncode").GET_SCHEMA()
    look = next(i for i in encode.inputs if i.id == "look_alikes")
    assert look.optional and look.default == "auto" and list(look.options) == ["auto", "preserve prompts", "off"]
    strength = next(i for i in simple.inputs if i.id == "strength")
    assert (strength.min, strength.max, strength.default) == (0.0, 10.0, 1.0) and "0 = no edit" in strength.tooltip
    sockets = {"model", "concepts", "informax"}
    assert [i.id for i in legacy.inputs if i.id not in sockets] == LEGACY_WIDGETS
    # the same widgets, same order, same defaults; fields added later come after them (Settings only)
    assert [i.id for i in settings.inputs] == [*LEGACY_WIDGETS, "strength", "focus_rank", "focus_eps", "overshoot",
                                                   "look_alike_pull"]
    legacy_defaults = {i.id: i.default for i in legacy.inputs if i.id not in sockets}
    assert {i.id: i.default for i in settings.inputs if i.id in legacy_defaults} == legacy_defaults
    assert {i.id: i.tooltip for i in settings.inputs if i.id in legacy_defaults} == {
        i.id: i.tooltip for i in legacy.inputs if i.id not in sockets}


# ------------------------------------------------------------------------------------------------
# the edit on SD1.5
# ------------------------------------------------------------------------------------------------

def test_erase_patches_exactly_the_cross_attention_keys_and_values(scapre_nodes, sd15_loaded, sd15_edit):
    model = sd15_loaded[0]
    edited = sd15_edit["edited"]
    kv = comfy_support.attn2_kv_shapes(model)
    assert len(kv) == 32
    assert set(edited.patches) == set(kv)
    assert edited is not model and edited.model is model.model  # a clone: no second copy of the UNet
    assert not any(k in model.patches for k in kv)
    summary = sd15_edit["ui"]["scapre_summary"][0]
    assert summary["matrices"] == 32 and summary["concepts"] == 2
    assert summary["verdict"] is None  # the legacy node's report reads every token: no calibrated verdict


def test_edited_weights_are_original_plus_the_edit(scapre_nodes, sd15_loaded, sd15_edit):
    model = sd15_loaded[0]
    edited = sd15_edit["edited"]
    keys = sorted(edited.patches)
    originals = _originals(model, keys)
    live = _live_weights(edited, keys)
    diffs = _diffs(edited)
    for k in keys:
        assert _rel(live[k], originals[k] + diffs[k]) < 1e-6
        assert _rel(live[k], originals[k]) > 1e-4  # the edit really changed the weight
    # loading the original patcher again restores the unpatched weights
    assert all(_rel(w, originals[k]) == 0.0 for k, w in _live_weights(model, keys).items())


def test_input_model_samples_bit_identically_and_edited_model_samples(scapre_nodes, sd15_loaded):

    c = scapre_nodes
    model, clip, _ = sd15_loaded
    before = _sample(c, model, clip)
    (concepts,) = _encode(c, clip, concepts="a cat")
    edited = _erase(c, model, concepts)[0]
    after_edit = _sample(c, edited, clip)
    again = _sample(c, model, clip)
    assert torch.equal(before, again)
    assert torch.isfinite(after_edit).all() and not torch.equal(before, after_edit)


def test_precomputed_informax_gives_the_same_edit(scapre_nodes, sd15_loaded, sd15_edit):

    model = sd15_loaded[0]
    inline = _erase(scapre_nodes, model, sd15_edit["concepts"])[0]
    a = _diffs(sd15_edit["edited"])
    b = _diffs(inline)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_informax_settings_win_and_are_reported(scapre_nodes, sd15_loaded, sd15_edit):
    model = sd15_loaded[0]
    result = _erase(scapre_nodes, model, sd15_edit["concepts"], informax=sd15_edit["informax"], p=7.0,
                    edit="values only")
    report = result[1]
    assert report.config["p"] == 2.0
    assert report.info["used"]["replaced_by_informax"] == {"p": 2.0}  # shown on the node, not a silent override
    assert result.ui["scapre_summary"][0]["used"]["informax"] == "from ScaPre Informax"
    assert all(k.endswith("to_v.weight") for k in result[0].patches) and len(result[0].patches) == 16


def test_report_node_and_report_contents(scapre_nodes, sd15_edit):
    report = sd15_edit["report"]
    groups = {p.group for p in report.prompts}
    assert groups == {"erase", "probe", "preserve"}
    assert all(len(p.efficacy_per_matrix) == 32 for p in report.prompts)
    out = scapre_nodes.run_node("ScaPreReport", report=report)
    image, table = out[0], out[1]
    assert tuple(image.shape[:1]) == (1,) and image.shape[-1] == 3 and image.shape[2] == 1600
    assert float(image.std()) > 0.01
    assert "golden retriever" in table and "tiger" in table and "dog" in table


def test_report_tokens_choose_the_report_scope_not_the_edit(scapre_nodes, sd15_loaded, sd15_edit):
    """ScaPre Erase measures its report on the key tokens by default and on every token with report_tokens full:
    the same edit; the legacy node keeps its full report; the scope is in the report, its table and the node's
    summary."""
    c = scapre_nodes
    model = sd15_loaded[0]
    report_module = _core(c).report
    key = _erase_simple(c, model, sd15_edit["concepts"], informax=sd15_edit["informax"])
    full = _erase_simple(c, model, sd15_edit["concepts"], informax=sd15_edit["informax"], report_tokens="full")
    assert _same_edit(key[0], full[0]) and _same_edit(key[0], sd15_edit["edited"])
    assert key[1].info["report_tokens"] == "key" and key.ui["scapre_summary"][0]["report_tokens"] == "key"
    assert full[1].info["report_tokens"] == "full" and full.ui["scapre_summary"][0]["report_tokens"] == "full"
    assert sd15_edit["report"].info["report_tokens"] == "full"  # the legacy node, as before
    assert [p.efficacy for p in full[1].prompts] == [p.efficacy for p in sd15_edit["report"].prompts]
    assert [p.efficacy for p in key[1].prompts] != [p.efficacy for p in full[1].prompts]
    assert [p.text for p in key[1].prompts] == [p.text for p in full[1].prompts]
    (_, table) = c.run_node("ScaPreReport", report=key[1])[:2]
    assert f"- measured on: {report_module.describe_scope('key')} (report tokens: key)" in table
    with pytest.raises(ValueError, match="report tokens must be one of"):
        _erase_simple(c, model, sd15_edit["concepts"], report_tokens="some")


def test_edit_again_and_compose_with_lora(scapre_nodes, sd15_loaded, sd15_edit, tmp_path):
    """A second edit reads the first edit's weights; saving writes the sum; a LoRA loads under and over."""

    c = scapre_nodes
    model, clip, _ = sd15_loaded
    first = sd15_edit["edited"]
    (more,) = _encode(c, clip, concepts="tabby", preserve="", probes="")
    second = _erase(c, first, more)[0]
    records = second.model_options["scapre_edits"]
    assert len(records) == 2 and len(first.model_options["scapre_edits"]) == 1
    one, two = comfy_support.edit_diffs(second, 0), comfy_support.edit_diffs(second, 1)
    keys = sorted(second.patches)
    live = _live_weights(second, keys)
    base = _originals(model, keys)
    for k in keys:
        assert _rel(live[k], base[k] + one[k] + two[k]) < 1e-6

    saved = c.run_node("ScaPreSaveLoRA", model=second, filename_prefix="scapre_twice", rank=0)
    lora_file = Path(c.folder_paths.get_output_directory()) / saved[0]
    assert lora_file.is_file() and lora_file.parent.name == "loras"
    c.folder_paths.add_model_folder_path("loras", str(lora_file.parent))
    (reloaded, _) = c.run_node("LoraLoader", model=model, clip=clip, lora_name=lora_file.name,
                               strength_model=1.0, strength_clip=1.0)
    again = _live_weights(reloaded, keys)
    for k in keys:
        assert _rel(again[k], live[k]) < 1e-5
    # an erase after a LoRA starts from the LoRA'd weights
    (after_lora,) = [_erase(c, reloaded, more)[0]]
    rec = _diffs(after_lora)
    w_in = _live_weights(reloaded, keys)
    w_out = _live_weights(after_lora, keys)
    assert all(torch.allclose(w_out[k], w_in[k] + rec[k], atol=1e-5) for k in keys)


# ------------------------------------------------------------------------------------------------
# saving
# ------------------------------------------------------------------------------------------------

def test_save_lora_exact_and_low_rank(scapre_nodes, sd15_loaded, sd15_edit):
    c = scapre_nodes
    model, clip, _ = sd15_loaded
    edited = sd15_edit["edited"]
    keys = sorted(edited.patches)
    target = _live_weights(edited, keys)
    out_dir = Path(c.folder_paths.get_output_directory())
    exact = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix="scapre_exact", rank=0)
    low = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix="loras/scapre_low", rank=8)
    saved_rank = {exact[0]: 0, low[0]: 8}
    for saved in (exact, low):
        path = out_dir / saved[0]
        header = comfy_support.safetensors_header(path)
        recorded = json.loads(header["__metadata__"]["scapre"])
        assert recorded["format"] == "scapre-metadata/1" and recorded["version"] == _core(c).__version__
        assert recorded["concepts"] == ["cat", "golden retriever"] and "lam" in recorded["edits"][0]["config"]
        assert recorded["lora"]["rank"] == saved_rank[saved[0]]
        assert path.with_name(path.name.replace(".safetensors", ".scapre.json")).is_file()
        c.folder_paths.add_model_folder_path("loras", str(path.parent))
    exact_model = c.run_node("LoraLoader", model=model, clip=clip, lora_name=Path(exact[0]).name,
                             strength_model=1.0, strength_clip=1.0)[0]
    got = _live_weights(exact_model, keys)
    assert max(_rel(got[k], target[k]) for k in keys) < 1e-5
    recorded = json.loads(comfy_support.safetensors_header(out_dir / low[0])["__metadata__"]["scapre"])
    error = recorded["lora"]["rel_error"]
    assert 0 < error < 1
    low_model = c.run_node("LoraLoader", model=model, clip=clip, lora_name=Path(low[0]).name,
                           strength_model=1.0, strength_clip=1.0)[0]
    got = _live_weights(low_model, keys)
    base = _originals(model, keys)
    num = sum(float((got[k] - target[k]).pow(2).sum()) for k in keys)
    den = sum(float((target[k] - base[k]).pow(2).sum()) for k in keys)
    assert (num / den) ** 0.5 == pytest.approx(error, rel=0.05, abs=1e-3)


@pytest.mark.parametrize("saver", ["ScaPreSaveCheckpoint", "CheckpointSave"])
def test_saved_checkpoint_holds_the_edited_weights(scapre_nodes, sd15_loaded, sd15_edit, saver):
    import safetensors.torch

    c = scapre_nodes
    _, clip, vae = sd15_loaded
    edited = sd15_edit["edited"]
    keys = sorted(edited.patches)
    target = _live_weights(edited, keys)
    prefix = f"checkpoints/edited_{saver}"
    c.run_node(saver, model=edited, clip=clip, vae=vae, filename_prefix=prefix)
    folder = Path(c.folder_paths.get_output_directory()) / "checkpoints"
    (path,) = sorted(folder.glob(f"edited_{saver}_*.safetensors"))
    with safetensors.safe_open(str(path), framework="pt") as fh:
        for k in keys:
            saved = fh.get_tensor("model." + k).float()
            assert _rel(saved, target[k]) < 1e-3  # the file keeps the model's storage dtype
        meta = fh.metadata() or {}
    if saver == "ScaPreSaveCheckpoint":
        provenance = json.loads(meta["scapre"])  # the same entry as a LoRA's (README "What a saved file records")
        assert provenance["format"] == "scapre-metadata/1" and provenance["concepts"] == ["cat", "golden retriever"]
        assert provenance["edits"][0]["used"]["informax"] == "from ScaPre Informax"
        assert path.with_name(path.name.replace(".safetensors", ".scapre.json")).is_file()
    del safetensors


# ------------------------------------------------------------------------------------------------
# bad input, cancel
# ------------------------------------------------------------------------------------------------

def test_look_alikes_are_found_shown_and_used_by_the_precise_preset(scapre_nodes, sd15_loaded, sd15_edit):
    c = scapre_nodes
    model, clip, _ = sd15_loaded
    found = _encode(c, clip, concepts="cat", preserve="dog", probes="", look_alikes="auto")
    payload = found[0]
    (near,) = payload.look_alikes.values()
    assert list(payload.look_alikes) == ["cat"] and len(near) == 2 and "cat" not in near
    assert f"look-alikes of cat: {', '.join(near)}" in found.ui["text"][0]
    precise = _erase_simple(c, model, payload, preset="precise")
    note = f"look-alikes: cat -> {', '.join(near)}"
    assert any(note in w for w in precise[1].warnings) and any(note in w for w in precise.ui["scapre_summary"][0]
                                                               ["warnings"])
    assert precise[1].info["look_alikes"] == {"cat": list(near)} and _diffs(precise[0])
    (plain,) = _encode(c, clip, concepts="cat", preserve="dog", probes="", look_alikes="off")
    with pytest.raises(ValueError, match="look_alikes"):
        _erase_simple(c, model, plain, preset="precise")
    # the published presets do not read the look-alikes: the same edit with and without them
    uce = _erase_simple(c, model, payload, preset="uce")
    assert _same_edit(uce[0], _erase_simple(c, model, plain, preset="uce")[0])
    # ... so their guide is still the empty prompt, and the verdict keeps its caveat
    assert uce[1].info["look_alike_share"] == 0 and precise[1].info["look_alike_share"] == 1
    assert "empty prompt" in uce.ui["scapre_summary"][0]["verdict"]["caveat"]
    assert precise.ui["scapre_summary"][0]["verdict"]["caveat"] == ""
    # above strength 1 they do (beyond the paper): the guides move towards the nearest look-alike, all the way at 3
    further = _erase_simple(c, model, payload, preset="uce", strength=3.0)
    moved = f"guides moved 100% of the way towards the look-alikes: cat -> {near[0]}"
    assert any(moved in w for w in further[1].warnings)
    without = _erase_simple(c, model, plain, preset="uce", strength=3.0)
    assert any("guides stay as published" in w for w in without[1].warnings)
    assert not _same_edit(further[0], without[0])
    assert further[1].info["look_alike_share"] == 1 and without[1].info["look_alike_share"] == 0
    assert further.ui["scapre_summary"][0]["verdict"]["caveat"] == ""
    assert without.ui["scapre_summary"][0]["verdict"]["caveat"]
    half = _erase_simple(c, model, payload, preset="uce", strength=2.0)
    assert any("guides moved 50% of the way" in w for w in half[1].warnings)
    assert half[1].info["look_alike_share"] == 0.5


def test_bad_inputs_give_clear_errors(scapre_nodes, sd15_loaded, sd15_edit):
    c = scapre_nodes
    model, clip, _ = sd15_loaded
    with pytest.raises(ValueError, match="no concepts"):
        _encode(c, clip, concepts=" ,\n")
    with pytest.raises(ValueError, match="guide has 2 lines but there are 3 concepts"):
        _encode(c, clip, concepts="a, b, c", guide="x\ny")
    with pytest.raises(ValueError, match="longer than the text encoder's context window"):
        _encode(c, clip, concepts=" ".join(["word"] * 90))
    with pytest.raises(ValueError, match="erase_scale"):
        _erase(c, model, sd15_edit["concepts"], erase_scale=-1.0)
    with pytest.raises(ValueError, match="no ScaPre edit"):
        c.run_node("ScaPreSaveLoRA", model=model, filename_prefix="x", rank=0)
    with pytest.raises(ValueError, match="output"):
        c.run_node("ScaPreSaveLoRA", model=sd15_edit["edited"], filename_prefix="../../escape", rank=0)
    with pytest.raises(ValueError, match="ScaPre Concept Encode"):
        _erase(c, model, "cat")


def test_cancel_stops_the_edit(scapre_nodes, sd15_loaded, sd15_edit):
    import comfy.model_management as mm

    model = sd15_loaded[0]
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _erase(scapre_nodes, model, sd15_edit["concepts"])
    finally:
        mm.interrupt_current_processing(False)
    assert not any(k in model.patches for k in comfy_support.attn2_kv_shapes(model))


# ------------------------------------------------------------------------------------------------
# ScaPre Erase (presets) and ScaPre Settings against the legacy node
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["artists", "explicit", "few-objects", "uce"])
def test_preset_erase_equals_the_legacy_node_with_the_published_fields(scapre_nodes, sd15_loaded, sd15_edit,
                                                                       preset):
    c = scapre_nodes
    model = sd15_loaded[0]
    simple = _erase_simple(c, model, sd15_edit["concepts"], preset=preset, strength=1.0, seed=3)
    config = _core(c).presets.preset_config(preset, 1.0, 3)
    legacy_values = {k: v for k, v in config.to_dict().items() if k in LEGACY_WIDGETS}
    legacy = _erase(c, model, sd15_edit["concepts"], **legacy_values)
    assert _same_edit(simple[0], legacy[0])
    assert simple[1].config == config.to_dict()
    assert simple.ui["scapre_summary"][0]["matrices"] == 32
    # strength 1.5 (beyond the paper: the method goes further, not 1.5 times the change): the Settings node with
    # the same fields gives the same edit, and it is not the published one
    stronger = _erase_simple(c, model, sd15_edit["concepts"], preset=preset, strength=1.5, seed=3)
    (settings,) = c.run_node("ScaPreSettings", edit="keys and values",
                             **_core(c).presets.preset_config(preset, 1.5, 3).to_dict())
    assert _same_edit(stronger[0], _erase_simple(c, model, sd15_edit["concepts"], settings=settings)[0])
    assert not _same_edit(stronger[0], simple[0])


def test_default_preset_auto_runs_precise_with_look_alikes_else_the_published_run(scapre_nodes, sd15_loaded,
                                                                                  sd15_edit):
    c = scapre_nodes
    model, clip, _ = sd15_loaded
    presets = _core(c).presets
    assert presets.DEFAULT_PRESET == presets.AUTO == "auto"
    # concepts encoded without look-alikes: the published run for what is erased and how many, said on the node
    plain = sd15_edit["concepts"]
    expected = presets.auto_preset(False, plain.concept_type, len(plain.plan.concepts))
    assert expected in presets.PRESET_NAMES and expected != "precise"
    auto = _erase_simple(c, model, plain, preset="auto")
    assert _same_edit(auto[0], _erase_simple(c, model, plain, preset=expected)[0])
    summary = auto.ui["scapre_summary"][0]
    assert summary["used"]["preset"] == "auto" and summary["used"]["ran"] == expected
    assert any(f"preset auto ran {expected}" in w and "look_alikes auto" in w for w in summary["warnings"])
    verdict = summary["verdict"]  # one verdict per erased prompt, with the rule it came from
    assert sum(verdict["counts"].values()) == summary["prompts"] and "miniature worlds" in verdict["rule"]
    assert verdict["caveat"] and "empty prompt" in verdict["caveat"]  # the published runs guide to ""
    # with look-alikes (ScaPre Concept Encode's default): precise, beyond the paper
    (found,) = _encode(c, clip, concepts="cat", preserve="dog", probes="", look_alikes="auto")
    auto = _erase_simple(c, model, found, preset="auto")
    assert _same_edit(auto[0], _erase_simple(c, model, found, preset="precise")[0])
    assert auto.ui["scapre_summary"][0]["used"]["ran"] == "precise"
    assert auto.ui["scapre_summary"][0]["verdict"]["caveat"] == ""  # guided to its look-alike
    # the strength dial on the default: 0 no edit, 0.5 half the change of precise
    config = presets.preset_config("auto")
    assert config == presets.preset_config("precise")
    weaker = _erase_simple(c, model, found, preset="auto", strength=0.5)
    assert weaker[1].config["strength"] == 0.5 * config.strength and not _same_edit(weaker[0], auto[0])
    none = _erase_simple(c, model, found, preset="auto", strength=0.0)
    assert not any(bool(d.any()) for d in _diffs(none[0]).values())
    assert all(p.efficacy == 0 for p in none[1].group("erase"))


def test_published_defaults_equal_the_legacy_node_and_strength_zero_is_no_edit(scapre_nodes, sd15_loaded,
                                                                                sd15_edit):
    c = scapre_nodes
    model = sd15_loaded[0]
    simple = _erase_simple(c, model, sd15_edit["concepts"], preset="custom")
    config = _core(c).presets.preset_config("custom")
    legacy_values = {k: v for k, v in config.to_dict().items() if k in LEGACY_WIDGETS}
    legacy = _erase(c, model, sd15_edit["concepts"], **legacy_values)
    assert _same_edit(simple[0], legacy[0])
    weaker = _erase_simple(c, model, sd15_edit["concepts"], preset="custom", strength=0.5)
    assert weaker[1].config["strength"] == 0.5 * config.strength and not _same_edit(weaker[0], simple[0])
    none = _erase_simple(c, model, sd15_edit["concepts"], preset="custom", strength=0.0)
    assert not any(bool(d.any()) for d in _diffs(none[0]).values())
    assert all(p.efficacy == 0 for p in none[1].group("erase"))


def test_settings_node_replaces_preset_strength_and_seed(scapre_nodes, sd15_loaded, sd15_edit):
    c = scapre_nodes
    model = sd15_loaded[0]
    values = {**_defaults(c), "variant": "scale", "p": 6.0, "ased": True, "erase_scale": 2.5, "seed": 5}
    (settings,) = c.run_node("ScaPreSettings", edit="values only", **values)
    simple = _erase_simple(c, model, sd15_edit["concepts"], preset="explicit", strength=3.0, seed=9,
                           informax=sd15_edit["informax"], settings=settings)
    legacy = _erase(c, model, sd15_edit["concepts"], informax=sd15_edit["informax"], edit="values only", **values)
    assert _same_edit(simple[0], legacy[0])
    assert all(k.endswith("to_v.weight") for k in _diffs(simple[0]))
    used = simple.ui["scapre_summary"][0]["used"]  # shown on the node: where each setting came from
    assert used["source"] == "ScaPre Settings" and used["informax"] == "from ScaPre Informax"
    assert used["replaced_by_informax"] == {"p": 2.0, "seed": 0} and used["seed"] == 0
    assert simple[1].info["used"] == used
    with pytest.raises(ValueError, match="ScaPre Settings"):
        _erase_simple(c, model, sd15_edit["concepts"], settings={"p": 2.0})
    with pytest.raises(ValueError, match="erase_scale"):
        c.run_node("ScaPreSettings", edit="keys and values", **{**_defaults(c), "erase_scale": -1.0})


# ------------------------------------------------------------------------------------------------
# SDXL family
# ------------------------------------------------------------------------------------------------

def test_sdxl_family_edit_and_width_mismatch(request, scapre_nodes, vega_ckpt_path):
    """The SDXL-family model is loaded here and freed before the SD1.5 one is requested: never both in RAM."""
    c = scapre_nodes
    model, clip, vae = comfy_support.load_checkpoint(vega_ckpt_path)
    (concepts,) = _encode(c, clip, concepts="Van Gogh", concept_type="style", expand_templates=True,
                          guide="art", preserve="", probes="Claude Monet")
    assert concepts.width == 2048 and len(concepts.plan.prompts) == 6
    edited, report = _erase(c, model, concepts)[:2]
    kv = comfy_support.attn2_kv_shapes(model)
    assert set(edited.patches) == set(kv) and len(kv) == 30
    assert len(report.matrices) == 30
    del model, clip, vae, edited, report
    comfy_support.free_models()
    sd15_model = request.getfixturevalue("sd15_loaded")[0]
    with pytest.raises(ValueError, match="encoded 2048 wide but this model's cross-attention reads"):
        _erase(c, sd15_model, concepts)
