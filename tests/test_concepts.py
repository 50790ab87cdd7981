"""ConceptSet.from_embeddings: SPEC "Inputs" on hand-built sequences, and every bad input."""

from __future__ import annotations

import pytest
import torch
from comfyui_scapre.scapre_core import ConceptSet
from helpers import random_concepts


def _seq(length: int, dim: int, base: float) -> torch.Tensor:
    """Row t is base + t in every column: positions are readable in the derived tensors."""
    return (base + torch.arange(length, dtype=torch.float32)).unsqueeze(1).repeat(1, dim)


def test_derives_vectors_contexts_and_targets_as_spec():
    T, d = 8, 3
    erase = [_seq(T, d, 100.0), _seq(T, d, 200.0)]
    guide = [_seq(T, d, 300.0), _seq(T, d, 400.0)]
    empty = _seq(T, d, 500.0)
    cs = ConceptSet.from_embeddings(erase, [2, 4], guide, [0, 5], empty)
    # c_j: the last word token of p_j
    assert cs.concept_vecs[:, 0].tolist() == [102.0, 204.0]
    # e: position 1 of the empty prompt
    assert cs.empty_vec.tolist() == [501.0] * d
    # prompt 0 with an empty guide (f_g = 0): t = 8 - 2 = 6; X from 2, Y from the start token
    assert cs.contexts[0][:, 0].tolist() == [102, 103, 104, 105, 106, 107]
    assert cs.targets[0][:, 0].tolist() == [300, 301, 302, 303, 304, 305]
    # prompt 1 with a guide whose last word is later (f_g = 5 > f_p = 4): t = 8 - 5 = 3
    assert cs.contexts[1][:, 0].tolist() == [204, 205, 206]
    assert cs.targets[1][:, 0].tolist() == [405, 406, 407]
    assert cs.num_concepts == 2 and cs.dim == 3 and cs.num_preserve == 0


def test_preserve_contexts_and_texts():
    T, d = 6, 2
    cs = ConceptSet.from_embeddings([_seq(T, d, 0)], [1], [_seq(T, d, 10)], [0], _seq(T, d, 20),
                                    [_seq(T, d, 30)], [3], erase_texts=["cat"], guide_texts=[""],
                                    preserve_texts=["dog"])
    assert cs.preserve_contexts[0][:, 0].tolist() == [33, 34, 35]
    assert cs.erase_texts == ("cat",) and cs.preserve_texts == ("dog",)


def test_inputs_are_copied_not_aliased():
    erase = [torch.randn(5, 4)]
    before = erase[0].clone()
    cs = ConceptSet.from_embeddings(erase, [1], [torch.randn(5, 4)], [0], torch.randn(5, 4))
    cs.contexts[0].add_(1.0)
    assert torch.equal(erase[0], before)


def test_accepts_batched_conditioning_and_half():
    cond = torch.randn(1, 7, 4, dtype=torch.float16)
    cs = ConceptSet.from_embeddings([cond], [2], [cond], [0], cond)
    assert cs.concept_vecs.dtype == torch.float32 and cs.contexts[0].shape == (5, 4)


def test_fingerprint_tracks_numbers():
    a, _ = random_concepts(3, seed=1)
    b, _ = random_concepts(3, seed=1)
    c, _ = random_concepts(3, seed=2)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def _good():
    g = torch.Generator().manual_seed(0)
    s = lambda: torch.randn(6, 4, generator=g)  # noqa: E731
    return dict(erase=[s(), s()], erase_last=[1, 2], guide=[s(), s()], guide_last=[0, 0], empty=s())


BAD = {
    "no concepts": (dict(erase=[], erase_last=[], guide=[], guide_last=[]), "no concepts"),
    "erase_last length": (dict(erase_last=[1]), "erase_last has 1"),
    "guide length": (dict(guide=[torch.randn(6, 4)], guide_last=[0]), "guide has 1"),
    "guide_last length": (dict(guide_last=[0]), "guide_last has 1"),
    "preserve_last length": (dict(preserve=[torch.randn(6, 4)], preserve_last=[]), "preserve_last"),
    "index too large": (dict(erase_last=[1, 6]), r"erase_last\[1\] = 6 is out of range"),
    "start token as word": (dict(erase_last=[0, 1]), r"erase_last\[0\] = 0 is out of range"),
    "negative guide index": (dict(guide_last=[0, -1]), r"guide_last\[1\]"),
    "float index": (dict(erase_last=[1.5, 2]), "integer"),
    "width mismatch": (dict(guide=[torch.randn(6, 4), torch.randn(6, 5)]), "width 5"),
    "1-D prompt": (dict(erase=[torch.randn(4), torch.randn(6, 4)]), r"shape \[T, d\]"),
    "nan": (dict(erase=[torch.full((6, 4), float("nan")), torch.randn(6, 4)]), "non-finite"),
    "inf empty": (dict(empty=torch.full((6, 4), float("inf"))), "non-finite"),
    "short empty": (dict(empty=torch.randn(1, 4)), "empty"),
    "not a tensor": (dict(empty=[[0.0] * 4] * 6), "torch.Tensor"),
    "integer tensor": (dict(empty=torch.ones(6, 4, dtype=torch.int64)), "floating"),
    "texts length": (dict(erase_texts=["a"]), "erase_texts"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_inputs_raise_clear_errors(case):
    changes, message = BAD[case]
    kwargs = {**_good(), **changes}
    with pytest.raises(ValueError, match=message):
        ConceptSet.from_embeddings(**kwargs)
