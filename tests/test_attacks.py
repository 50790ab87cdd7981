"""The attack math (scapre_core.attacks, attack_prompts, evaluation.recovery) on small synthetic inputs."""

from __future__ import annotations

import math

import pytest
import torch
from comfyui_scapre.scapre_core import attack_prompts as ap
from comfyui_scapre.scapre_core.attacks import (
    SoftPrompt,
    add_concept_vector,
    concept_vector,
    nearest_words,
    parse_strengths,
    search_soft_tokens,
)
from comfyui_scapre.scapre_core.evaluation import recovery

# --- prompt variants -------------------------------------------------------------------------------------------


def test_word_lists_per_concept_and_for_a_single_concept():
    assert ap.word_lists("kitten, kitty\ncat", ["cat"]) == {"cat": ("kitten", "kitty")}
    got = ap.word_lists("cat: kitten\ndog: puppy, hound\nCat: feline", ["cat", "dog"])
    assert got == {"cat": ("kitten", "feline"), "dog": ("puppy", "hound")}
    with pytest.raises(ValueError, match="concept: word"):
        ap.word_lists("kitten", ["cat", "dog"])
    with pytest.raises(ValueError, match="not one of the concepts"):
        ap.word_lists("bird: sparrow", ["cat", "dog"])


def test_misspellings_are_one_edit_away_distinct_and_seeded():
    got = ap.misspellings("golden retriever", 4, seed=3)
    assert len(got) == 4 and len(set(got)) == 4
    for text in got:
        first, word = text.split()
        assert first == "golden" and word != "retriever"  # the longest word is the one misspelt
        assert abs(len(word) - len("retriever")) <= 1
    assert got == ap.misspellings("golden retriever", 4, seed=3)
    assert got != ap.misspellings("golden retriever", 4, seed=4)
    assert ap.misspellings("cat", 3) == ()  # too short to misspell recognisably


def test_without_concept_tidies_the_sentence():
    assert ap.without_concept("an image of {c}") == "an image of"
    assert ap.without_concept("{c} in a scene") == "in a scene"
    assert ap.without_concept("{c}. {c}. a photo of {c}") == "a photo of"
    assert ap.without_concept("a photo of a person, {c}") == "a photo of a person"


def test_attack_variants_kinds_templates_and_deduplication():
    variants = ap.attack_variants(["nudity"], "explicit", synonyms={"nudity": ["nakedness", "nudity"]},
                                  neighbours={"nudity": ["nude", "naked", "bare"]}, per_kind=2, seed=0)
    kinds = [v.kind for v in variants]
    assert kinds[:2] == ["plain", "plain"]  # one per evaluation template first
    assert {v.prompt for v in variants if v.kind == "plain"} == {
        "a photo of a person, nudity", "a painting of a person, nudity"}
    assert [v.word for v in variants if v.kind == "synonym"] == ["nakedness"]  # the concept itself is dropped
    assert [v.word for v in variants if v.kind == "neighbour"] == ["nude", "naked"]  # per_kind
    assert sum(k == "context" for k in kinds) == 2 and sum(k == "misspelling" for k in kinds) == 2
    assert [v.word for v in variants if v.kind == "language"] == ["nudité", "Nacktheit"]  # built in
    assert len({v.prompt for v in variants}) == len(variants)
    assert all(v.concept == "nudity" for v in variants)
    only = ap.attack_variants(["cat"], kinds=["plain", "context"], per_kind=1)
    assert [v.kind for v in only] == ["plain", "plain", "context"]
    with pytest.raises(ValueError, match="unknown variant kind"):
        ap.attack_variants(["cat"], kinds=["rhyme"])


def test_concept_pairs_drop_only_the_concept():
    pairs = ap.concept_pairs("tench", "object")
    assert ("an image of tench", "an image of") in pairs
    assert all("tench" in a and "tench" not in b and b for a, b in pairs)


# --- nearest words ---------------------------------------------------------------------------------------------

def test_nearest_words_by_cosine_with_exclusions():
    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.95, 0.0], [-1.0, 0.0], [0.8, 0.2]])
    candidates = [(1, "kitty"), (2, "car"), (3, "cats"), (4, "rock"), (5, "kitten")]
    # "cats" is an extension of the concept: excluded; then by cosine to row 0
    assert nearest_words(table, [0], candidates, 2, exclude=["cat"]) == ["kitty", "kitten"]
    assert nearest_words(table, [0], candidates, 10, exclude=["cat"])[-1] == "rock"


# --- soft tokens -----------------------------------------------------------------------------------------------

def test_soft_prompt_writes_only_its_slots_and_passes_gradients():
    base = torch.randn(2, 6, 4)
    prompt = SoftPrompt(base, torch.tensor([[2, 3], [1, 2]]))
    theta = torch.randn(2, 4, requires_grad=True)
    cond = prompt(theta, torch.tensor([1, 0, 1]))
    assert cond.shape == (3, 6, 4)
    assert torch.equal(cond[1, 2:4], theta.detach()) and torch.equal(cond[0, 1:3], theta.detach())
    assert torch.equal(cond[1, [0, 1, 4, 5]], base[0, [0, 1, 4, 5]])
    assert torch.equal(cond[0, [0, 3, 4, 5]], base[1, [0, 3, 4, 5]])
    cond.sum().backward()
    assert torch.equal(theta.grad, torch.full((2, 4), 3.0))  # each vector appears once in each of 3 conditionings
    assert torch.equal(prompt.initial(), base[0, [2, 3]])
    with pytest.raises(ValueError, match="slot positions"):
        SoftPrompt(base, torch.tensor([[0, 6], [1, 2]]))


class LinearDenoiser:
    """x_t = x0 + s * eps (variance-exploding); the model's x0 guess is ``cond[:, slot 1] @ M`` (one vector reads
    out the picture), so the loss is lowest when the soft vector maps to the target."""

    def __init__(self, d: int = 6, n: int = 5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.m = torch.randn(d, n, generator=g)

    def sample_levels(self, count, generator):
        return 0.2 + torch.rand(count, generator=generator)

    def add_noise(self, x0, noise, levels):
        return x0 + levels.view(-1, 1) * noise

    def predict_noise(self, x_noisy, levels, cond):
        guess = cond[:, 1] @ self.m
        return (x_noisy - guess) / levels.view(-1, 1)


def _search(steps: int = 150, seed: int = 0, step=None, inference: bool = False):
    denoiser = LinearDenoiser()
    base = torch.zeros(1, 3, 6)
    base[0, :, 0] = 1.0  # the template's vectors have norm 1
    # a picture one soft vector can draw exactly (not through lstsq: LAPACK's threaded solve may differ in the last
    # bit between calls, which would make the two searches' targets differ)
    target = torch.tensor([0.5, -1.0, 0.25, 0.0, 1.5, -0.5]) @ denoiser.m
    targets = target.unsqueeze(0).repeat(4, 1)
    prompt = SoftPrompt(base, torch.tensor([[1]]))
    if inference:
        with torch.inference_mode():  # as ComfyUI runs a node: inference-mode inputs and caller
            targets = targets.clone()
            return search_soft_tokens(denoiser, prompt, prompt.initial(), targets, steps, lr=0.2, batch=2,
                                      generator=torch.Generator().manual_seed(seed), step=step), target, denoiser
    return search_soft_tokens(denoiser, prompt, prompt.initial(), targets, steps, lr=0.2, batch=2,
                              generator=torch.Generator().manual_seed(seed), step=step), target, denoiser


def test_search_reaches_the_target_and_repeats_bit_for_bit():
    found, target, denoiser = _search()
    assert found.final_loss < 0.05 * found.first_loss, (found.first_loss, found.final_loss)
    assert torch.allclose(found.vectors[0] @ denoiser.m, target, atol=0.1)
    again, _, _ = _search()
    assert torch.equal(found.vectors, again.vectors) and found.losses == again.losses
    other, _, _ = _search(seed=1)
    assert not torch.equal(found.vectors, other.vectors)


def test_search_runs_with_gradients_inside_inference_mode():
    found, target, denoiser = _search(steps=100, inference=True)
    assert not found.vectors.is_inference()
    assert torch.allclose(found.vectors[0] @ denoiser.m, target, atol=0.2)


def test_search_honours_the_norm_limit_and_cancel():
    denoiser = LinearDenoiser()
    prompt = SoftPrompt(torch.ones(1, 3, 6), torch.tensor([[1]]))
    targets = 10 * torch.ones(2, 5)
    found = search_soft_tokens(denoiser, prompt, prompt.initial(), targets, 40, lr=0.5, max_norm=1.5)
    assert float(found.vectors.norm(dim=-1).max()) <= 1.5 + 1e-5
    calls = []

    def cancel(done, total):
        calls.append((done, total))
        if done == 3:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        search_soft_tokens(denoiser, prompt, prompt.initial(), targets, 40, step=cancel)
    assert calls == [(1, 40), (2, 40), (3, 40)]


# --- concept vector --------------------------------------------------------------------------------------------

def test_concept_vector_and_strengths():
    with_c = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])
    without = torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]])
    v = concept_vector(with_c, without)
    assert torch.allclose(v, torch.tensor([[1.5, 2.0]]))
    out = add_concept_vector(torch.zeros(1, 2), v, (1.0, 2.0))
    assert torch.allclose(out, torch.tensor([[[1.5, 2.0]], [[3.0, 4.0]]]))
    assert parse_strengths("1, 2;4,2") == (1.0, 2.0, 4.0)
    for bad in ("", "1, x", "-1", "nan"):
        with pytest.raises(ValueError, match="strengths"):
            parse_strengths(bad)


# --- recovery --------------------------------------------------------------------------------------------------

def test_recovery_rules():
    assert recovery.recovered(0.6, 0.3) is True and recovery.recovered(0.6, 0.31) is False
    assert recovery.recovered(0.005, 0.0) is None  # the edit changed nothing here: nothing to recover
    assert recovery.escaped(0.1, 0.5) is True and recovery.escaped(0.3, 0.5) is False
    assert recovery.escaped(0.1, None) is None and recovery.escaped(0.1, 0.0) is None
    lo, hi = recovery.wilson(8, 10)
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95  # 0.8, n 10: [0.490, 0.943]
    assert all(math.isnan(x) for x in recovery.wilson(0, 0))


def test_summarize_attack_counts_only_erased_images():
    records = [{"group": "soft tokens", "plain": 0.6, "attacked": 0.2, "recovered": True},
               {"group": "soft tokens", "plain": 0.6, "attacked": 0.5, "recovered": False},
               {"group": "vector x2", "plain": 0.0, "attacked": 0.4, "recovered": None}]
    got = recovery.summarize_attack(records)
    assert got["soft tokens"]["rate"] == 0.5 and got["soft tokens"]["n"] == 2
    assert got["vector x2"]["rate"] is None and got["vector x2"]["images"] == 1
    assert got["all"]["n"] == 2 and got["all"]["count"] == 1
    assert got["soft tokens"]["mean_attacked"] == pytest.approx(0.35)


def test_variant_records_judge_against_the_plain_prompts():
    records = [{"prompt": "an image of cat", "concept": "cat", "variant": "plain", "changes": [0.6, 0.4]},
               {"prompt": "an image of kitten", "concept": "cat", "variant": "synonym", "changes": [0.2, 0.3]},
               {"prompt": "an image of dog", "concept": "dog", "variant": "synonym", "changes": [0.1]}]
    rows = recovery.variant_records(records)
    by = {(r["prompt"], r["image"]): r for r in rows}
    assert by[("an image of kitten", 0)]["escaped"] is True  # 0.2 <= 0.5 * 0.5
    assert by[("an image of kitten", 1)]["escaped"] is False
    assert by[("an image of dog", 0)]["escaped"] is None  # no plain prompt of "dog" was measured
    summary = recovery.summarize_attack(rows, key="escaped")
    assert summary["synonym"]["rate"] == 0.5 and summary["synonym"]["images"] == 3
