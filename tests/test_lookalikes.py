"""Look-alikes found in the model's own text space (``look_alikes`` of ScaPre Concept Encode, read by the focus
variant, preset ``precise``): the candidate list, and the encode glue with a small CLIP-like stand-in whose
geometry is planted (ComfyUI's real CLIP is exercised in tests/comfy)."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.nodes.glue import encode as glue
from comfyui_scapre.scapre_core.focus import reference_gram
from comfyui_scapre.scapre_core.prompts import plan_prompts
from comfyui_scapre.scapre_core.vocabulary import CANDIDATES, candidates_for

LENGTH, DIM = 8, 16


class SD1ClipModel:
    """Named as ComfyUI's SD1.x text encoder, so that the pack reads this stand-in with the CLIP-L layout."""


class FakeClip:
    """Tokenizes by words (start token, one token per word, end and padding to ``LENGTH``) and encodes each token
    as the running mean of the word vectors so far, so that end and padding tokens carry the prompt (as CLIP's do).
    ``planted`` fixes some words' vectors; every other word gets a vector seeded by its name."""

    def __init__(self, planted: dict[str, torch.Tensor] | None = None) -> None:
        self.planted = planted or {}
        self.calls = 0
        self._ids: dict[str, int] = {}
        self.cond_stage_model = SD1ClipModel()

    def vector(self, word: str) -> torch.Tensor:
        if word in self.planted:
            return self.planted[word].to(torch.float32)
        g = torch.Generator().manual_seed(sum(ord(ch) * 131 ** i for i, ch in enumerate(word)) % (2 ** 31))
        return torch.randn(DIM, generator=g)

    def tokenize(self, text: str, return_word_ids: bool = False):
        ids = [self._ids.setdefault(w, len(self._ids) + 2) for w in text.split()]  # 0 start, 1 end and padding
        chunk = [(0, 1.0, 0)] + [(t, 1.0, i + 1) for i, t in enumerate(ids)] + [(1, 1.0, 0)] * (LENGTH - len(ids) - 1)
        return {"l": [chunk]}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        self.calls += 1
        words = {t: w for w, t in self._ids.items()}
        out = []
        for chunk in tokens["l"]:
            vecs = [torch.zeros(DIM)] + [self.vector(words[tok[0]]) for tok in chunk if tok[0] > 1]
            out.append(torch.stack([torch.stack(vecs[:min(i, len(vecs) - 1) + 1]).mean(0) for i in range(LENGTH)]))
        cond = torch.cat(out).unsqueeze(0)
        return {"cond": cond, "pooled_output": None} if return_dict else cond


def _planted() -> dict[str, torch.Tensor]:
    base = torch.zeros(DIM)
    base[0] = 1.0
    near = torch.zeros(DIM)
    near[1] = 1.0
    return {"red": base, "crimson": base + 0.1 * near, "scarlet": base + 0.2 * near, "azure": -base + near}


def test_candidates_leave_out_what_is_erased_and_what_names_it():
    assert len(CANDIDATES) == len(set(CANDIDATES)) >= 150
    out = candidates_for(["Cat", "teddy  bear"], ["cat food", "tiger", "Tiger", "bear"], ("cat", "dog", "teddy bear"))
    assert out == ["dog", "tiger", "Tiger", "bear"]  # "bear" is named inside "teddy bear": a look-alike to keep
    assert "red" not in candidates_for(["red"]) and "pink" in candidates_for(["red"])
    assert candidates_for(["red"], ["", "  "], ()) == []


def test_look_alikes_are_the_nearest_in_the_models_text_space_and_guide_the_focus_set():
    clip = FakeClip(_planted())
    plan = plan_prompts("red", preserve="azure, scarlet, crimson, dog")
    payload = glue.encode_concepts(clip, plan, "object", look_alikes="preserve prompts")
    assert payload.look_alikes == {"red": ("crimson", "scarlet")}
    assert payload.describe()["look_alikes"] == {"red": ["crimson", "scarlet"]}
    focus = payload.focus
    assert focus.guide_texts == ("crimson",) and focus.num_concepts == 1
    # the guide is the nearest look-alike's tokens from its last word on (GUIDE_NEIGHBOURS 1), not the next one's
    enc = glue.PromptEncoder(clip)
    (c_seq, c_last), (s_seq, s_last) = glue._tokens_of(enc, "crimson"), glue._tokens_of(enc, "scarlet")
    t = focus.targets[0].shape[0]
    assert glue.GUIDE_NEIGHBOURS == 1 and glue.LOOK_ALIKES_SHOWN == 2
    assert torch.allclose(focus.targets[0].to(torch.float32), c_seq[c_last:][:t], atol=1e-6)
    assert not torch.allclose(focus.targets[0].to(torch.float32), s_seq[s_last:][:t], atol=1e-3)
    # the references: every candidate (preserve prompts, each once) and the empty prompt
    refs = [glue._tokens_of(enc, t) for t in ("azure", "scarlet", "crimson", "dog", "")]
    expected = reference_gram([s for s, _ in refs], [f for _, f in refs[:-1]] + [0])
    assert torch.allclose(focus.reference_gram, expected, rtol=1e-6, atol=1e-9)
    assert focus.preserve_contexts == ()


def test_a_binding_is_guided_to_itself_with_its_last_word_replaced():
    e = torch.eye(DIM)
    planted = {"triangle": e[0], "green": 0.2 * e[1], "bar": e[0] + 0.5 * e[2], "square": e[0] + 0.8 * e[2],
               "cyan": e[3]}
    clip = FakeClip(planted)
    # "green triangle" is nearest to its own word "triangle": guided there, the kept word "green" would stay
    plan = plan_prompts("green triangle, cyan", preserve="triangle, green, square, bar")
    payload = glue.encode_concepts(clip, plan, "object", look_alikes="preserve prompts")
    assert payload.look_alikes["green triangle"] == ("green bar", "triangle")  # the guide first, then the nearest
    assert payload.look_alikes["cyan"][0] != "green bar"
    focus = payload.focus
    assert focus.guide_texts[0] == "green bar"
    enc = glue.PromptEncoder(clip)
    seq, last = glue._tokens_of(enc, "green bar")
    t = focus.targets[0].shape[0]
    assert torch.allclose(focus.targets[0].to(torch.float32), seq[last:][:t], atol=1e-6)
    # the replacement is the last word's nearest candidate that is neither one of the concept's words nor erased
    bar_erased = glue.encode_concepts(clip, plan_prompts("green triangle, bar", preserve="triangle, green, square"),
                                      "object", look_alikes="preserve prompts")
    assert bar_erased.look_alikes["green triangle"] == ("green square", "triangle")
    # nor one whose guide would be an erased concept
    pair_erased = glue.encode_concepts(clip, plan_prompts("green triangle, green bar",
                                                          preserve="triangle, green, square, bar"),
                                       "object", look_alikes="preserve prompts")
    assert pair_erased.look_alikes["green triangle"][0] == "green square"


def test_look_alikes_leave_the_edits_own_prompts_as_without_them():
    clip = FakeClip(_planted())
    plan = plan_prompts("red, azure", preserve="crimson")
    off = glue.encode_concepts(clip, plan, "object", look_alikes="off")
    auto = glue.encode_concepts(clip, plan, "object", look_alikes="auto")
    assert off.focus is None and off.look_alikes is None and "look_alikes" not in off.describe()
    assert all(torch.equal(a, b) for a, b in zip(off.erase.contexts, auto.erase.contexts, strict=True))
    assert torch.equal(off.preserve.contexts[0], auto.preserve.contexts[0])
    assert set(auto.look_alikes) == {"red", "azure"}
    for concept, found in auto.look_alikes.items():
        assert len(found) == glue.LOOK_ALIKES_SHOWN and concept not in found
        assert all(f in CANDIDATES or f == "crimson" for f in found)
    assert auto.look_alikes["red"][0] == "crimson"  # the planted look-alike beats the whole vocabulary


def test_candidate_encodings_are_made_once_per_clip():
    clip = FakeClip()
    glue._POOL.pop(clip, None)
    first = glue.candidate_encodings(clip)
    calls = clip.calls
    assert calls == -(-len(CANDIDATES) // glue.ENCODE_BATCH) and set(first) == set(CANDIDATES)
    assert glue.candidate_encodings(clip) is first and clip.calls == calls


def test_bad_look_alike_settings_say_what_to_change():
    clip = FakeClip()
    with pytest.raises(ValueError, match="look_alikes must be one of"):
        glue.encode_concepts(clip, plan_prompts("red"), "object", look_alikes="on")
    with pytest.raises(ValueError, match="needs preserve prompts"):
        glue.encode_concepts(clip, plan_prompts("red"), "object", look_alikes="preserve prompts")
    with pytest.raises(ValueError, match="needs preserve prompts"):  # the only preserve prompt names the erased concept
        glue.encode_concepts(clip, plan_prompts("red", preserve="red sky"), "object", look_alikes="preserve prompts")


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "auto"),  # the default, preset auto: precise where it can run
    (["--preset", "auto", "--look-alikes", "off"], "off"),
    (["--preset", "precise"], "auto"),
    (["--preset", "uce"], "off"),
    (["--preset", "precise", "--look-alikes", "preserve prompts", "--preserve", "dog"], "preserve prompts"),
    (["--preset", "uce", "--look-alikes", "auto"], "auto"),
])
def test_command_line_finds_look_alikes_for_the_precise_preset(tmp_path, argv, expected):
    from comfyui_scapre.nodes.cli import cli, erase_command

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("red\n")
    args = cli.build_parser().parse_args(["erase", str(ckpt), "--concepts", str(concepts),
                                          "--lora", str(tmp_path / "out.safetensors"), *argv])
    assert erase_command.prepare(args).look_alikes == expected
