"""Random-weight DiT models and their text encoders, built with ComfyUI's own classes, for the DiT tests.

Diffusion models are built from a small configuration of ComfyUI's ``supported_models`` class on the meta
device, filled with deterministic random values and either saved as a diffusion-model file (loaded back
through ``comfy.sd.load_diffusion_model``, what UNETLoader runs, so ComfyUI detects the configuration from
the weights' shapes as it would a real file) or, where ComfyUI's detection fixes sizes this machine cannot
hold (Chroma's 5120-wide guidance approximator), assembled in-process from the same configuration exactly as
``load_diffusion_model_state_dict`` does after detection.

What is real and what is reduced:

* Text widths are real everywhere: T5-XXL and umT5-XXL 4096, Cosmos' T5-XXL 1.0 1024, CLIP-L 768, CLIP-G 1280,
  Qwen2.5-VL 3584; so are the models' text-input shapes (Flux ``txt_in`` 4096 -> 3072, Qwen-Image ``txt_in``
  3584 -> 3072, Wan/LTX-Video/PixArt text projections from 4096, Cosmos' key/value maps from 1024).
* Depth and inner widths are reduced: Wan dim 128 (real 1536 / 5120), LTX-Video 128 (2048), SD3 hidden 128
  (1536+), Cosmos Predict2 128 (2048), PixArt one block, Flux one double block (hidden 3072, as ComfyUI's
  detection requires), Chroma one block each, Qwen-Image without transformer blocks. Chroma and Cosmos
  Predict2 are assembled in-process (their detection fixes full sizes).
* Text encoders are ComfyUI's own classes and tokenizers with fewer layers (T5 2 layers, CLIP-G 3,
  Qwen2.5 1) and narrow feed-forward layers, passed through ComfyUI's ``<name>_model_config`` overrides;
  CLIP-L is full size. umT5's SentencePiece tokenizer ships inside real text-encoder files, not with
  ComfyUI, so the stand-in trains a small SentencePiece model (umT5's special ids: pad 0, end 1, unk 2)
  on a fixed corpus; ComfyUI's own ``UMT5XXlTokenizer`` then reads it as it reads the real one.
* HiDream's Llama-3.1 tokenizer ships without its ``tokenizer.json`` in ComfyUI's repository snapshot here, so
  the stand-in trains a small BPE tokenizer (Llama-3's start id 128000 and the pad id 128009 HiDream uses) and
  ComfyUI's own ``LLAMA3Tokenizer`` reads it in place of the real one; the Llama stand-in is 256 wide
  (``LLAMA_SMALL``) and HiDream's caption projections of its layers are built to match. HiDream is assembled
  in-process (its detection fixes full sizes), with one double and two single blocks.

Files go to the shared test cache (``comfy_support.cache_dir()``), never into the repository.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import comfy_support

log = logging.getLogger("scapre.comfy_tests")

FORMAT = 1
INIT_STD = 0.02

#: HiDream's Llama-3.1 stand-in: real vocabulary size and special ids, 256 wide (the real one is 4096: its
#: 128256-token embedding alone would take 2 GB here), two layers.
LLAMA_SMALL = {"hidden_size": 256, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 1}

#: name -> (supported_models class, unet_config, built as a file for UNETLoader?, model_base class name)
MODELS: dict[str, tuple[str, dict[str, Any], bool, str]] = {
    "wan": ("WAN21_T2V", {
        "image_model": "wan2.1", "model_type": "t2v", "dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2,
        "in_dim": 16, "out_dim": 16, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1),
        "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}, True, "WAN21"),
    "ltxv": ("LTXV", {"image_model": "ltxv", "num_layers": 2, "attention_head_dim": 4, "cross_attention_dim": 128},
             True, "LTXV"),
    "pixart": ("PixArtSigma", {"image_model": "pixart_sigma", "num_heads": 16, "patch_size": 2, "hidden_size": 1152,
                               "in_channels": 4, "depth": 1, "model_max_length": 300, "input_size": 64,
                               "pe_interpolation": 1, "micro_condition": False}, True, "PixArt"),
    "flux": ("Flux", {"image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0,
                      "theta": 10000, "out_channels": 16, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 16,
                      "hidden_size": 3072, "context_in_dim": 4096, "patch_size": 2, "vec_in_dim": 768, "depth": 1,
                      "depth_single_blocks": 0, "guidance_embed": True, "yak_mlp": False, "txt_norm": False},
             True, "Flux"),
    "chroma": ("Chroma", {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "in_dim": 64,
                          "out_dim": 256, "hidden_dim": 64, "n_layers": 1, "hidden_size": 256, "context_in_dim": 4096,
                          "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
                          "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True,
                          "txt_ids_dims": [], "vec_in_dim": None},
               False, "Chroma"),
    "cosmos2": ("CosmosT2IPredict2", {
        "image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
        "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 128,
        "concat_padding_mask": True, "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d",
        "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
        "use_adaln_lora": True, "adaln_lora_dim": 32, "num_blocks": 2, "num_heads": 2,
        "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0, "rope_w_extrapolation_ratio": 4.0,
        "rope_t_extrapolation_ratio": 1.0}, False, "CosmosPredict2"),
    "sd3": ("SD3", {"in_channels": 16, "pos_embed_scaling_factor": None, "patch_size": 2, "out_channels": 16,
                    "depth": 2, "input_size": None, "adm_in_channels": 2048,
                    "context_embedder_config": {"target": "torch.nn.Linear",
                                                "params": {"in_features": 4096, "out_features": 128}},
                    "num_patches": 4096, "pos_embed_max_size": 64, "x_block_self_attn_layers": []},
            True, "SD3"),
    "qwen": ("QwenImage", {"image_model": "qwen_image", "in_channels": 64, "num_layers": 0}, True, "QwenImage"),
    "hidream": ("HiDream", {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
                            "caption_channels": [4096, LLAMA_SMALL["hidden_size"]], "max_resolution": [128, 128],
                            "in_channels": 16, "out_channels": 16, "patch_size": 2, "llama_layers": [0, 1, 1],
                            "num_attention_heads": 1, "num_routed_experts": 2, "num_activated_experts": 1,
                            "num_layers": 1, "num_single_layers": 2, "text_emb_dim": 2048}, False, "HiDream"),
}

def host_has(name: str, comfy_path: Path | None = None) -> bool:
    """Whether the ComfyUI checkout (``$COMFYUI_PATH``) defines the classes of ``name`` (its ``supported_models``
    config and ``model_base`` class), read from the sources without importing ComfyUI, so that tests can be
    parametrized at collection time over what the host supports (a version-dependent case is then not
    collected, rather than skipped: under ``CI=true`` a skip is a failure). Without a checkout: True (the
    tests skip for the missing host anyway)."""
    import re

    if comfy_path is None:
        problem = comfy_support.comfyui_path_problem()
        if problem:
            return True
        comfy_path = comfy_support.comfyui_path()
    config_cls, _, _, base_cls = MODELS[name]
    sources = {f: (Path(comfy_path) / "comfy" / f).read_text(encoding="utf-8", errors="replace")
               for f in ("supported_models.py", "model_base.py")}
    return all(re.search(rf"^class {c}\(", sources[f], re.M)
               for c, f in ((config_cls, "supported_models.py"), (base_cls, "model_base.py")))


def host_models(names) -> list[str]:
    """``names`` that this host supports (:func:`host_has`), in order."""
    return [n for n in names if host_has(n)]


#: model -> text encoder stand-in kind
TEXT_ENCODER_OF = {"wan": "wan", "ltxv": "ltxv", "pixart": "pixart", "flux": "flux", "chroma": "chroma",
                   "sd3": "sd3", "qwen": "qwen", "cosmos2": "cosmos", "hidream": "hidream"}

T5_SMALL = {"num_layers": 2, "d_ff": 256, "num_heads": 4, "d_kv": 32}

#: Corpus of the stand-in umT5 SentencePiece model: the words the tests and examples use, and filler.
SPM_CORPUS = [
    "a photo of a cat", "a tabby cat on a sofa", "Van Gogh", "a painting by Van Gogh", "starry night",
    "Claude Monet", "Paul Gauguin", "a golden retriever", "a dog on the beach", "a tiger in the grass",
    "art", "a person", "an apple", "a red car", "a city street at night", "nudity", "a landscape",
    "a portrait of a woman", "the sky is blue", "video of a cat playing with yarn", "Mickey Mouse",
    "a castle on a hill", "a bowl of fruit", "a boat on a lake", "an astronaut riding a horse",
]


def fill_tensor(key: str, shape: tuple[int, ...], seed: int, dtype):
    """1-D ``*.weight``/``*.scale`` (norm gains) = 1, ``*.bias`` = 0, the rest N(0, 0.02), seeded by key."""
    import torch

    if (key.endswith((".weight", ".scale")) and len(shape) == 1) or key.endswith("norm.scale"):
        return torch.ones(shape, dtype=dtype)
    if key.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, INIT_STD, generator=gen).to(dtype)


def _build(name: str, device=None, dtype=None):
    """``(model_config, model)`` of ``name``; keys an older ComfyUI's model class does not take are dropped
    (0.3.64's Flux has no ``txt_ids_dims``, ``yak_mlp``, ``txt_norm``)."""
    import re

    import comfy.supported_models
    import torch

    cls, unet_config, _, _ = MODELS[name]
    config = dict(unet_config)
    while True:
        model_config = getattr(comfy.supported_models, cls)(dict(config, dtype=torch.float16))
        if dtype is not None:
            model_config.set_inference_dtype(dtype, None)
        try:
            return model_config, model_config.get_model({}, device=device)
        except TypeError as err:
            found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            if not found or found.group(1) not in config:
                raise
            config.pop(found.group(1))


def model_state_dict(name: str, seed: int = 0) -> dict[str, Any]:
    """Random diffusion-model weights (no prefix, fp16; float32 where the module is float32)."""
    import torch

    _, model = _build(name, device="meta")
    out = {}
    for key, t in model.diffusion_model.state_dict().items():
        dtype = torch.float32 if t.dtype == torch.float32 else torch.float16
        out[key] = fill_tensor(key, tuple(t.shape), seed, dtype) if t.is_meta else t.detach().clone()
    return out


def model_file_name(name: str, seed: int = 0) -> str:
    return f"scapre-random-dit-{name}-seed{seed}-f{FORMAT}.safetensors"


def build_model_file(name: str, path: Path, seed: int = 0) -> dict[str, Any]:
    from safetensors.torch import save_file

    sd = model_state_dict(name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp),
              metadata={"scapre_test_dit": name, "seed": str(seed), "format": str(FORMAT)})
    tmp.replace(path)
    return {"model": name, "tensors": len(sd), "parameters": sum(v.numel() for v in sd.values()),
            "bytes": path.stat().st_size}


def ensure_model_file(name: str, directory: Path | None = None, seed: int = 0) -> Path:
    """The cached diffusion-model file of ``name``, built in this process on first use (under a lock)."""
    directory = directory or comfy_support.cache_dir()
    path = directory / model_file_name(name, seed)
    with comfy_support._file_lock(directory / f".{path.name}.lock"):
        meta = {}
        if path.is_file():
            try:
                meta = comfy_support.safetensors_header(path).get("__metadata__", {})
            except (OSError, ValueError):
                meta = {}
        if meta.get("scapre_test_dit") != name or meta.get("format") != str(FORMAT):
            t0 = time.perf_counter()
            info = build_model_file(name, path, seed)
            log.info("built %s in %.1f s: %s", path.name, time.perf_counter() - t0, info)
    return path


def load_model(name: str, seed: int = 0):
    """A MODEL (ModelPatcher) of ``name``: through ``comfy.sd.load_diffusion_model`` (UNETLoader's loader) for
    file-built models, else assembled in-process from the configuration."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import torch

    _, _, as_file, _ = MODELS[name]
    if as_file:
        return comfy.sd.load_diffusion_model(str(ensure_model_file(name, seed=seed)))
    _, model = _build(name, dtype=torch.float32)
    model.load_model_weights(model_state_dict(name, seed), "")  # keys without prefix, as after detection
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


# --------------------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------------------

def umt5_tokenizer_model() -> bytes:
    """A small SentencePiece model with umT5's special ids, trained deterministically on SPM_CORPUS."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SPM_CORPUS * 20), model_writer=out, vocab_size=512,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, model_type="unigram",
                                   hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True,
                                   minloglevel=2)
    return out.getvalue()


def llama_tokenizer_dir() -> Path:
    """A folder with a small BPE tokenizer in Llama-3's format (``tokenizer.json``, ``tokenizer_config.json``),
    trained deterministically on SPM_CORPUS's words, with Llama-3's start token (id 128000) put before every
    text and HiDream's pad token (id 128009); built once in the test cache."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    folder = comfy_support.cache_dir() / f"scapre-llama3-standin-f{FORMAT}"
    if (folder / "tokenizer.json").is_file():
        return folder
    words = [w for text in SPM_CORPUS for w in text.split()]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    alphabet = [chr(c) for c in range(32, 127)] + ["\u2581"]
    tok.train_from_iterator(words * 20, trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>"],
                                                             show_progress=False, initial_alphabet=alphabet))
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 128000)])
    data = json.loads(tok.to_str())
    specials = (("<|begin_of_text|>", 128000), ("<|eot_id|>", 128009))
    for content, index in specials:
        data["model"]["vocab"][content] = index
        data["added_tokens"].append({"id": index, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
         "add_bos_token": True, "add_eos_token": False}), encoding="utf-8")
    tmp.replace(folder) if not folder.exists() else None
    return folder


def _hidream_tokenizer():
    """ComfyUI's ``HiDreamTokenizer`` whose ``LLAMA3Tokenizer`` reads :func:`llama_tokenizer_dir`."""
    import comfy.text_encoders.hidream as hidream
    import comfy.text_encoders.hunyuan_video as hunyuan_video

    real = hunyuan_video.LlamaTokenizerFast
    folder = str(llama_tokenizer_dir())

    class StandInLlama(real):
        @classmethod
        def from_pretrained(cls, _path, *args, **kwargs):
            return real.from_pretrained(folder, *args, **kwargs)

    class StandInHiDreamTokenizer(hidream.HiDreamTokenizer):
        def __init__(self, *args, **kwargs):
            hunyuan_video.LlamaTokenizerFast = StandInLlama
            try:
                super().__init__(*args, **kwargs)
            finally:
                hunyuan_video.LlamaTokenizerFast = real

    return StandInHiDreamTokenizer


def _clip_target(kind: str):
    """(tokenizer class, text-encoder class, model_options, tokenizer_data) of the stand-in for ``kind``."""
    import comfy.text_encoders.cosmos as cosmos
    import comfy.text_encoders.flux as flux
    import comfy.text_encoders.lt as lt
    import comfy.text_encoders.pixart_t5 as pixart_t5
    import comfy.text_encoders.qwen_image as qwen_image
    import comfy.text_encoders.sd3_clip as sd3_clip
    import comfy.text_encoders.wan as wan
    import sentencepiece as spm
    import torch

    if kind == "wan":
        proto = umt5_tokenizer_model()
        vocab = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
        return (wan.WanT5Tokenizer, wan.te(), {"umt5xxl_model_config": {**T5_SMALL, "vocab_size": vocab}},
                {"spiece_model": torch.ByteTensor(list(proto))})
    if kind == "flux":
        return flux.FluxTokenizer, flux.flux_clip(), {"t5xxl_model_config": T5_SMALL}, {}
    if kind == "ltxv":
        return lt.LTXVT5Tokenizer, lt.ltxv_te(), {"t5xxl_model_config": T5_SMALL}, {}
    if kind in ("pixart", "chroma"):
        return pixart_t5.PixArtTokenizer, pixart_t5.pixart_te(), {"t5xxl_model_config": T5_SMALL}, {}
    if kind == "cosmos":
        return cosmos.CosmosT5Tokenizer, cosmos.te(), {"t5xxl_model_config": {**T5_SMALL, "d_kv": 64}}, {}
    if kind == "sd3":
        return (sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True),
                {"t5xxl_model_config": T5_SMALL, "clip_g_model_config": {"num_hidden_layers": 3}}, {})
    if kind == "qwen":
        return (qwen_image.QwenImageTokenizer, qwen_image.te(),
                {"qwen25_7b_model_config": {"num_hidden_layers": 1, "intermediate_size": 128}}, {})
    if kind in ("hidream", "hidream-without-llama"):
        import comfy.text_encoders.hidream as hidream

        return (_hidream_tokenizer(), hidream.hidream_clip(llama=kind == "hidream"),
                {"t5xxl_model_config": T5_SMALL, "clip_g_model_config": {"num_hidden_layers": 3},
                 "llama_model_config": LLAMA_SMALL}, {})
    raise ValueError(f"unknown text encoder kind {kind!r}")


def make_clip(kind: str, seed: int = 0):
    """A CLIP object (``comfy.sd.CLIP``) standing in for the real text encoder of ``kind``, with random
    weights (deterministic per key)."""
    import comfy.sd
    import comfy.supported_models_base
    import torch

    tokenizer, te, options, tokenizer_data = _clip_target(kind)
    target = comfy.supported_models_base.ClipTarget(tokenizer, te)
    clip = comfy.sd.CLIP(target=target, embedding_directory=None, tokenizer_data=tokenizer_data,
                         model_options={**options, "initial_device": torch.device("cpu")})
    with torch.no_grad():
        for key, value in clip.cond_stage_model.state_dict().items():
            if value.is_floating_point():
                value.copy_(fill_tensor(key, tuple(value.shape), seed, value.dtype))
    return clip


# --------------------------------------------------------------------------------------------------
# Example workflows for DiT families, built in the real frontend (``python dit_support.py build-examples``)
# --------------------------------------------------------------------------------------------------

_FIXED = {"control_after_generate": "fixed"}
_ERASE = [("enc", "ScaPreConceptEncode", {"concepts": "Van Gogh", "concept_type": "style", "expand_templates": False,
                                          "templates": "", "guide": "", "preserve": "",
                                          "probes": "Claude Monet, Paul Gauguin"}, (420, 640), None),
          ("erase", "ScaPreEraseSimple", {"preset": "artists", "strength": 1.0, "seed": 0, **_FIXED}, (300, 0), None)]

#: name -> (columns, links) in browser_support.build_workflow's format. Model file names are ComfyUI's published
#: repackaged files (comfyanonymous/Wan_2.1_ComfyUI_repackaged, Comfy-Org/flux1-dev, ...).
DIT_EXAMPLES = {
    "erase_wan": ([
        [("unet", "UNETLoader", {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors"}, (340, 0), None),
         ("te", "CLIPLoader", {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"}, (340, 0),
          None),
         ("vae", "VAELoader", {"vae_name": "wan_2.1_vae.safetensors"}, (340, 0), None)],
        _ERASE,
        [("pos", "CLIPTextEncode", {"text": "sunflowers swaying in a field, a painting by Van Gogh"}, (400, 150),
          "Positive prompt"),
         ("neg", "CLIPTextEncode", {"text": ""}, (400, 120), "Negative prompt"),
         ("lat", "EmptyHunyuanLatentVideo", {"width": 832, "height": 480, "length": 33, "batch_size": 1}, (300, 0),
          None),
         ("shift", "ModelSamplingSD3", {"shift": 8.0}, (300, 0), None),
         ("lora", "ScaPreSaveLoRA", {"filename_prefix": "loras/scapre_wan_van_gogh", "rank": 0}, (400, 0), None)],
        [("ks", "KSampler", {"seed": 0, **_FIXED, "steps": 30, "cfg": 6.0, "sampler_name": "uni_pc",
                             "scheduler": "simple", "denoise": 1.0}, (300, 0), None),
         ("rep", "ScaPreReport", {}, (300, 0), None)],
        [("dec", "VAEDecode", {}, (200, 0), None)],
        [("save", "SaveAnimatedWEBP", {"filename_prefix": "scapre_wan", "fps": 16.0}, (420, 420), None),
         ("prev", "PreviewImage", {}, (420, 420), None)],
    ], [
        ("unet", 0, "erase", "model"), ("te", 0, "enc", "clip"), ("enc", 0, "erase", "concepts"),
        ("te", 0, "pos", "clip"), ("te", 0, "neg", "clip"), ("erase", 0, "shift", "model"), ("shift", 0, "ks", "model"),
        ("pos", 0, "ks", "positive"), ("neg", 0, "ks", "negative"), ("lat", 0, "ks", "latent_image"),
        ("ks", 0, "dec", "samples"), ("vae", 0, "dec", "vae"), ("dec", 0, "save", "images"),
        ("erase", 0, "lora", "model"), ("erase", 1, "rep", "report"), ("rep", 0, "prev", "images"),
    ]),
    "erase_flux": ([
        [("unet", "UNETLoader", {"unet_name": "flux1-dev.safetensors"}, (340, 0), None),
         ("te", "DualCLIPLoader", {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
                                   "type": "flux"}, (340, 0), None),
         ("vae", "VAELoader", {"vae_name": "ae.safetensors"}, (340, 0), None)],
        _ERASE,
        [("pos", "CLIPTextEncode", {"text": "a starry night over a quiet village, painted by Van Gogh"}, (400, 150),
          "Positive prompt"),
         ("guid", "FluxGuidance", {"guidance": 3.5}, (300, 0), None),
         ("neg", "CLIPTextEncode", {"text": ""}, (400, 120), "Negative prompt (unused at cfg 1)"),
         ("lat", "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, (300, 0), None),
         ("lora", "ScaPreSaveLoRA", {"filename_prefix": "loras/scapre_flux_van_gogh", "rank": 0}, (400, 0), None)],
        [("ks", "KSampler", {"seed": 0, **_FIXED, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
                             "scheduler": "simple", "denoise": 1.0}, (300, 0), None),
         ("rep", "ScaPreReport", {}, (300, 0), None)],
        [("dec", "VAEDecode", {}, (200, 0), None)],
        [("save", "SaveImage", {"filename_prefix": "scapre_flux"}, (420, 420), None),
         ("prev", "PreviewImage", {}, (420, 420), None)],
    ], [
        ("unet", 0, "erase", "model"), ("te", 0, "enc", "clip"), ("enc", 0, "erase", "concepts"),
        ("te", 0, "pos", "clip"), ("te", 0, "neg", "clip"), ("pos", 0, "guid", "conditioning"),
        ("erase", 0, "ks", "model"), ("guid", 0, "ks", "positive"), ("neg", 0, "ks", "negative"),
        ("lat", 0, "ks", "latent_image"), ("ks", 0, "dec", "samples"), ("vae", 0, "dec", "vae"),
        ("dec", 0, "save", "images"), ("erase", 0, "lora", "model"), ("erase", 1, "rep", "report"),
        ("rep", 0, "prev", "images"),
    ]),
}


def build_examples(names: list[str]) -> None:
    """Start ComfyUI (``$COMFYUI_PATH``) with this pack and write the DiT example workflows and thumbnails."""
    import tempfile

    import browser_support

    with tempfile.TemporaryDirectory(prefix="scapre-dit-examples-") as tmp:
        work = Path(tmp)
        server = comfy_support.ComfyServer(comfy_support.comfyui_path(), work / "server",
                                           custom_nodes_dir=comfy_support.make_pack_link(work / "custom_nodes").parent)
        with server:
            server.post("/settings", browser_support.FRONTEND_SETTINGS)
            with browser_support.ComfyPage(server.base_url, viewport=(2400, 1000)) as page:
                for name in names:
                    browser_support.build_workflow(page, name, *DIT_EXAMPLES[name])


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build a random-weight DiT test model file, or the DiT examples")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-model")
    make.add_argument("model", choices=sorted(k for k, v in MODELS.items() if v[2]))
    make.add_argument("--out", type=Path, default=None)
    examples = sub.add_parser("build-examples")
    examples.add_argument("--name", choices=sorted(DIT_EXAMPLES), action="append")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "build-examples":
        build_examples(args.name or sorted(DIT_EXAMPLES))
        return 0
    path = comfy_support.comfyui_path()
    comfy_support._drop_foreign_modules(path)
    sys.path.insert(0, str(path))
    out = args.out or comfy_support.cache_dir() / model_file_name(args.model)
    print(json.dumps(build_model_file(args.model, out)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
