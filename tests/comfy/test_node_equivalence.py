"""The nodes against independent references inside a real ComfyUI: the edited MODEL against
``scapre_core.erase`` on the model's original weights, the encode node against ``CLIPTextEncode`` and
the tokenizer, packed encoding against one prompt per call, and LoRA export on the SDXL family.

Run with the ComfyUI venv's python and ``COMFYUI_PATH`` (see README); skipped without them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

log = logging.getLogger("scapre.comfy_tests")

ARCHES = ["sd15", "vega"]
#: Packed and single-prompt text-encoder calls run the same arithmetic in different batch shapes, so
#: their results differ in the last bits: measured 0.9e-6 to 2.0e-6 of the largest value (SD1.5 and
#: Vega, ComfyUI 0.8.0 and 0.3.64, CPU). A wrong token, index or prompt differs by O(1).
ENCODE_RTOL = 1e-5


def _core(c):
    return sys.modules[c.pack_module().__name__ + ".scapre_core"]


def _loaded(request, arch: str):
    return request.getfixturevalue("sd15_loaded" if arch == "sd15" else "vega_loaded")


def _encode(c, clip, concepts: str, **kw):
    args = dict(concept_type="object", expand_templates=False, templates="", guide="", preserve="", probes="")
    args.update(kw)
    (payload,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts=concepts, **args)
    return payload


def _conditioning(c, clip, text: str):
    """``[77, d]``: what CLIPTextEncode hands the sampler for ``text`` (float32, CPU)."""
    import torch

    (cond,) = c.run_node("CLIPTextEncode", text=text, clip=clip)
    return cond[0][0][0].detach().to(device="cpu", dtype=torch.float32)


def _originals(model, keys):
    """Original (unpatched) weights as float32 CPU copies, read from the patcher's backup."""
    entries = model.get_key_patches("diffusion_model.")
    out = {}
    for k in keys:
        (weight, convert), *_ = entries[k]
        w = weight.detach().float().cpu().clone()
        out[k] = convert(w, inplace=True) if convert is not None else w
    return out


def _live_weights(model, keys):
    import comfy.model_management as mm

    mm.load_models_gpu([model], force_patch_weights=True)
    sd = model.model.state_dict()
    return {k: sd[k].detach().float().cpu().clone() for k in keys}


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _gap(a, b) -> float:
    """Largest elementwise difference relative to the largest value (shapes must agree)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max())


def _last_word_index(clip, text: str) -> int:
    """The prompt's last word token, found without word ids: tokenize the last word alone, keep the tokens
    between its start and end tokens, and locate that id sequence last in the prompt's tokens."""
    def ids(t):
        tokens = clip.tokenize(t)
        (chunk,) = tokens["l"]  # SD1.x and SDXL both have the CLIP-L tokenizer
        return [tok[0] for tok in chunk]

    end_token = 49407
    prompt, alone = ids(text), ids(text.split()[-1])
    word = alone[1:alone.index(end_token)]
    body = prompt[1:prompt.index(end_token)]
    for pos in range(len(body) - len(word), -1, -1):
        if body[pos:pos + len(word)] == word:
            return pos + len(word)  # +1 for the start token, -1 for the word's last token
    raise AssertionError(f"{text!r}: last word not found in its tokens")


# ------------------------------------------------------------------------------------------------
# the edited MODEL equals the core edit on the original weights
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHES)
def test_edited_model_equals_core_erase_on_original_weights(scapre_nodes, request, arch):
    c = scapre_nodes
    core = _core(c)
    model, clip, _ = _loaded(request, arch)
    payload = _encode(c, clip, "tabby cat, golden retriever")
    config = core.ScaPreConfig(erase_scale=3.0, p=5.0, seed=4)  # sampled Informax at noise_sigma 0.01
    (edited, _report) = c.run_node("ScaPreErase", model=model, concepts=payload, edit="keys and values",
                                   **config.to_dict())[:2]
    keys = sorted(edited.patches)
    assert len(keys) == (32 if arch == "sd15" else 30)
    originals = _originals(model, keys)
    expected = core.erase(originals, payload.erase, config)
    live = _live_weights(edited, keys)
    for k in keys:
        assert _rel(live[k], expected[k]) < 1e-6, k
        assert _rel(expected[k], originals[k]) > 1e-4  # the edit is not a no-op
    # and with values only: the keys are untouched, the values are still the core edit
    values = c.run_node("ScaPreErase", model=model, concepts=payload, edit="values only", **config.to_dict())[0]
    assert all(k.endswith("to_v.weight") for k in values.patches)
    live_v = _live_weights(values, sorted(values.patches))
    assert max(_rel(w, expected[k]) for k, w in live_v.items()) < 1e-6


# ------------------------------------------------------------------------------------------------
# the encode node against CLIPTextEncode and the tokenizer
# ------------------------------------------------------------------------------------------------

PROMPTS = ["a photo of a tabby cat", "golden retriever", "Van Gogh", "cat"]


@pytest.mark.parametrize("arch", ARCHES)
def test_encode_node_matches_clip_text_encode_and_the_tokenizer(scapre_nodes, request, arch):
    c = scapre_nodes
    _, clip, _ = _loaded(request, arch)
    payload = _encode(c, clip, "\n".join(PROMPTS), guide="art")
    concepts = payload.erase
    empty = _conditioning(c, clip, "")
    guide = _conditioning(c, clip, "art")
    f_guide = _last_word_index(clip, "art")
    assert f_guide == 1
    gaps = [_gap(concepts.empty_vec, empty[1])]
    for j, text in enumerate(PROMPTS):
        cond = _conditioning(c, clip, text)
        assert cond.shape == (77, 768 if arch == "sd15" else 2048)
        f = _last_word_index(clip, text)
        t = 77 - max(f, f_guide)
        assert concepts.contexts[j].shape[0] == t, text  # X_j starts at the tokenizer's last word
        gaps += [_gap(concepts.concept_vecs[j], cond[f]), _gap(concepts.contexts[j], cond[f:f + t]),
                 _gap(concepts.targets[j], guide[f_guide:f_guide + t])]
        # the concept vector is the last word's embedding, not a neighbour's
        assert _gap(concepts.concept_vecs[j], cond[f - 1]) > 100 * ENCODE_RTOL
    log.info("%s: encode node vs CLIPTextEncode, largest relative difference %.2e", arch, max(gaps))
    assert max(gaps) < ENCODE_RTOL
    # the documented example: "tabby cat" is two tokens at positions 5-6 of "a photo of a tabby cat"
    assert _last_word_index(clip, "a photo of a tabby cat") == 6
    assert concepts.contexts[0].shape[0] == 77 - 6


@pytest.mark.parametrize("arch", ARCHES)
def test_packed_encoding_equals_one_prompt_calls(scapre_nodes, request, arch):
    """More prompts than one packed call (16 per text-encoder call) give the numbers of one call each."""
    c = scapre_nodes
    _, clip, _ = _loaded(request, arch)
    module = sys.modules[c.pack_module().__name__ + ".nodes.glue.encode"]
    words = ["cat", "dog", "tiger", "lion", "violin", "piano", "banana", "orange", "laptop", "pizza", "church",
             "tench", "parachute", "golf ball", "garbage truck", "french horn", "chain saw", "gas pump", "airliner"]
    assert len(words) + 1 > module.ENCODE_BATCH  # "" is encoded too
    packed = _encode(c, clip, ", ".join(words)).erase
    gaps = [_gap(packed.empty_vec, _conditioning(c, clip, "")[1])]
    for j, word in enumerate(words):
        cond = _conditioning(c, clip, word)
        f = _last_word_index(clip, word)
        assert packed.contexts[j].shape[0] == 77 - f, word
        gaps += [_gap(packed.contexts[j], cond[f:]), _gap(packed.concept_vecs[j], cond[f])]
    log.info("%s: %d prompts packed vs one CLIPTextEncode each, largest relative difference %.2e", arch,
             len(words) + 1, max(gaps))
    assert max(gaps) < ENCODE_RTOL


# ------------------------------------------------------------------------------------------------
# LoRA export on the SDXL family
# ------------------------------------------------------------------------------------------------

def test_sdxl_family_lora_export_loads_with_lora_loader(scapre_nodes, vega_loaded):
    c = scapre_nodes
    model, clip, _ = vega_loaded
    payload = _encode(c, clip, "Van Gogh", guide="art")
    core = _core(c)
    edited = c.run_node("ScaPreErase", model=model, concepts=payload, edit="keys and values",
                        **core.ScaPreConfig().to_dict())[0]
    keys = sorted(edited.patches)
    target = _live_weights(edited, keys)
    base = _originals(model, keys)
    out_dir = Path(c.folder_paths.get_output_directory())
    for rank in (0, 4):
        (name,) = c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix=f"scapre_vega_r{rank}", rank=rank)[:1]
        path = out_dir / name
        c.folder_paths.add_model_folder_path("loras", str(path.parent))
        loaded = c.run_node("LoraLoader", model=model, clip=clip, lora_name=path.name, strength_model=1.0,
                            strength_clip=1.0)[0]
        assert set(loaded.patches) >= set(keys)  # every SDXL key/value name was recognised
        got = _live_weights(loaded, keys)
        num = sum(float((got[k] - target[k]).pow(2).sum()) for k in keys)
        den = sum(float((target[k] - base[k]).pow(2).sum()) for k in keys)
        error = (num / den) ** 0.5
        if rank == 0:
            assert error < 1e-4
        else:
            assert 0 < error < 1  # a truncated edit, reported by ScaPre Save LoRA
