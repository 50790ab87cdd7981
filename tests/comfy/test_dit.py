"""The pack on DiT models inside a real ComfyUI (in-process, CPU): Wan, LTX-Video, PixArt, Cosmos Predict2
(cross-attention, ScaPre as published), Flux, Chroma, SD3, Qwen-Image, HiDream (text-input projections, beyond
the paper).

Random-weight models and stand-in text encoders come from ``dit_support.py`` (ComfyUI's own classes at a
small configuration, real text widths). Each edit is checked against an independent reference: the model's
own modules compute the contexts from what CLIPTextEncode gives, this file aligns them by the documented
rule (docs/dit-models.md) with per-encoder facts written out here, and ``scapre_core.erase`` runs on the
original weights; the edited MODEL must compute with exactly those weights.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import comfy_support
import pytest

_HERE = Path(__file__).resolve().parent
try:
    import dit_support
except ImportError:  # --import-mode=importlib
    _spec = importlib.util.spec_from_file_location("dit_support", _HERE / "dit_support.py")
    dit_support = importlib.util.module_from_spec(_spec)
    sys.modules["dit_support"] = dit_support
    _spec.loader.exec_module(dit_support)

CONCEPTS = "Van Gogh, tabby cat"
SEED = 3

#: name -> (model_base class, edited keys: a regex, published method?)
EXPECTED = {
    "wan": ("WAN21", r"blocks\.\d+\.cross_attn\.[kv]\.weight", True),
    "ltxv": ("LTXV", r"transformer_blocks\.\d+\.attn2\.to_[kv]\.weight", True),
    "pixart": ("PixArt", r"blocks\.\d+\.cross_attn\.kv_linear\.weight", True),
    "flux": ("Flux", r"(txt_in|vector_in\.in_layer)\.weight", False),
    "chroma": ("Chroma", r"txt_in\.weight", False),
    "sd3": ("SD3", r"(context_embedder|y_embedder\.mlp\.0)\.weight", False),
    "qwen": ("QwenImage", r"txt_in\.weight", False),
    "cosmos2": ("CosmosPredict2", r"blocks\.\d+\.cross_attn\.[kv]_proj\.weight", True),
    "hidream": ("HiDream", r"(caption_projection\.\d+\.linear|p_embedder\.pooled_embedder\.linear_1)\.weight", False),
}


def _pack(c):
    return sys.modules[c.pack_module().__name__]


def _glue(c, name):
    return sys.modules[f"{c.pack_module().__name__}.nodes.glue.{name}"]


def _core(c):
    return sys.modules[c.pack_module().__name__ + ".scapre_core"]


@pytest.fixture(scope="module", params=dit_support.host_models(EXPECTED))
def dit(request, scapre_nodes):
    """(name, MODEL, CLIP) of one architecture, loaded once per architecture: every architecture this host's
    ComfyUI defines (parametrized at collection, so a version without one does not run it rather than skip)."""
    name = request.param
    model = dit_support.load_model(name)
    clip = dit_support.make_clip(dit_support.TEXT_ENCODER_OF[name])
    yield name, model, clip
    del model, clip
    comfy_support.free_models()


@pytest.fixture(scope="module")
def edited(dit, scapre_nodes):
    """Encode + erase (preset custom) with the pack's nodes; the reference edit from the model's own modules."""
    name, model, clip = dit
    c = scapre_nodes
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts=CONCEPTS, concept_type="object",
                             expand_templates=False, templates="", guide="", preserve="", probes="a red car")
    reference = _reference_edit(c, name, model, clip)  # before any edited clone is loaded
    out = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="custom", strength=1.0, seed=SEED)
    return {"concepts": concepts, "model": out[0], "report": out[1], "reference": reference}


# ------------------------------------------------------------------------------------------------
# The reference: contexts from the model's own modules, aligned by hand
# ------------------------------------------------------------------------------------------------

def _encode(clip, text):
    """What CLIPTextEncode gives for ``text``: (tokens with word ids, cond [T, d], pooled or None, mask,
    HiDream's Llama-3.1 layers [L, T, d] or None)."""
    tokens = clip.tokenize(text, return_word_ids=True)
    plain = {k: [[t[:2] for t in ch] for ch in v] for k, v in tokens.items()}
    out = clip.encode_from_tokens(plain, return_pooled=True, return_dict=True)
    pooled = out.get("pooled_output")
    llama = out.get("conditioning_llama3")
    return tokens, out["cond"][0].float(), None if pooled is None else pooled.reshape(-1).float(), \
        out.get("attention_mask"), None if llama is None else llama[0].float()


def _last_word(chunk):
    words = [i for i, t in enumerate(chunk) if t[2] > 0]
    return max(words) if words else None


def _segments(name, tokens, cond, mask):
    """[(rows, last word within them or None, has start token)] per encoder part of ``cond``, by hand."""
    if name == "sd3":  # CLIP-L/G tokens (77, start token) then T5 tokens (no start token)
        clip_part, t5 = tokens["l"][0], tokens["t5xxl"][0]
        return [(cond[:77], _last_word(clip_part), True), (cond[77:], _last_word(t5), False)]
    if name == "qwen":  # the template before the user's text is cropped; the text ends before <|im_end|>
        chunk = tokens["qwen25_7b"][0][-cond.shape[0]:]
        end = next(i for i, t in enumerate(chunk) if t[0] == 151645)
        return [(cond, end - 1 if end > 0 else None, False)]
    key = {"wan": "umt5xxl", "flux": "t5xxl"}.get(name, "t5xxl")
    chunk = tokens[key][0]
    rows = cond
    if name == "ltxv":  # the model masks the padding out: rows up to the end token
        rows = cond[: int(mask.sum())]
    return [(rows, _last_word(chunk), False)]


def _projection(name, model):
    dm = model.model.diffusion_model
    modules = {"wan": lambda: dm.text_embedding, "ltxv": lambda: dm.caption_projection,
               "pixart": lambda: dm.y_embedder.y_proj, "qwen": lambda: dm.txt_norm}
    return modules[name]() if name in modules else (lambda x: x)


def _aligned_set(core, seg, prompts, guide):
    """A ConceptSet from ``seg`` (text -> [(rows, last word, has start token)] per encoder part) by the
    documented alignment."""
    import torch

    vecs, empties, xs, ys = [], [], [], []
    for p in prompts:
        for prompt_seg, guide_seg, empty_seg in zip(seg[p], seg[guide], seg[""], strict=True):
            (x_rows, x_last, _), (g_rows, g_last, g_start), (e_rows, _, e_start) = prompt_seg, guide_seg, empty_seg
            x = x_rows[x_last:]
            if g_last is not None:
                y = g_rows[g_last:]
            elif g_start:
                y = g_rows
            else:
                y = torch.cat([g_rows[:1], g_rows])
            t = min(len(x), len(y))
            vecs.append(x_rows[x_last])
            empties.append(e_rows[1] if e_start else e_rows[0])
            xs.append(x[:t])
            ys.append(y[:t])
    return core.ConceptSet.from_aligned(torch.stack(vecs), torch.stack(empties), xs, ys)


def _reference_sets(c, name, model, clip, prompts, guide):
    """ConceptSets per stream ("text", "pooled" where the model has a pooled map, and HiDream's
    "llama layer <k>") built by hand."""
    import torch

    core = _core(c)
    project = _projection(name, model)
    enc = {t: _encode(clip, t) for t in {*prompts, guide, ""}}
    sets = {}
    with torch.no_grad():
        seg = {t: [(project(rows.unsqueeze(0))[0], last, start)
                   for rows, last, start in _segments(name, e[0], e[1], e[3])] for t, e in enc.items()}
    sets["text"] = _aligned_set(core, seg, prompts, guide)
    if name == "hidream":  # every Llama-3.1 layer: one row per Llama token, its start token included
        for layer in sorted(set(model.model.diffusion_model.llama_layers)):
            seg = {t: [(e[4][layer], _last_word(e[0]["llama"][0]), True)] for t, e in enc.items()}
            sets[f"llama layer {layer}"] = _aligned_set(core, seg, prompts, guide)
    if name in ("flux", "sd3", "hidream"):
        pooled = {t: e[2] for t, e in enc.items()}
        sets["pooled"] = core.ConceptSet.from_aligned(
            torch.stack([pooled[p] for p in prompts]), pooled[""], [pooled[p][None] for p in prompts],
            [pooled[guide][None] for _ in prompts])
    return sets


def _reference_edit(c, name, model, clip):
    """{model key: edited weight} by scapre_core on the original weights and the hand-built contexts."""
    import re

    import torch

    core = _core(c)
    presets = sys.modules[c.pack_module().__name__ + ".scapre_core.presets"]
    config = presets.preset_config("custom", 1.0, SEED)
    sets = _reference_sets(c, name, model, clip, ["Van Gogh", "tabby cat"], "")
    pattern = re.compile(EXPECTED[name][1])
    originals = {k: v[0][0].detach().float().clone() for k, v in model.get_key_patches("diffusion_model.").items()
                 if pattern.fullmatch(k.removeprefix("diffusion_model."))}
    out = {}
    layers = getattr(model.model.diffusion_model, "llama_layers", None)
    for key, w0 in originals.items():
        stream = "pooled" if ("vector_in" in key or "y_embedder" in key or "p_embedder" in key) else "text"
        if name == "hidream" and "caption_projection" in key:
            index = int(key.split(".")[2])
            stream = f"llama layer {layers[index]}" if index < len(layers) else "text"
        if name == "pixart":
            half = w0.shape[0] // 2
            parts = core.erase({f"{key}[k]": w0[:half], f"{key}[v]": w0[half:]}, sets[stream], config)
            out[key] = torch.cat([parts[f"{key}[k]"], parts[f"{key}[v]"]])
        else:
            out[key] = core.erase({key: w0}, sets[stream], config)[key]
    return originals, out


def _live(model, keys):
    import comfy.model_management as mm

    mm.load_models_gpu([model], force_patch_weights=True)
    sd = model.model.state_dict()
    return {k: sd[k].detach().float().cpu().clone() for k in keys}


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

def test_architecture_is_recognised(dit, scapre_nodes):
    name, model, _ = dit
    arch = _glue(scapre_nodes, "architectures").architecture(model)
    assert type(model.model).__name__ == EXPECTED[name][0]
    assert EXPECTED[name][0] in arch.model_classes and arch.published == EXPECTED[name][2]


def test_edited_model_equals_scapre_core_on_the_models_contexts(dit, edited):
    import torch

    originals, reference = edited["reference"]
    assert reference, "no edited keys found"
    live = _live(edited["model"], list(reference))
    for key, want in reference.items():
        change = (want - originals[key]).norm()
        assert float(change) > 0, key
        assert float((live[key] - want).norm() / change) < 2e-4, key
    assert not torch.equal(live[key], originals[key])


def test_only_the_intended_weights_change(dit, edited):
    import re

    name, model, _ = dit
    pattern = re.compile(EXPECTED[name][1])
    diffs = comfy_support.edit_diffs(edited["model"])
    assert diffs and all(pattern.fullmatch(k.removeprefix("diffusion_model.")) for k in diffs)
    patched = set(edited["model"].patches)
    assert patched == set(diffs)
    assert not model.patches  # the input MODEL is untouched
    if name == "pixart":  # both halves of kv_linear (keys and values) moved
        for d in diffs.values():
            half = d.shape[0] // 2
            assert float(d[:half].abs().max()) > 0 and float(d[half:].abs().max()) > 0


def test_compact_patches_hold_less_and_apply_in_float32(dit, edited, scapre_nodes):
    """Where a change has a compact form that saves memory (short text in a wide space: the span route), the
    edited MODEL holds it as a ``CompactEdit`` patch (the Flux-sized maps always do); ComfyUI applies it in
    float32 even where it patches in bfloat16 (low-VRAM patching), and it equals the dense change."""
    import comfy.lora
    import torch

    name, model, _ = dit
    formats = _glue(scapre_nodes, "formats")
    lowrank = sys.modules[scapre_nodes.pack_module().__name__ + ".scapre_core.lowrank"]
    record = edited["model"].model_options["scapre_edits"][-1]
    compact = {k: d for k, d in record.diffs.items() if isinstance(d, lowrank.LowRankChange)}
    if name in ("flux", "sd3", "qwen"):  # 3072-4096-wide text-input maps, two prompts: a small span
        assert compact, f"{name}: no compact change"
    dense = comfy_support.edit_diffs(edited["model"])
    held = edited["report"].info["patches"]  # what the report says the MODEL holds
    assert (held["weights"], held["compact"]) == (len(record.diffs), len(compact))
    assert held["dense_mb"] == pytest.approx(sum(d.numel() * 4 for d in dense.values()) / 2**20, abs=0.01)
    assert (held["mb"] < held["dense_mb"]) == bool(compact)
    for key, change in compact.items():
        (patch,) = [p for p in edited["model"].patches[key] if isinstance(p[1], formats.CompactEdit)]
        assert patch[1].change is change and lowrank.worth_it(change)
        assert change.nbytes() <= 0.5 * change.shape[0] * change.shape[1] * 4
        w0 = model.get_key_patches("diffusion_model.")[key][0][0].detach().float()
        assert torch.allclose(change.dense(w0), dense[key])
        low = comfy.lora.calculate_weight([patch], w0.to(torch.bfloat16), key, intermediate_dtype=torch.bfloat16)
        want = (w0.to(torch.bfloat16).float() + change.dense(w0.to(torch.bfloat16).float())).to(torch.bfloat16)
        assert low.dtype == torch.bfloat16 and torch.equal(low, want)


def test_compact_edit_on_top_of_another_patch(dit, edited, scapre_nodes):
    """An edit applies to the weight it was computed on, the model's patches before it included (a compact change
    rescales that weight's rows): erase on a model that already carries a patch (a merge-like "diff" on every edited
    weight), and the edit's own change, made dense from the model, is what the sampled weights gained; ScaPre Save
    LoRA's "all changes" holds both."""
    import torch

    name, model, _ = dit
    c = scapre_nodes
    keys = sorted(edited["model"].model_options["scapre_edits"][-1].diffs)
    gen = torch.Generator().manual_seed(3)
    before = _live(model, keys)
    extra = {k: 0.01 * torch.randn(before[k].shape, generator=gen) for k in keys}
    patched = model.clone()
    patched.add_patches({k: (v,) for k, v in extra.items()}, 1.0, 1.0)
    out = c.run_node("ScaPreEraseSimple", model=patched, concepts=edited["concepts"], preset="custom", strength=1.0,
                     seed=SEED)[0]
    lowrank = sys.modules[c.pack_module().__name__ + ".scapre_core.lowrank"]
    if name in ("flux", "qwen"):  # their text-input maps always take a compact change (the test above)
        assert any(isinstance(d, lowrank.LowRankChange) for d in out.model_options["scapre_edits"][-1].diffs.values())
    start, end = _live(patched, keys), _live(out, keys)
    change = comfy_support.edit_diffs(out)
    for k in keys:
        assert float((start[k] - before[k] - extra[k]).norm() / extra[k].norm()) < 1e-5
        assert float((end[k] - start[k] - change[k]).norm() / change[k].norm()) < 1e-4, k
    (path,) = c.run_node("ScaPreSaveLoRA", model=out, filename_prefix=f"loras/dit_stack_{name}", rank=0,
                         contents="all changes")
    import comfy.sd
    import comfy.utils

    lora = comfy.utils.load_torch_file(str(Path(c.folder_paths.get_output_directory()) / path), safe_load=True)
    loaded, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    got = _live(loaded, keys)
    for k in keys:
        assert float((got[k] - end[k]).norm() / (end[k] - before[k]).norm()) < 1e-4, k


def test_report_names_the_architecture_and_method(dit, edited):
    name, _, _ = dit
    report = edited["report"]
    assert report.info["model_class"] == EXPECTED[name][0]
    erased = report.group("erase")
    assert erased and all(0.0 <= p.efficacy <= 1.0 for p in erased)
    assert {p.concept for p in erased} == {"Van Gogh", "tabby cat"}
    if not EXPECTED[name][2]:
        assert "beyond the paper" in report.info["method"]
        assert any("beyond the paper" in w for w in report.warnings)
    if name in ("flux", "sd3", "hidream"):
        assert any(p.text.endswith("[pooled]") for p in erased)
    if name == "hidream":  # one stream per Llama-3.1 layer the model reads
        layers = sorted(set(dit[1].model.diffusion_model.llama_layers))
        assert {p.text for p in erased if "[llama" in p.text} == {
            f"{c} [llama layer {k}]" for c in ("Van Gogh", "tabby cat") for k in layers}


def test_lora_round_trip_through_loraloader(dit, edited, scapre_nodes, tmp_path):
    """ScaPre Save LoRA (exact) loaded back with ComfyUI's LoraLoaderModelOnly on the original model."""
    import comfy.sd
    import comfy.utils

    name, model, _ = dit
    c = scapre_nodes
    (path,) = c.run_node("ScaPreSaveLoRA", model=edited["model"], filename_prefix=f"loras/dit_{name}", rank=0)
    full = Path(c.folder_paths.get_output_directory()) / path
    lora = comfy.utils.load_torch_file(str(full), safe_load=True)
    loaded, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    diffs = comfy_support.edit_diffs(edited["model"])
    assert set(loaded.patches) == set(diffs)
    want = _live(edited["model"], list(diffs))
    got = _live(loaded, list(diffs))
    for key in diffs:
        assert float((got[key] - want[key]).norm() / diffs[key].norm()) < 1e-5, key


def test_model_save_bakes_the_edit(dit, edited, scapre_nodes):
    """ComfyUI's own Save Model (ModelSave, the diffusion-model saver) writes the edited weights; the file loads
    back through UNETLoader's loader as the same architecture with the edit in it."""
    import comfy.sd
    import comfy.utils

    name, _, _ = dit
    c = scapre_nodes
    c.run_node("ModelSave", model=edited["model"], filename_prefix=f"diffusion_models/dit_{name}")
    out = Path(c.folder_paths.get_output_directory()) / "diffusion_models"
    (saved,) = sorted(out.glob(f"dit_{name}_*.safetensors"))
    diffs = comfy_support.edit_diffs(edited["model"])
    want = _live(edited["model"], list(diffs))
    if dit_support.MODELS[name][2]:  # detectable at this size: reload as UNETLoader would
        reloaded = comfy.sd.load_diffusion_model(str(saved))
        assert type(reloaded.model).__name__ == EXPECTED[name][0]
        entries = {k: v[0][0] for k, v in reloaded.get_key_patches("diffusion_model.").items()}
        del reloaded
    else:  # Chroma's detection assumes full size: read the file's tensors
        sd = comfy.utils.load_torch_file(str(saved), safe_load=True)
        entries = {k.removeprefix("model."): v for k, v in sd.items()}
    for key in diffs:
        got = entries[key].detach().float()
        assert float((got - want[key]).norm() / diffs[key].norm()) < 1e-3, key
    saved.unlink()


def test_every_other_comfyui_architecture_is_refused_by_name(scapre_nodes):
    """Every ``comfy.model_base`` class the pack does not support gets an error naming it and listing what is
    supported, before any weight is read (a stand-in patcher: only the model's class is looked at)."""
    import inspect
    from types import SimpleNamespace

    import comfy.model_base

    c = scapre_nodes
    arch = _glue(c, "architectures")
    supported = {name for a in arch.ARCHITECTURES for name in a.model_classes}
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=dit_support.make_clip("wan"), concepts="Van Gogh",
                             concept_type="object", expand_templates=False, templates="", guide="")
    classes = [cls for _, cls in inspect.getmembers(comfy.model_base, inspect.isclass)
               if issubclass(cls, comfy.model_base.BaseModel) and cls.__module__ == "comfy.model_base"]
    refused = [cls for cls in classes if cls.__name__ not in supported]
    assert len(refused) >= 20
    for cls in refused:
        model = SimpleNamespace(model=cls.__new__(cls), patches={})
        with pytest.raises(ValueError) as err:
            c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="custom", strength=1.0, seed=0)
        message = str(err.value)
        assert f"its architecture is {cls.__name__} (" in message and "Supported:" in message and "Wan" in message


def test_a_text_encoder_of_another_model_is_refused(dit, scapre_nodes):
    """LTX-Video with another model's text encoder used to get a width error telling the user to use the model's
    own CLIP; now every DiT names the text encoder it reads and the one the concepts were encoded with."""
    name, model, _ = dit
    c = scapre_nodes
    other = "wan" if name == "flux" else "flux"
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=dit_support.make_clip(other), concepts="Van Gogh",
                             concept_type="object", expand_templates=False, templates="", guide="")
    with pytest.raises(ValueError, match=rf"this MODEL is .*\({EXPECTED[name][0]}\), which reads .* text, but the "
                                         r"concepts were encoded with .*(umT5|CLIP-L \+ T5-XXL)"):
        c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="custom", strength=1.0, seed=0)


@pytest.mark.parametrize("name", dit_support.host_models(["hidream"]))
def test_hidream_needs_all_four_text_encoders(name, scapre_nodes):
    """A HiDream text encoder loaded without its Llama-3.1 (ComfyUI then feeds the model zeros in its place) is
    refused when the concepts are encoded, naming what is missing and how to load it."""
    with pytest.raises(ValueError, match=r"lacks Llama-3\.1: .*QuadrupleCLIPLoader"):
        scapre_nodes.run_node("ScaPreConceptEncode", clip=dit_support.make_clip("hidream-without-llama"),
                              concepts="Van Gogh", concept_type="object", expand_templates=False, templates="",
                              guide="")
