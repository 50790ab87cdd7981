"""The world's text-to-image model, SD's anatomy at small scale.

* :class:`TextEncoder`: a causal word-level transformer with CLIP's conventions (start token, end token, end-token
  padding to 77, final layer norm); its ``[B, 77, d]`` output is the conditioning, as in SD1.x. Two kinds
  (``ModelConfig.text_encoder``): ``causal`` (CLIP's: every token reads the tokens before it, so the end and padding
  tokens carry the prompt's words) and ``causal-blind-end`` (end and padding tokens read only the start token and
  the end tokens before them, so they carry no word: the concept lives on its word token alone).
* :class:`UNet`: an eps-predicting UNet whose only path from the text to the image is cross-attention
  ``attn2`` (``to_q``, ``to_k``, ``to_v`` without bias, ``to_out``), at the low resolutions; the edit targets
  ``attn2.to_k.weight`` / ``attn2.to_v.weight`` as in SD.
* The diffusion transformers (``dit-cross``: Wan's cross-attention DiT; ``mmdit``: Flux's joint-attention MMDiT) and
  the bidirectional T5-like encoders (``t5``, ``t5-masked``) they read are in ``dit.py``.
* :class:`Schedule`: a cosine noise schedule over 1000 steps, training by eps-prediction with min-SNR weights, and
  a deterministic DDIM sampler with classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .world import CONTEXT, END, START, VOCAB, tokenize

#: Text-encoder kinds (``ModelConfig.text_encoder``; see the module docstring; the bidirectional T5-like ``t5`` and
#: ``t5-masked`` are in ``dit.py``); a kind maps to its class in :func:`build_text_encoder`.
TEXT_ENCODER_KINDS = ("causal", "causal-blind-end", "t5", "t5-masked")
#: Denoiser kinds (``ModelConfig.denoiser``; the diffusion transformers ``dit-cross`` and ``mmdit`` are in
#: ``dit.py``); a kind maps to its class in :func:`build_denoiser`.
DENOISER_KINDS = ("unet", "dit-cross", "mmdit")
#: Fields added after the first world: left out of the cache key where they have their defaults.
_LATER_FIELDS = ("text_encoder", "denoiser", "dit_width", "dit_depth", "dit_heads", "patch", "dit_stem", "dit_mix_ffn",
                 "dit_qk_init", "dit_rope")


@dataclass(frozen=True)
class ModelConfig:
    size: int = 16  # image side
    text_dim: int = 64  # d: the conditioning width (768 in SD1.x)
    text_layers: int = 2
    text_heads: int = 4
    channels: tuple[int, int, int] = (32, 64, 96)  # UNet widths at S, S/2, S/4
    heads: int = 2
    text_encoder: str = "causal"  # one of TEXT_ENCODER_KINDS
    denoiser: str = "unet"  # one of DENOISER_KINDS
    dit_width: int = 128  # a diffusion transformer's token width (``dit-cross``, ``mmdit``)
    dit_depth: int = 4  # its blocks
    dit_heads: int = 4
    patch: int = 2  # its patch side: (size / patch)^2 picture tokens
    dit_stem: bool = False  # a convolution block at full resolution before and after the patches (``dit.py``)
    dit_mix_ffn: bool = False  # picture tokens' feed-forward with a 3x3 depthwise convolution (SANA's Mix-FFN)
    dit_qk_init: float = 1.0  # where the RMS norms on queries and keys start
    dit_rope: bool = True  # axial 2-D rotary positions on picture tokens in self-/joint attention

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODER_KINDS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODER_KINDS}, got {self.text_encoder!r}")
        if self.denoiser not in DENOISER_KINDS:
            raise ValueError(f"denoiser must be one of {DENOISER_KINDS}, got {self.denoiser!r}")

    def to_dict(self) -> dict[str, str]:
        """Every field as JSON text (numbers and lists read as before; kinds are JSON strings)."""
        import json

        return {k: json.dumps(list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def key_dict(self) -> dict[str, str]:
        """:meth:`to_dict` without the fields added after the first world, where they have their defaults: the
        cache key of a world made before they existed stays the same."""
        out = self.to_dict()
        for name in _LATER_FIELDS:
            if getattr(self, name) == self.__dataclass_fields__[name].default:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, str]) -> ModelConfig:
        import json

        parsed = {k: json.loads(v) for k, v in values.items() if k in cls.__dataclass_fields__}
        if "channels" in parsed:
            parsed["channels"] = tuple(parsed["channels"])
        return cls(**parsed)


class TextEncoder(nn.Module):
    """Causal pre-norm transformer over word tokens, positional embeddings for 77 places, final layer norm.

    With ``cfg.text_encoder == "causal-blind-end"`` the end and padding tokens also do not read the word tokens
    (only the start token and the end tokens before them)."""

    has_start_token = True  # CLIP's layout: last-word indices count the start token
    tokenize = staticmethod(tokenize)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.text_dim
        self.blind_end = cfg.text_encoder == "causal-blind-end"
        self.heads = cfg.text_heads
        self.token_embedding = nn.Embedding(len(VOCAB), d)
        self.position_embedding = nn.Parameter(torch.randn(CONTEXT, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.text_heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.final_layer_norm = nn.LayerNorm(d)
        self.register_buffer("causal", torch.triu(torch.full((CONTEXT, CONTEXT), float("-inf")), 1),
                             persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding
        if self.blind_end:
            word = (ids != START) & (ids != END)  # [B, L]
            blocked = (ids == END).unsqueeze(2) & word.unsqueeze(1)  # query is an end token, key is a word
            mask = self.causal + torch.zeros(blocked.shape, dtype=x.dtype).masked_fill(blocked, float("-inf"))
            x = self.layers(x, mask=mask.repeat_interleave(self.heads, dim=0), is_causal=False)
        else:
            x = self.layers(x, mask=self.causal, is_causal=True)
        return self.final_layer_norm(x)


def build_text_encoder(cfg: ModelConfig) -> nn.Module:
    """The text encoder of ``cfg.text_encoder``: ``ids [B, L] -> [B, L, text_dim]`` (``L`` 77, or ``T5_CONTEXT`` for
    the T5-like kinds); its ``tokenize`` makes the ids of a prompt and finds its last word token."""
    if cfg.text_encoder in ("t5", "t5-masked"):
        from .dit import T5Encoder

        return T5Encoder(cfg)
    return TextEncoder(cfg)


def build_denoiser(cfg: ModelConfig) -> nn.Module:
    """The denoiser of ``cfg.denoiser``: ``(x [B, 3, S, S], t [B], context [B, L, d]) -> eps``; the text reaches it
    only through the weights :func:`cross_attention_weights` returns (after the model's own text projection,
    ``text_contexts``, where it has one)."""
    from .dit import DiTCross, MMDiT

    return {"unet": UNet, "dit-cross": DiTCross, "mmdit": MMDiT}[cfg.denoiser](cfg)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """SD's attention: ``to_q``, ``to_k``, ``to_v`` without bias, ``to_out`` with bias."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, c // h).transpose(1, 2)
        k = self.to_k(context).view(b, -1, h, c // h).transpose(1, 2)
        v = self.to_v(context).view(b, -1, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """SD's spatial transformer: self-attention ``attn1``, cross-attention ``attn2`` on the text, feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        h = h + self.attn1(self.norm1(h))
        h = h + self.attn2(self.norm2(h), context)
        h = h + self.ff(self.norm3(h))
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, hgt, wid))


class UNet(nn.Module):
    """Three resolutions (S, S/2, S/4); cross-attention at S/2 and S/4 and in the middle, none at full size."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        d, heads = cfg.text_dim, cfg.heads
        temb = 4 * c1
        self.c1 = c1
        self.time_embed = nn.Sequential(nn.Linear(c1, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(3, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, temb)
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2 = ResBlock(c1, c2, temb)
        self.down2_attn = TransformerBlock(c2, d, heads)
        self.pool2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.down3 = ResBlock(c2, c3, temb)
        self.down3_attn = TransformerBlock(c3, d, heads)
        self.mid1 = ResBlock(c3, c3, temb)
        self.mid_attn = TransformerBlock(c3, d, heads)
        self.mid2 = ResBlock(c3, c3, temb)
        self.up3 = ResBlock(c3 + c3, c3, temb)
        self.up3_attn = TransformerBlock(c3, d, heads)
        self.up2 = ResBlock(c3 + c2, c2, temb)
        self.up2_attn = TransformerBlock(c2, d, heads)
        self.up1 = ResBlock(c2 + c1, c1, temb)
        self.norm_out = nn.GroupNorm(8, c1)
        self.conv_out = nn.Conv2d(c1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.c1))
        h1 = self.down1(self.conv_in(x), emb)
        h2 = self.down2_attn(self.down2(self.pool1(h1), emb), context)
        h3 = self.down3_attn(self.down3(self.pool2(h2), emb), context)
        m = self.mid2(self.mid_attn(self.mid1(h3, emb), context), emb)
        u3 = self.up3_attn(self.up3(torch.cat([m, h3], 1), emb), context)
        u2 = F.interpolate(u3, scale_factor=2, mode="nearest")
        u2 = self.up2_attn(self.up2(torch.cat([u2, h2], 1), emb), context)
        u1 = F.interpolate(u2, scale_factor=2, mode="nearest")
        u1 = self.up1(torch.cat([u1, h1], 1), emb)
        return self.conv_out(F.silu(self.norm_out(u1)))


def cross_attention_weights(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Every ``attn2.to_k.weight`` / ``attn2.to_v.weight`` of the denoiser (what ScaPre edits), by state-dict key; for a
    diffusion transformer its ``edited_weights()`` (``cross_attn.k`` / ``.v``, or the text-input projection)."""
    if hasattr(unet, "edited_weights"):
        return unet.edited_weights()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()
            if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k}


class Schedule:
    """Cosine schedule (Nichol & Dhariwal) over ``steps`` discrete timesteps; eps-prediction."""

    def __init__(self, steps: int = 1000) -> None:
        self.steps = steps
        s = 0.008
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = (f[1:] / f[0]).clamp(min=1e-5, max=0.9999)
        self.alpha_bar = alpha_bar.float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def loss_weight(self, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
        """min-SNR-gamma weights for the eps loss: ``min(snr, gamma) / snr``."""
        a = self.alpha_bar[t]
        snr = a / (1 - a)
        return snr.clamp(max=gamma) / snr

    @torch.no_grad()
    def ddim(self, unet: UNet, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor,
             steps: int = 20, guidance: float = 4.0, batch: int = 256) -> torch.Tensor:
        """Deterministic DDIM (eta 0) with classifier-free guidance ``uncond + w (cond - uncond)``; ``noise`` is
        the starting latent ``[n, 3, S, S]``, ``cond`` ``[n, 77, d]``, ``uncond`` ``[77, d]``. Returns images in
        [-1, 1]. Runs in chunks of ``batch`` images (independent of each other, so chunking does not change
        a picture's result beyond float rounding of batched kernels)."""
        out = []
        ts = torch.linspace(self.steps - 1, 0, steps).round().long()
        for i in range(0, noise.shape[0], batch):
            x = noise[i:i + batch].clone()
            c = cond[i:i + batch]
            n = x.shape[0]
            ctx = torch.cat([uncond.unsqueeze(0).expand(n, -1, -1), c])
            for j, t in enumerate(ts):
                tt = t.expand(2 * n)
                eps_u, eps_c = unet(torch.cat([x, x]), tt, ctx).chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
                a = self.alpha_bar[t]
                a_prev = self.alpha_bar[ts[j + 1]] if j + 1 < len(ts) else torch.tensor(1.0)
                x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            out.append(x)
        return torch.cat(out).clamp(-1, 1)
