"""Diffusion transformers for the miniature world, and the T5-like text encoder they read.

Two denoiser kinds (``ModelConfig.denoiser``), both patchifying the ``[B, 3, S, S]`` picture into ``(S / patch)^2``
tokens, conditioned on the timestep by adaptive layer norms, predicting eps like the UNet (same schedule, same
sampler), so that the worlds differ from the UNet worlds in the architecture only:

* :class:`DiTCross` (``dit-cross``), Wan's anatomy (also LTX-Video's and PixArt's): the text encoder's output passes
  once through the model's own text projection ``text_embedding`` (``Linear -> GELU(tanh) -> Linear``), and every
  block reads that fixed context through cross-attention ``cross_attn`` (``q``, ``k``, ``v``, ``o`` with bias;
  ``k`` and ``q`` are followed by an RMS norm over the whole width, ``norm_k`` / ``norm_q``, as in Wan). The edit
  targets every ``blocks.N.cross_attn.k.weight`` / ``.v.weight``: ScaPre as published, with the contexts after
  ``text_embedding``.
* :class:`MMDiT` (``mmdit``), Flux's double-stream blocks (SD3's MM-DiT): the text encoder's tokens pass through the
  text-input projection ``txt_in`` (``Linear`` with bias) into a text stream that every block updates, with joint
  attention over ``[text; image]`` tokens (separate ``qkv``, ``proj``, ``mlp`` and modulation per stream, RMS
  norms on each head's queries and keys). There is no pooled text vector (as in Chroma): ``txt_in`` is the only
  map that reads the text encoder's output, and it is what the edit targets (beyond the paper).

Picture tokens carry a learned absolute position and axial 2-D rotary positions in self-/joint attention
(``dit_rope``, on by default; text tokens are not turned, as Flux gives them position 0). Three model fields stand
in for the VAE and the scale of training that real DiTs have, none of them on the text side: ``dit_stem`` (a
residual convolution block at full resolution before and after the patches, :class:`_ConvPatches`), ``dit_mix_ffn``
(SANA's feed-forward with a 3x3 depthwise convolution, :class:`MixFFN`) and ``dit_qk_init`` (where the query/key RMS
norms start). With them the registered worlds learn colours and styles on one CPU thread within minutes; shapes stay
near chance (``docs/dit-worlds.md``).

Text encoder kinds (``ModelConfig.text_encoder``), both bidirectional (no causal mask) with T5's token layout (no
start token; the words, one end token ``</s>``, then pad tokens up to :data:`T5_CONTEXT` places; learned absolute
positions instead of T5's relative position buckets):

* ``t5``: as ComfyUI runs Flux's T5-XXL (``attention_mask=False``): every position, padding included, reads every
  position and the denoiser reads all of them, so the padding carries the prompt;
* ``t5-masked``: as ComfyUI runs Wan's umT5 (``enable_attention_masks``, ``zero_out_masked``): no position reads
  the padding, and the padding's outputs are zeros, so that after the model's text projection every prompt's
  padding is one and the same vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import ModelConfig, timestep_embedding
from .world import END, SPECIALS, VOCAB, WORDS

#: Places of the T5-like encoder's output (Flux pads T5 to 256 or 512, Wan to 512; the world's prompts have at most
#: 7 words, so 32 places keep most of a sequence padding, as in the real models, at a tenth of the cost).
T5_CONTEXT = 32
#: The T5-like encoder's pad token: one more row of its own embedding (the CLIP-like encoders pad with ``<end>``).
PAD = len(VOCAB)


def t5_tokenize(text: str) -> tuple[torch.Tensor, int]:
    """T5's layout at word level: ``[words..., </s>, <pad>, ...]`` of length :data:`T5_CONTEXT`, and the index of the
    last word token (``-1`` for the empty prompt, which has none: its first token is the end token)."""
    words = text.split()
    unknown = [w for w in words if w not in VOCAB or w in SPECIALS]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown} in {text!r}; the world knows {list(WORDS)}")
    if len(words) > T5_CONTEXT - 1:
        raise ValueError(f"prompt {text!r} is longer than {T5_CONTEXT - 1} words")
    ids = torch.full((T5_CONTEXT,), PAD, dtype=torch.long)
    ids[:len(words)] = torch.tensor([VOCAB[w] for w in words], dtype=torch.long)
    ids[len(words)] = END
    return ids, len(words) - 1


class T5Encoder(nn.Module):
    """Bidirectional pre-norm transformer with T5's token layout (see the module docstring)."""

    has_start_token = False
    tokenize = staticmethod(t5_tokenize)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.text_dim
        self.masked = cfg.text_encoder == "t5-masked"
        self.token_embedding = nn.Embedding(len(VOCAB) + 1, d)
        self.position_embedding = nn.Parameter(torch.randn(T5_CONTEXT, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.text_heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[:ids.shape[1]]
        if not self.masked:
            return self.final_layer_norm(self.layers(x))
        pad = ids == PAD
        x = self.layers(x, src_key_padding_mask=pad)
        return self.final_layer_norm(x) * (~pad).unsqueeze(-1).to(x.dtype)


# --- shared parts --------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, init: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class MixFFN(nn.Module):
    """SANA's feed-forward for picture tokens: ``Linear -> 3x3 depthwise convolution over the token grid ->
    GELU(tanh) -> Linear``. The convolution gives a transformer this small some locality (it helped colours and
    styles in the CPU pilots; shapes stayed near chance, see ``docs/dit-worlds.md``); the text side (what the edit
    reads) is untouched by it."""

    def __init__(self, dim: int, hidden: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.fc1 = nn.Linear(dim, hidden)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.fc1(x).transpose(1, 2).reshape(b, -1, self.side, self.side)
        h = F.gelu(self.conv(h), approximate="tanh")
        return self.fc2(h.flatten(2).transpose(1, 2))


def _picture_ffn(dim: int, side: int, mix: bool) -> nn.Module:
    return MixFFN(dim, 4 * dim, side) if mix else _mlp(dim, 4 * dim)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def rope_tables(side: int, head_dim: int, theta: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2-D rotary position tables for a ``side x side`` grid of tokens (row-major), as Flux and Wan rotate
    their picture tokens: the first half of each head's pairs turns with the row, the second with the column.
    ``(cos, sin)``, each ``[side^2, head_dim / 2]``."""
    if head_dim % 4:
        raise ValueError(f"rotary positions need a head width divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(side, dtype=torch.float64)
    rows, cols = pos.repeat_interleave(side), pos.repeat(side)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)
    return angles.cos().float(), angles.sin().float()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, heads, N, head_dim]`` with each pair of channels turned by its token's angles."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


class _Patches(nn.Module):
    """Picture to tokens (a strided convolution, as Wan's ``patch_embedding``) with learned positions, and back."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch, self.side = cfg.patch, cfg.size // cfg.patch
        self.embed = nn.Conv2d(3, cfg.dit_width, cfg.patch, stride=cfg.patch)
        self.position = nn.Parameter(torch.randn(self.side * self.side, cfg.dit_width) * 0.02)
        cos, sin = rope_tables(self.side, cfg.dit_width // cfg.dit_heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    out_channels = 3

    def tokens(self, x: torch.Tensor, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.embed(x).flatten(2).transpose(1, 2) + self.position, None

    def unpatch(self, tokens: torch.Tensor, channels: int) -> torch.Tensor:
        b, p, s = tokens.shape[0], self.patch, self.side
        x = tokens.view(b, s, s, channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, channels, s * p, s * p)

    def picture(self, tokens: torch.Tensor, skip: torch.Tensor | None, vec: torch.Tensor) -> torch.Tensor:
        return self.unpatch(tokens, 3)


class _ConvPatches(_Patches):
    """A residual convolution block at full resolution before the patches and after them (with a skip), in the
    place of the VAE and the scale of training that real DiTs have (``ModelConfig.dit_stem``). In the CPU pilots it
    helped colours and styles, not shapes (``docs/dit-worlds.md``). The text never reaches it."""

    def __init__(self, cfg: ModelConfig, channels: int = 32) -> None:
        super().__init__(cfg)
        from .model import ResBlock

        self.out_channels = channels
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        self.stem = ResBlock(channels, channels, cfg.dit_width)
        self.embed = nn.Conv2d(channels, cfg.dit_width, cfg.patch, stride=cfg.patch)
        self.decode = ResBlock(2 * channels, channels, cfg.dit_width)
        self.norm_out = nn.GroupNorm(8, channels)
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)

    def tokens(self, x: torch.Tensor, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        skip = self.stem(self.conv_in(x), vec)
        return self.embed(skip).flatten(2).transpose(1, 2) + self.position, skip

    def picture(self, tokens: torch.Tensor, skip: torch.Tensor | None, vec: torch.Tensor) -> torch.Tensor:
        h = self.decode(torch.cat([self.unpatch(tokens, self.out_channels), skip], 1), vec)
        return self.conv_out(F.silu(self.norm_out(h)))


def _patches(cfg: ModelConfig) -> _Patches:
    return _ConvPatches(cfg) if cfg.dit_stem else _Patches(cfg)


class _Head(nn.Module):
    """Final adaptive layer norm and the linear map to patches (zero at the start, as in DiT)."""

    def __init__(self, dim: int, patch: int, channels: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch * patch * channels)
        for layer in (self.modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(vec)).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class _Time(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))


# --- cross-attention DiT (Wan) -------------------------------------------------------------------------------

class WanAttention(nn.Module):
    """Wan's attention: ``q``, ``k``, ``v``, ``o`` with bias; RMS norms over the whole width after ``q`` and ``k``."""

    def __init__(self, dim: int, heads: int, qk_init: float = 1.0) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, init=qk_init), RMSNorm(dim, init=qk_init)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Self-attention (``context`` None; picture tokens turned by ``rotary``) or cross-attention on ``context``."""
        context = x if context is None else context
        q = _heads(self.norm_q(self.q(x)), self.heads)
        k = _heads(self.norm_k(self.k(context)), self.heads)
        v = _heads(self.v(context), self.heads)
        if rotary is not None:
            q, k = rope(q, *rotary), rope(k, *rotary)
        return self.o(_merge(F.scaled_dot_product_attention(q, k, v)))


class WanBlock(nn.Module):
    """Self-attention and feed-forward under the timestep's modulation; cross-attention on the text in between."""

    def __init__(self, cfg: ModelConfig, side: int) -> None:
        super().__init__()
        dim, heads = cfg.dit_width, cfg.dit_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = WanAttention(dim, heads, cfg.dit_qk_init)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = WanAttention(dim, heads, cfg.dit_qk_init)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ffn = _picture_ffn(dim, side, cfg.dit_mix_ffn)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, context: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e).unbind(1)
        x = x + gate1.unsqueeze(1) * self.self_attn(_modulate(self.norm1(x), shift1, scale1), rotary=rotary)
        x = x + self.cross_attn(self.norm3(x), context)
        return x + gate2.unsqueeze(1) * self.ffn(_modulate(self.norm2(x), shift2, scale2))


class DiTCross(nn.Module):
    """Wan's anatomy at small scale (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.dit_width
        self.patches = _patches(cfg)
        self.rotary = cfg.dit_rope
        self.time_embedding = _Time(dim)
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(WanBlock(cfg, self.patches.side) for _ in range(cfg.dit_depth))
        self.head = _Head(dim, cfg.patch, self.patches.out_channels)

    def text_contexts(self, encoded: torch.Tensor) -> torch.Tensor:
        """What every block's ``cross_attn.k`` / ``.v`` read: the encoder's output after ``text_embedding``."""
        return self.text_embedding(encoded)

    def edited_weights(self) -> dict[str, torch.Tensor]:
        """Every ``blocks.N.cross_attn.k.weight`` / ``.v.weight`` (what ScaPre edits), by state-dict key."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if k.endswith((".cross_attn.k.weight", ".cross_attn.v.weight"))}

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        vec = self.time_embedding(t)
        e = self.time_projection(vec).unflatten(1, (6, -1))
        context = self.text_contexts(context)
        h, skip = self.patches.tokens(x, vec)
        rotary = (self.patches.cos, self.patches.sin) if self.rotary else None
        for block in self.blocks:
            h = block(h, e, context, rotary)
        return self.patches.picture(self.head(h, vec), skip, vec)


# --- joint-attention MMDiT (Flux double-stream blocks, SD3's MM-DiT) -------------------------------------------

class _Stream(nn.Module):
    """One stream's half of a double block (Flux's ``img_*`` or ``txt_*`` modules)."""

    def __init__(self, dim: int, heads: int, qk_init: float = 1.0, side: int | None = None, mix: bool = False) -> None:
        """``side``: the token grid's side for the picture stream, None for text; ``mix``: the picture stream's
        feed-forward convolves (:class:`MixFFN`)."""
        super().__init__()
        self.heads = heads
        self.mod = nn.Linear(dim, 6 * dim)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(dim // heads, init=qk_init)
        self.norm_k = RMSNorm(dim // heads, init=qk_init)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _mlp(dim, 4 * dim) if side is None else _picture_ffn(dim, side, mix)

    def qkv_of(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        q, k, v = self.qkv(_modulate(self.norm1(x), mod[0], mod[1])).chunk(3, dim=-1)
        return self.norm_q(_heads(q, self.heads)), self.norm_k(_heads(k, self.heads)), _heads(v, self.heads)

    def finish(self, x: torch.Tensor, attn: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = x + mod[2].unsqueeze(1) * self.proj(attn)
        return x + mod[5].unsqueeze(1) * self.mlp(_modulate(self.norm2(x), mod[3], mod[4]))


class DoubleBlock(nn.Module):
    """Flux's double-stream block: joint attention over ``[text; image]``, each stream with its own weights."""

    def __init__(self, cfg: ModelConfig, side: int) -> None:
        super().__init__()
        dim, heads, qk = cfg.dit_width, cfg.dit_heads, cfg.dit_qk_init
        self.img = _Stream(dim, heads, qk, side, cfg.dit_mix_ffn)
        self.txt = _Stream(dim, heads, qk)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Picture tokens turned by ``rotary`` (None: not turned); text tokens not (Flux gives them position 0)."""
        img_mod = self.img.mod(F.silu(vec)).chunk(6, dim=1)
        txt_mod = self.txt.mod(F.silu(vec)).chunk(6, dim=1)
        iq, ik, iv = self.img.qkv_of(img, img_mod)
        if rotary is not None:
            iq, ik = rope(iq, *rotary), rope(ik, *rotary)
        tq, tk, tv = self.txt.qkv_of(txt, txt_mod)
        attn = _merge(F.scaled_dot_product_attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2),
                                                     torch.cat([tv, iv], 2)))
        n = txt.shape[1]
        return self.img.finish(img, attn[:, n:], img_mod), self.txt.finish(txt, attn[:, :n], txt_mod)


class MMDiT(nn.Module):
    """Flux's double-stream anatomy at small scale, without a pooled text vector (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.dit_width
        self.patches = _patches(cfg)
        self.rotary = cfg.dit_rope
        self.time_in = _Time(dim)
        self.txt_in = nn.Linear(cfg.text_dim, dim)
        self.double_blocks = nn.ModuleList(DoubleBlock(cfg, self.patches.side) for _ in range(cfg.dit_depth))
        self.head = _Head(dim, cfg.patch, self.patches.out_channels)

    def text_contexts(self, encoded: torch.Tensor) -> torch.Tensor:
        """What ``txt_in`` reads: the text encoder's output as it is."""
        return encoded

    def edited_weights(self) -> dict[str, torch.Tensor]:
        """``txt_in.weight``, the only map that reads the text encoder's tokens (what the edit changes)."""
        return {"txt_in.weight": self.txt_in.weight.detach().clone()}

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        vec = self.time_in(t)
        (img, skip), txt = self.patches.tokens(x, vec), self.txt_in(context)
        rotary = (self.patches.cos, self.patches.sin) if self.rotary else None
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rotary)
        return self.patches.picture(self.head(img, vec), skip, vec)
