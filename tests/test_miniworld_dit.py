"""The miniature world's diffusion transformers and T5-like encoder (benchmarks/miniworld/dit.py).

Fast tests check the anatomy (where the text enters, T5's token layout and padding, the alignment of the edit's
contexts); one slow test trains a tiny colours-only MMDiT world and erases a colour through its text-input
projection alone.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the miniworld benchmark package

from miniworld.dit import PAD, T5_CONTEXT, rope, rope_tables, t5_tokenize
from miniworld.evaluate import concept_set
from miniworld.model import ModelConfig, build_denoiser, build_text_encoder, cross_attention_weights
from miniworld.train import TrainConfig, World
from miniworld.world import END, VOCAB
from miniworld.worlds import WORLDS

SMALL = dict(text_dim=16, text_layers=1, text_heads=2, dit_width=16, dit_depth=2, dit_heads=2)


def small(encoder: str, denoiser: str) -> ModelConfig:
    return ModelConfig(text_encoder=encoder, denoiser=denoiser, **SMALL)


def test_t5_layout_has_no_start_token_and_pads_with_its_own_token():
    ids, last = t5_tokenize("a red circle")
    assert ids.shape == (T5_CONTEXT,) and last == 2
    assert ids[:3].tolist() == [VOCAB["a"], VOCAB["red"], VOCAB["circle"]]
    assert int(ids[3]) == END and bool((ids[4:] == PAD).all())
    empty, last_empty = t5_tokenize("")
    assert last_empty == -1 and int(empty[0]) == END and bool((empty[1:] == PAD).all())
    with pytest.raises(ValueError, match="unknown word"):
        t5_tokenize("a <end>")


@torch.no_grad()
def test_t5_encoders_read_both_ways_and_handle_padding_as_documented():
    torch.manual_seed(0)
    a, _ = t5_tokenize("a red circle")
    b, _ = t5_tokenize("a red square")
    ids = torch.stack([a, b])
    for kind in ("t5", "t5-masked"):
        out = build_text_encoder(small(kind, "mmdit")).eval()(ids)
        assert out.shape == (2, T5_CONTEXT, 16)
        assert not torch.allclose(out[0, 1], out[1, 1]), f"{kind}: an earlier word does not read a later one"
        pad = out[:, 4:]
        if kind == "t5-masked":  # Wan: padding read by no one, zeroed
            assert bool((pad == 0).all())
        else:  # Flux: padding reads the prompt
            assert not torch.allclose(pad[0], pad[1])


@torch.no_grad()
@pytest.mark.parametrize("denoiser", ["dit-cross", "mmdit"])
@pytest.mark.parametrize("stem,mix,rotary", [(False, False, True), (True, True, True), (False, False, False)])
def test_text_reaches_a_transformer_only_through_the_edited_weights(denoiser, stem, mix, rotary):
    """With the edited weights zeroed, what the transformer predicts no longer depends on the text (also with the
    convolution stem and Mix-FFN of the registered worlds: they see picture tokens only)."""
    torch.manual_seed(0)
    model = build_denoiser(replace(small("t5", denoiser), dit_stem=stem, dit_mix_ffn=mix, dit_qk_init=2.0,
                                   dit_rope=rotary)).eval()
    for layer in model.modules():  # the zero-initialised head would hide every dependence
        if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
            torch.nn.init.normal_(layer.weight, std=0.2)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500, 500])
    c1, c2 = torch.randn(2, T5_CONTEXT, 16), torch.randn(2, T5_CONTEXT, 16)
    assert not torch.allclose(model(x, t, c1), model(x, t, c2))
    edited = cross_attention_weights(model)
    expected = ({"txt_in.weight"} if denoiser == "mmdit" else
                {f"blocks.{i}.cross_attn.{kv}.weight" for i in range(2) for kv in "kv"})
    assert set(edited) == expected
    model.load_state_dict({k: torch.zeros_like(v) for k, v in edited.items()}, strict=False)
    assert torch.allclose(model(x, t, c1), model(x, t, c2), atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("encoder,denoiser", [("t5-masked", "dit-cross"), ("t5", "mmdit")])
def test_concept_contexts_follow_the_packs_t5_alignment(encoder, denoiser):
    """From the last word on, aligned with the empty guide's end token taken twice, after the model's own text
    projection (nodes/glue/encode.py's definition for encoders without a start token)."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=small(encoder, denoiser))
    world = World(cfg, build_text_encoder(cfg.model).eval(), build_denoiser(cfg.model).eval(), None, 0.0, 0.0, 0)
    cs = concept_set(world, ["red", "green triangle"], ["orange"])
    enc, last = world.encode(["red", "green triangle", "", "orange"])
    ctx = world.unet.text_contexts(enc)
    red, pair, empty, orange = ctx
    guide = torch.cat([empty[:1], empty])
    assert last[:2] == [0, 1]
    assert torch.equal(cs.contexts[0], red) and torch.equal(cs.targets[0], guide[:T5_CONTEXT])
    assert torch.equal(cs.contexts[1], pair[1:]) and torch.equal(cs.targets[1], guide[:T5_CONTEXT - 1])
    assert torch.equal(cs.concept_vecs, torch.stack([red[0], pair[1]]))
    assert torch.equal(cs.empty_vec, empty[0])
    assert torch.equal(cs.preserve_contexts[0], orange)
    assert cs.dim == (16 if denoiser == "mmdit" else SMALL["dit_width"])


def test_registry_has_a_world_of_each_transformer():
    kinds = {(s.text_encoder, s.denoiser) for s in WORLDS.values()}
    assert {("t5-masked", "dit-cross"), ("t5", "mmdit")} <= kinds


# --- slow: a tiny MMDiT world, erased through txt_in -----------------------------------------------------------

def test_rotary_positions_turn_pairs_and_attend_by_offset():
    """Axial 2-D rotary positions keep every vector's norm, and a query and key on the same row attend by their
    column offset alone (the same logit at columns (0, 1) as at (2, 3)); head widths not divisible by 4 are refused."""
    torch.manual_seed(0)
    cos, sin = rope_tables(4, 8)
    assert cos.shape == sin.shape == (16, 4)
    x = torch.randn(1, 1, 16, 8)
    turned = rope(x, cos, sin)
    assert torch.allclose(turned.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    q, k = torch.randn(8), torch.randn(8)
    same = torch.stack([q, k, q, k])[None, None]  # tokens 0..3: row 0, columns 0..3
    r = rope(same, cos[:4], sin[:4])[0, 0]
    assert torch.allclose(r[0] @ r[1], r[2] @ r[3], atol=1e-5)
    assert not torch.allclose(r[0] @ r[1], r[0] @ r[3], atol=1e-3)
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_tables(4, 6)
