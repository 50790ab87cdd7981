"""The text side of DiT edits without ComfyUI: aligning encoder segments (nodes/glue/encode.py) on hand-built
encodings, and the architecture table (nodes/glue/architectures.py)."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.nodes.glue import architectures
from comfyui_scapre.nodes.glue.encode import Encoding, Segment, compress_tail, stream_sets
from comfyui_scapre.scapre_core import ConceptSet
from comfyui_scapre.scapre_core.prompts import plan_prompts


def _rows(values: list[float], d: int = 2) -> torch.Tensor:
    """Row i holds values[i] in every column: positions stay readable."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1).repeat(1, d)


def _enc(values, segments, pooled=None) -> Encoding:
    rows = _rows(values)
    return Encoding(compress_tail(rows), rows.shape[0], tuple(segments), pooled)


def test_clip_layout_matches_from_embeddings():
    """One CLIP segment with a start token: the published alignment, bit for bit."""
    T = 8
    plan = plan_prompts("cat, dog")
    seg = lambda last: Segment(("l",), 0, T, T, last, True)  # noqa: E731
    enc = {"": _enc([500 + i for i in range(T)], [seg(None)]),
           "cat": _enc([100 + i for i in range(T)], [seg(2)]),
           "dog": _enc([200 + i for i in range(T)], [seg(4)])}
    sets = stream_sets(plan, enc)
    ref = ConceptSet.from_embeddings([enc["cat"].rows, enc["dog"].rows], [2, 4], [enc[""].rows] * 2, [0, 0],
                                     enc[""].rows)
    for a, b in zip(sets.erase.contexts + sets.erase.targets, ref.contexts + ref.targets, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(sets.erase.concept_vecs, ref.concept_vecs)
    assert torch.equal(sets.erase.empty_vec, ref.empty_vec)


def test_encoder_without_start_token_meets_end_with_end():
    """T5-like: [words, </s>, pad...]. The empty guide [</s>, pad...] is taken from its first token twice, so the
    last word and the end token both map onto the empty prompt's end token, padding onto padding; e is the
    empty prompt's end token (row 0)."""
    T = 6
    seg = lambda last: Segment(("t5xxl",), 0, T, T, last, False)  # noqa: E731
    enc = {"": _enc([50, 60, 61, 62, 63, 64], [seg(None)]),
           "cat": _enc([10, 11, 12, 20, 21, 22], [seg(2)])}
    sets = stream_sets(plan_prompts("cat"), enc)
    assert sets.erase.contexts[0][:, 0].tolist() == [12, 20, 21, 22]
    assert sets.erase.targets[0][:, 0].tolist() == [50, 50, 60, 61]
    assert sets.erase.empty_vec[0].item() == 50
    assert sets.erase.concept_vecs[0, 0].item() == 12


def test_zeroed_padding_is_stored_once_and_merged_exactly():
    """Wan: umT5 zeroes the padding, the model's projection maps every zero row to the same vector."""
    T = 512
    seg = lambda last: Segment(("umt5xxl",), 0, T, T, last, False)  # noqa: E731
    words = [0.5, 0.7, 0.9, 1.5]  # three word tokens and </s>
    enc = {"": _enc([1.3] + [0.0] * (T - 1), [seg(None)]), "cat": _enc(words + [0.0] * (T - 4), [seg(2)])}
    assert enc["cat"].rows.shape[0] == 5 and enc["cat"].length == T  # the padding is stored once
    project = lambda x: 2.0 * x + 1.0  # noqa: E731  (row-wise, like text_embedding)
    sets = stream_sets(plan_prompts("cat"), enc, project=project)
    x, y = sets.erase.contexts[0], sets.erase.targets[0]
    assert x.shape[0] == 3  # last word, </s>, and the 508 padding rows as one merged row
    full_x = project(_rows(words[2:] + [0.0] * (T - 4)))
    full_y = project(_rows([1.3, 1.3] + [0.0] * (T - 4)))
    assert torch.allclose(x.T @ x, full_x.T @ full_x, rtol=1e-6)
    assert torch.allclose(y.T @ x, full_y.T @ full_x, rtol=1e-6)


def test_masked_rows_are_left_out_when_the_model_masks_them():
    T = 8
    seg = lambda last, vis: Segment(("t5xxl",), 0, T, vis, last, False)  # noqa: E731
    enc = {"": _enc([9, 1, 2, 3, 4, 5, 6, 7], [seg(None, 1)]), "cat": _enc([10, 11, 12, 13, 1, 2, 3, 4], [seg(2, 4)])}
    masked = stream_sets(plan_prompts("cat"), enc, masked=True).erase
    assert masked.contexts[0][:, 0].tolist() == [12, 13]  # last word and </s>; the padding is masked
    assert masked.targets[0][:, 0].tolist() == [9, 9]
    unmasked = stream_sets(plan_prompts("cat"), enc).erase
    assert unmasked.contexts[0].shape[0] == 6


def test_two_segments_give_one_entry_each_with_its_own_empty_vector():
    """SD3: CLIP rows (start token) then T5 rows (none); each (prompt, segment) is one erase entry."""
    segs = lambda a, b: [Segment(("l", "g"), 0, 4, 4, a, True), Segment(("t5xxl",), 4, 8, 8, b, False)]  # noqa: E731
    enc = {"": _enc([100, 101, 102, 103, 200, 201, 202, 203], segs(None, None)),
           "cat": _enc([0, 1, 2, 3, 10, 11, 12, 13], segs(1, 5))}
    sets = stream_sets(plan_prompts("cat"), enc)
    erase = sets.erase
    assert erase.erase_texts == ("cat [l+g]", "cat [t5xxl]")
    assert sets.concept_of == {"cat [l+g]": "cat", "cat [t5xxl]": "cat"}
    assert erase.concept_vecs[:, 0].tolist() == [1, 11]
    assert erase.empty_vec[:, 0].tolist() == [101, 200]  # the end token of each segment of the empty prompt
    assert erase.contexts[0][:, 0].tolist() == [1, 2, 3] and erase.targets[0][:, 0].tolist() == [100, 101, 102]
    assert erase.contexts[1][:, 0].tolist() == [11, 12, 13] and erase.targets[1][:, 0].tolist() == [200, 200, 201]


def test_pooled_stream():
    seg = [Segment(("l",), 0, 2, 2, None, True)]
    enc = {"": _enc([0, 1], seg, torch.tensor([5.0, 5.0])), "cat": _enc([0, 1], seg, torch.tensor([7.0, 8.0]))}
    sets = stream_sets(plan_prompts("cat"), enc, source="pooled", project=lambda x: x * 2)
    assert sets.erase.contexts[0].tolist() == [[14.0, 16.0]]
    assert sets.erase.targets[0].tolist() == [[10.0, 10.0]]
    assert sets.erase.empty_vec.tolist() == [10.0, 10.0]


def test_every_architecture_names_its_classes_once():
    seen = [c for a in architectures.ARCHITECTURES for c in a.model_classes]
    assert len(seen) == len(set(seen))
    assert not set(seen) & set(architectures.REFUSED)
    for arch in architectures.ARCHITECTURES:
        assert arch.clip_layouts and all(name in architectures.CLIP_LAYOUTS for name in arch.clip_layouts)


def test_unknown_model_is_refused_with_its_class_and_the_list():
    class SVD_img2vid:
        pass

    model = type("Patcher", (), {"model": SVD_img2vid()})()
    with pytest.raises(ValueError, match=r"SVD_img2vid \(its cross-attention reads CLIP-vision.*Supported:.*Wan"):
        architectures.architecture(model)


def test_joint_models_accept_only_keys_and_values():
    flux = next(a for a in architectures.ARCHITECTURES if "Flux" in a.model_classes)
    shapes = {"diffusion_model.txt_in.weight": (3072, 4096), "diffusion_model.vector_in.in_layer.weight": (3072, 768)}
    targets = architectures.edit_targets(None, flux, "keys and values", shapes)
    assert [(t.key, t.stream) for t in targets] == [("diffusion_model.txt_in.weight", "text"),
                                                  ("diffusion_model.vector_in.in_layer.weight", "pooled")]
    with pytest.raises(ValueError, match="use edit 'keys and values'"):
        architectures.edit_targets(None, flux, "values only", shapes)


def _hidream_patcher(layers):
    from types import SimpleNamespace

    class HiDream:
        pass

    inner = HiDream()
    inner.diffusion_model = SimpleNamespace(llama_layers=list(layers))
    return SimpleNamespace(model=inner)


def test_hidream_projections_read_their_own_llama_layer():
    """Each caption projection reads the Llama layer the model's llama_layers names (one stream per distinct
    layer, shared by the projections that read it), the last one T5; the pooled map reads the pooled vector."""
    model = _hidream_patcher([0, 1, 1])
    arch = architectures.architecture(model)
    key = "diffusion_model.caption_projection.{}.linear.weight"
    shapes = {key.format(i): (128, 256) for i in range(3)}
    shapes[key.format(3)] = (128, 4096)
    shapes["diffusion_model.p_embedder.pooled_embedder.linear_1.weight"] = (128, 2048)
    streams, targets = arch.layout(model, shapes)
    assert [(s.name, s.source) for s in streams] == [("text", "cond"), ("llama layer 0", "layers:0"),
                                                    ("llama layer 1", "layers:1"), ("pooled", "pooled")]
    assert {t.key: t.stream for t in targets} == {
        key.format(3): "text", key.format(0): "llama layer 0", key.format(1): "llama layer 1",
        key.format(2): "llama layer 1", "diffusion_model.p_embedder.pooled_embedder.linear_1.weight": "pooled"}
    assert architectures.stream_width(arch, streams[1], shapes, targets) == 256
    assert len(architectures.edit_targets(model, arch, "keys and values", shapes)) == 5
    with pytest.raises(ValueError, match="4 caption projections and llama_layers"):
        arch.layout(_hidream_patcher([0, 1]), shapes)


def test_a_layer_stream_aligns_like_a_clip_segment():
    """``layers:<k>`` takes layer k of each prompt's per-layer output and aligns it as one segment with a start
    token (HiDream's Llama-3.1), the same as that layer given as the conditioning itself."""
    T, plan = 6, plan_prompts("cat")
    seg = lambda last: Segment(("llama",), 0, T, T, last, True)  # noqa: E731

    def enc(base, last):
        layers = torch.stack([_rows([base + 10 * k + i for i in range(T)]) for k in range(2)])
        t5 = Segment(("t5xxl",), 0, 3, 3, None if last is None else 0, False)
        return Encoding(_rows([0, 0, 0]), 3, (t5,), None, layers, seg(last))

    encodings = {"": enc(500, None), "cat": enc(100, 2)}
    got = stream_sets(plan, encodings, "layers:1").erase
    plain = {t: Encoding(compress_tail(e.layers[1]), T, (seg(e.layer_segment.last_word),))
             for t, e in encodings.items()}
    want = stream_sets(plan, plain).erase
    for a, b in zip(got.contexts + got.targets, want.contexts + want.targets, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(got.concept_vecs, want.concept_vecs) and float(got.concept_vecs[0, 0]) == 100 + 10 + 2
    with pytest.raises(ValueError, match="no per-layer output"):
        stream_sets(plan, plain, "layers:0")


def test_per_layer_outputs_are_stored_narrow_only_when_exact():
    from comfyui_scapre.nodes.glue.encode import lossless_narrow

    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 5, 8, generator=g)
    assert lossless_narrow(full).dtype == torch.float32 and torch.equal(lossless_narrow(full), full)
    bf16 = full.to(torch.bfloat16).float()  # what a bfloat16 encoder gives, cast to float32 by ComfyUI
    assert lossless_narrow(bf16).dtype == torch.bfloat16 and torch.equal(lossless_narrow(bf16).float(), bf16)
    fp16 = (full * 1e-3).to(torch.float16).float()  # below bfloat16's precision, exact in float16
    assert lossless_narrow(fp16).dtype == torch.float16 and torch.equal(lossless_narrow(fp16).float(), fp16)
