"""What the pack knows about each model architecture it edits, in one place.

Two kinds of knowledge, both keyed by ComfyUI class names:

* **Text encoders** (:class:`ClipLayout`, by the CLIP's ``cond_stage_model`` class): how the conditioning
  rows a CLIP outputs map onto its tokenizers' tokens (``segments``), so that every prompt's last word
  token can be found per encoder, and whether its pooled output is used by a model.
* **Models** (:class:`Architecture`, by the MODEL's ``comfy.model_base`` class): which weights the edit
  changes, which text they read (the conditioning rows or the pooled vector, after which of the model's own
  projections), and what the method guarantees there.

Cross-attention DiTs (Wan, LTX-Video, PixArt, Cosmos Predict2) get ScaPre as published: every block's key/value
projection reads a text context that is fixed per prompt (the text encoder's output passed through the model's own
text projection). Joint-attention DiTs (Flux, Chroma, SD3, Qwen-Image, HiDream) have no such per-block
maps: the text stream is changed by every block, and the only weights that read the text encoder's tokens
directly are the text-input projection (and the pooled-vector map). Editing those with the same closed
form is beyond the paper (UCE's 2025 rewrite edits the same maps); see docs/dit-models.md.

Models not listed are refused with their class name and the list of what is supported: a model that only
looks compatible (SVD's cross-attention reads CLIP-vision embeddings; a video model's temporal layers) is
never edited because its key names or widths happen to match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ...scapre_core.presets import EDIT_MODES

# ---------------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------------

#: ``<|im_end|>`` of Qwen2.5's chat template: the user's text ends right before it.
QWEN_IM_END = 151645


@dataclass(frozen=True)
class ClipLayout:
    """How one CLIP's conditioning rows map onto its tokens.

    ``segments(clip, tokens)`` lists the conditioning's segments in order, each a tuple of tokenizer keys
    whose tokens share the segment's rows (SDXL's ``g`` and ``l`` are concatenated width-wise, SD3's CLIP
    part and T5 part follow each other). ``last_word`` picks the rule that finds a prompt's last word
    token: ``"word_ids"`` (the tokenizer's word ids, as CLIPTextEncode's weighting uses them) or
    ``"qwen_template"`` (the token before the template's ``<|im_end|>``). ``pooled``: some model reads this
    CLIP's pooled output (prompts are then encoded one per call, since ComfyUI returns only the first
    pooled vector of a batch). ``layers``: ``(output key, tokenizer key)`` of a per-layer output the encoder
    gives beside its conditioning (HiDream's Llama-3.1 hidden states, ``[layers, tokens, width]``, one row per
    token of that tokenizer). ``check(clip)``: raises when the CLIP lacks an encoder the model needs."""

    name: str
    description: str
    segments: Callable[[object, dict], tuple[tuple[str, ...], ...]]
    last_word: str = "word_ids"
    pooled: bool = False
    layers: tuple[str, str] | None = None
    check: Callable[[object], None] | None = None


def _single(clip, tokens: dict) -> tuple[tuple[str, ...], ...]:
    return (tuple(tokens),)


def _t5_only(clip, tokens: dict) -> tuple[tuple[str, ...], ...]:
    return (("t5xxl",),)


def _sd3(clip, tokens: dict) -> tuple[tuple[str, ...], ...]:
    model = clip.cond_stage_model
    parts = []
    if getattr(model, "clip_l", None) is not None or getattr(model, "clip_g", None) is not None:
        parts.append(tuple(k for k, sub in (("l", "clip_l"), ("g", "clip_g")) if getattr(model, sub, None) is not None))
    if getattr(model, "t5xxl", None) is not None:
        parts.append(("t5xxl",))
    return tuple(parts)


def _hidream_check(clip) -> None:
    model = clip.cond_stage_model
    missing = [name for name, sub in (("CLIP-L", "clip_l"), ("CLIP-G", "clip_g"), ("T5-XXL", "t5xxl"),
                                      ("Llama-3.1", "llama")) if getattr(model, sub, None) is None]
    if missing:
        raise ValueError(f"this HiDream text encoder lacks {', '.join(missing)}: ScaPre edits every map HiDream reads "
                         "text with, so it needs all four text encoders (QuadrupleCLIPLoader: CLIP-L, CLIP-G, "
                         "T5-XXL, Llama-3.1 8B)")


#: HiDream's per-layer Llama-3.1 output (``conditioning_llama3``) and the tokenizer whose tokens are its rows.
HIDREAM_LAYERS = ("conditioning_llama3", "llama")

#: By ``cond_stage_model`` class name (the first match in its MRO wins).
CLIP_LAYOUTS: dict[str, ClipLayout] = {layout.name: layout for layout in (
    ClipLayout("SD3ClipModel", "CLIP-L + CLIP-G + T5-XXL (SD3/SD3.5)", _sd3, pooled=True),
    ClipLayout("FluxClipModel", "CLIP-L + T5-XXL (Flux)", _t5_only, pooled=True),
    ClipLayout("QwenImageTEModel", "Qwen2.5-VL (Qwen-Image)", _single, last_word="qwen_template"),
    ClipLayout("HiDreamTEModel", "CLIP-L + CLIP-G + T5-XXL + Llama-3.1 (HiDream)", _t5_only, pooled=True,
               layers=HIDREAM_LAYERS, check=_hidream_check),
    ClipLayout("WanT5Model", "umT5-XXL (Wan)", _single),
    ClipLayout("PixArtT5XXL", "T5-XXL (PixArt, Chroma)", _single),
    ClipLayout("MochiT5XXL", "T5-XXL with attention mask (LTX-Video, Mochi)", _single),
    ClipLayout("CosmosT5XXL", "T5-XXL 1.0, 1024 wide (Cosmos)", _single),
    ClipLayout("SDXLClipModel", "CLIP-L + CLIP-G (SDXL)", _single),
    ClipLayout("SDXLRefinerClipModel", "CLIP-G (SDXL refiner)", _single),
    ClipLayout("SD2ClipModel", "OpenCLIP-H (SD2.x)", _single),
    ClipLayout("SD1ClipModel", "CLIP-L (SD1.x)", _single),
)}


def clip_layout(clip) -> ClipLayout:
    """The layout of ``clip``'s text encoder, or an error naming it and what is supported."""
    model = getattr(clip, "cond_stage_model", None)
    for cls in type(model).__mro__:
        if cls.__name__ in CLIP_LAYOUTS:
            return CLIP_LAYOUTS[cls.__name__]
    known = "; ".join(f"{layout.description}" for layout in CLIP_LAYOUTS.values())
    raise ValueError(f"this CLIP's text encoder ({type(model).__name__}) is not supported by ScaPre: load the "
                     f"text encoder of a supported model ({known})")


# ---------------------------------------------------------------------------------------------------
# The models' own text projections (row-wise, computed from the weights the MODEL computes with)
# ---------------------------------------------------------------------------------------------------

Projection = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


def mlp_gelu_tanh(prefix: str, first: str, second: str) -> tuple[tuple[str, ...], Projection]:
    """``Linear -> GELU(tanh) -> Linear`` (Wan's ``text_embedding``, LTX-Video's ``caption_projection``,
    PixArt's ``y_embedder.y_proj``)."""
    keys = tuple(f"{prefix}{layer}.{p}" for layer in (first, second) for p in ("weight", "bias"))

    def project(weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (weights[k] for k in keys)
        hidden = torch.nn.functional.gelu(torch.nn.functional.linear(x, w1, b1), approximate="tanh")
        return torch.nn.functional.linear(hidden, w2, b2)

    return keys, project


def rms_norm(key: str, eps: float) -> tuple[tuple[str, ...], Projection]:
    """``x / rms(x) * weight`` (Qwen-Image's ``txt_norm``)."""

    def project(weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weights[key], eps)

    return (key,), project


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

PREFIX = "diffusion_model."


@dataclass(frozen=True)
class Stream:
    """One input the edited weights read: ``source`` ``"cond"`` (the conditioning rows), ``"pooled"`` (the
    pooled vector) or ``"layers:<k>"`` (layer ``k`` of the encoder's per-layer output, ``ClipLayout.layers``),
    passed through the model's projection (``projection_keys`` read from the model;
    none: the encoder's output as it is). ``masked``: the model drops the rows the encoder's attention
    mask marks as padding, so they are left out of the contexts too."""

    name: str
    source: str
    width_key: str
    projection_keys: tuple[str, ...] = ()
    projection: Projection | None = None
    masked: bool = False


@dataclass(frozen=True)
class Target:
    """One matrix the edit changes: rows ``rows`` (all when ``None``) of the model weight ``key``,
    reading ``stream``. ``kind``: ``"k"``/``"v"`` (a cross-attention key/value projection) or ``"in"``
    (a text-input projection)."""

    name: str
    key: str
    kind: str
    stream: str
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class Architecture:
    name: str
    model_classes: tuple[str, ...]
    text_encoder: str
    clip_layouts: tuple[str, ...]
    published: bool
    where: str
    streams: tuple[Stream, ...]
    targets: Callable[[Mapping[str, tuple[int, ...]]], list[Target]]
    note: str = ""
    #: ``(model, shapes) -> (streams, targets)`` where they depend on the model's configuration (HiDream: which
    #: Llama layer each caption projection reads); ``streams`` and ``targets`` are used otherwise.
    configure: Callable[[object, Mapping[str, tuple[int, ...]]], tuple[tuple[Stream, ...], list[Target]]] | None = \
        None

    @property
    def method(self) -> str:
        return "ScaPre as published" if self.published else "beyond the paper: text-input projection"

    def layout(self, model, shapes: Mapping[str, tuple[int, ...]]) -> tuple[tuple[Stream, ...], list[Target]]:
        """The streams and target matrices of ``model`` (weight shapes ``shapes``)."""
        if self.configure is not None:
            return self.configure(model, shapes)
        return self.streams, self.targets(shapes)


def _matching(shapes: Mapping[str, tuple[int, ...]], pattern: str, kind_group: int | None = None,
              kind: str | None = None, stream: str = "text") -> list[Target]:
    regex = re.compile(pattern)
    out = []
    for key in shapes:
        match = regex.match(key)
        if match:
            out.append(Target(key, key, kind or match.group(kind_group), stream))
    return out


def _unet_targets(shapes):
    return _matching(shapes, r"^diffusion_model\..*\.attn2\.to_([kv])\.weight$", 1)


def _wan_targets(shapes):
    return _matching(shapes, r"^diffusion_model\.blocks\.\d+\.cross_attn\.([kv])\.weight$", 1)


def _ltxv_targets(shapes):
    return _matching(shapes, r"^diffusion_model\.transformer_blocks\.\d+\.attn2\.to_([kv])\.weight$", 1)


def _cosmos2_targets(shapes):
    return _matching(shapes, r"^diffusion_model\.blocks\.\d+\.cross_attn\.([kv])_proj\.weight$", 1)


def _pixart_targets(shapes):
    out = []
    for key in _matching(shapes, r"^diffusion_model\.blocks\.\d+\.cross_attn\.kv_linear\.weight$", kind="kv"):
        rows = shapes[key.key][0] // 2  # kv_linear stacks the key rows over the value rows
        out += [Target(f"{key.key}[k]", key.key, "k", "text", (0, rows)),
                Target(f"{key.key}[v]", key.key, "v", "text", (rows, 2 * rows))]
    return out


def _single_targets(*pairs: tuple[str, str]):
    def targets(shapes):
        return [Target(PREFIX + key, PREFIX + key, "in", stream) for key, stream in pairs if PREFIX + key in shapes]
    return targets


def _hidream_layout(model, shapes):
    """HiDream: ``caption_projection.<i>`` reads Llama-3.1 layer ``llama_layers[i]`` (one per block), the last one
    the T5-XXL output; ``p_embedder.pooled_embedder.linear_1`` the CLIP-L + CLIP-G pooled vector. The layer of
    each projection is the model's own ``llama_layers``."""
    layers = getattr(getattr(getattr(model, "model", None), "diffusion_model", None), "llama_layers", None)
    key = PREFIX + "caption_projection.{}.linear.weight"
    count = 0
    while key.format(count) in shapes:
        count += 1
    if layers is None or count != len(layers) + 1:
        raise ValueError(f"this HiDream model has {count} caption projections and llama_layers {layers!r} (one "
                         "projection per entry and one for T5 expected): it may be a variant the pack does not know")
    text = Stream("text", "cond", key.format(count - 1))
    pooled = Stream("pooled", "pooled", PREFIX + "p_embedder.pooled_embedder.linear_1.weight")
    streams, first = [text], {}
    targets = [Target(key.format(count - 1), key.format(count - 1), "in", "text")]
    for i, layer in enumerate(layers):
        name = f"llama layer {int(layer)}"
        if name not in first:
            first[name] = i
            streams.append(Stream(name, f"layers:{int(layer)}", key.format(i)))
        targets.append(Target(key.format(i), key.format(i), "in", name))
    if pooled.width_key in shapes:
        streams.append(pooled)
        targets.append(Target(pooled.width_key, pooled.width_key, "in", "pooled"))
    return tuple(streams), targets


_WAN_PROJ = mlp_gelu_tanh(PREFIX + "text_embedding.", "0", "2")
_LTXV_PROJ = mlp_gelu_tanh(PREFIX + "caption_projection.", "linear_1", "linear_2")
_PIXART_PROJ = mlp_gelu_tanh(PREFIX + "y_embedder.y_proj.", "fc1", "fc2")
_QWEN_PROJ = rms_norm(PREFIX + "txt_norm.weight", 1e-6)

KEY_NORM_HEAD_NOTE = ("its key projection is followed by an RMS norm over each head of each token's key; the "
                      "closed form makes the erased prompts' keys before that norm equal their guide's, which the "
                      "norm keeps exactly, but a key that the subspace term only shrinks is scaled back up by the "
                      "norm (see docs/dit-models.md)")
KEY_NORM_NOTE = ("its key projection is followed by an RMS norm over each token's key; the closed form "
                 "makes the erased prompts' keys before that norm equal their guide's, which the norm "
                 "keeps exactly, but a key that the subspace term only shrinks is scaled back up by "
                 "the norm (see docs/dit-models.md)")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "SD1.x / SD2.x / SDXL (UNet)",
        ("BaseModel", "SDXL", "SDXLRefiner", "SD21UNCLIP", "SD15_instructpix2pix", "SDXL_instructpix2pix"),
        "the checkpoint's CLIP", ("SD1ClipModel", "SD2ClipModel", "SDXLClipModel", "SDXLRefinerClipModel"),
        True, "every cross-attention key/value projection (attn2.to_k, attn2.to_v)",
        (Stream("text", "cond", ""),), _unet_targets),
    Architecture(
        "Wan 2.1 / 2.2", ("WAN21", "WAN22", "WAN21_Vace", "WAN21_Camera", "WAN21_HuMo", "WAN22_Animate", "WAN22_S2V"),
        "umT5-XXL (CLIPLoader, type wan)", ("WanT5Model",), True,
        "every block's text cross-attention key/value (cross_attn.k, cross_attn.v) over the context after the "
        "model's text_embedding",
        (Stream("text", "cond", PREFIX + "text_embedding.0.weight", *_WAN_PROJ),), _wan_targets,
        note=KEY_NORM_NOTE),
    Architecture(
        "LTX-Video", ("LTXV",), "T5-XXL (CLIPLoader, type ltxv)", ("MochiT5XXL",), True,
        "every block's cross-attention key/value (attn2.to_k, attn2.to_v) over the context after the model's "
        "caption_projection; padding the model masks out is left out",
        (Stream("text", "cond", PREFIX + "caption_projection.linear_1.weight", *_LTXV_PROJ, masked=True),),
        _ltxv_targets, note=KEY_NORM_NOTE),
    Architecture(
        "PixArt-α / PixArt-Σ", ("PixArt",), "T5-XXL (CLIPLoader, type pixart)", ("PixArtT5XXL",), True,
        "every block's cross-attention key and value rows of kv_linear over the context after the model's "
        "y_embedder",
        (Stream("text", "cond", PREFIX + "y_embedder.y_proj.fc1.weight", *_PIXART_PROJ),), _pixart_targets),
    Architecture(
        "Cosmos Predict2", ("CosmosPredict2",), "T5-XXL 1.0 (CLIPLoader, type cosmos)", ("CosmosT5XXL",), True,
        "every block's cross-attention key/value (cross_attn.k_proj, cross_attn.v_proj) over the T5 output",
        (Stream("text", "cond", PREFIX + "blocks.0.cross_attn.k_proj.weight"),), _cosmos2_targets,
        note=KEY_NORM_HEAD_NOTE),
    Architecture(
        "Flux (dev, schnell, Fill, Kontext)", ("Flux",), "CLIP-L + T5-XXL (DualCLIPLoader, type flux)",
        ("FluxClipModel",), False,
        "the text-input projection txt_in (T5 tokens) and the pooled-vector map vector_in.in_layer (CLIP-L)",
        (Stream("text", "cond", PREFIX + "txt_in.weight"),
         Stream("pooled", "pooled", PREFIX + "vector_in.in_layer.weight")),
        _single_targets(("txt_in.weight", "text"), ("vector_in.in_layer.weight", "pooled"))),
    Architecture(
        "Chroma", ("Chroma", "ChromaRadiance"), "T5-XXL (CLIPLoader, type chroma)", ("PixArtT5XXL",), False,
        "the text-input projection txt_in (T5 tokens; Chroma has no pooled vector)",
        (Stream("text", "cond", PREFIX + "txt_in.weight"),), _single_targets(("txt_in.weight", "text"))),
    Architecture(
        "SD3 / SD3.5", ("SD3",), "CLIP-L + CLIP-G + T5-XXL (TripleCLIPLoader)", ("SD3ClipModel",), False,
        "the text-input projection context_embedder (CLIP tokens then T5 tokens) and the pooled-vector map "
        "y_embedder.mlp.0 (CLIP-L + CLIP-G pooled)",
        (Stream("text", "cond", PREFIX + "context_embedder.weight"),
         Stream("pooled", "pooled", PREFIX + "y_embedder.mlp.0.weight")),
        _single_targets(("context_embedder.weight", "text"), ("y_embedder.mlp.0.weight", "pooled"))),
    Architecture(
        "Qwen-Image", ("QwenImage",), "Qwen2.5-VL 7B (CLIPLoader, type qwen_image)", ("QwenImageTEModel",), False,
        "the text-input projection txt_in over the context after the model's txt_norm",
        (Stream("text", "cond", PREFIX + "txt_norm.weight", *_QWEN_PROJ, masked=True),),
        _single_targets(("txt_in.weight", "text"))),
    Architecture(
        "HiDream", ("HiDream",), "CLIP-L + CLIP-G + T5-XXL + Llama-3.1 8B (QuadrupleCLIPLoader)", ("HiDreamTEModel",),
        False,
        "the text-input projections caption_projection (one per block over its Llama-3.1 layer, one over T5) "
        "and the pooled-vector map p_embedder.pooled_embedder.linear_1 (CLIP-L + CLIP-G pooled)",
        (), lambda shapes: [], configure=_hidream_layout),
)

#: Architectures ComfyUI knows that the pack refuses, with why (class name -> reason).
REFUSED: dict[str, str] = {
    "SVD_img2vid": "its cross-attention reads CLIP-vision image embeddings, not text",
    "SV3D_u": "its cross-attention reads CLIP-vision image embeddings, not text",
    "SV3D_p": "its cross-attention reads CLIP-vision image embeddings, not text",
    "Stable_Zero123": "its cross-attention reads CLIP-vision image embeddings, not text",
    "Flux2": "its Mistral text encoder is not supported yet",
    "StableAudio1": "it is an audio model",
    "ACEStep": "it is an audio model",
}


def architecture(model) -> Architecture:
    """The architecture of ``model`` (a MODEL: ComfyUI's ModelPatcher), or an error that names its
    ComfyUI class and lists what is supported."""
    inner = getattr(model, "model", None)
    name = type(inner).__name__
    for arch in ARCHITECTURES:
        if name in arch.model_classes:
            return arch
    why = REFUSED.get(name, "ScaPre does not know where this model reads its text")
    raise ValueError(f"ScaPre cannot edit this MODEL: its architecture is {name} ({why}). Supported: "
                     + "; ".join(f"{a.name} ({', '.join(a.model_classes)})" for a in ARCHITECTURES))


def weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every diffusion-model weight's shape (as numbers: a GGUF tensor's logical shape), read from the patcher
    without copying any weight (``formats.key_entries``: also on scaled fp8 models, where
    ``get_key_patches`` fails)."""
    from . import formats  # imports ComfyUI: only when a MODEL is read

    entries = formats.key_entries(model, formats.weight_names(model, PREFIX))
    return {k: tuple(e.weight.shape) for k, e in entries.items()}


def edit_targets(model, arch: Architecture, edit: str, shapes: Mapping[str, tuple[int, ...]] | None = None
                 ) -> list[Target]:
    """The matrices ``edit`` changes in ``model``; an error when there are none."""
    if edit not in EDIT_MODES:
        raise ValueError(f"edit must be one of {list(EDIT_MODES)}, got {edit!r}")
    shapes = weight_shapes(model) if shapes is None else shapes
    _, targets = arch.layout(model, shapes)
    if not arch.published:
        if edit != "keys and values":
            raise ValueError(f"edit {edit!r} chooses between key and value projections, but {arch.name} reads its "
                             f"text through one projection ({arch.where}): use edit 'keys and values'")
        chosen = targets
    else:
        kinds = EDIT_MODES[edit]
        chosen = [t for t in targets if t.kind in kinds]
    if not chosen:
        raise ValueError(f"this {arch.name} model has none of the weights ScaPre edits ({arch.where}); "
                         "it may be a variant the pack does not know")
    return chosen


def stream_width(arch: Architecture, stream: Stream, shapes: Mapping[str, tuple[int, ...]],
                 targets: list[Target]) -> int:
    """The text width ``stream`` must have: the input width of its projection, else of its first target."""
    if stream.width_key and stream.width_key in shapes:
        shape = shapes[stream.width_key]
        return int(shape[-1] if len(shape) > 1 else shape[0])
    first = next(t for t in targets if t.stream == stream.name)
    return int(shapes[first.key][-1])
