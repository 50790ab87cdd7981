"""The report builder against hand-checkable cases, and its serialisations."""

from __future__ import annotations

import json

import pytest
import torch
from comfyui_scapre.scapre_core import ConceptSet, ScaPreConfig, erase
from comfyui_scapre.scapre_core.metrics import Gap, drift_gaps, efficacy_gaps
from comfyui_scapre.scapre_core.report import EditReport, ReportBuilder, short_name
from helpers import random_concepts, random_weights


def _probe_set(seqs, lasts, guide, guide_last, empty, texts):
    return ConceptSet.from_embeddings(seqs, lasts, [guide] * len(seqs), [guide_last] * len(seqs), empty,
                                      erase_texts=texts)


def test_no_op_edit_reports_zero_everywhere():
    concepts, _ = random_concepts(3, dim=12)
    weights = random_weights({"a": (8, 12), "b": (6, 12)})
    builder = ReportBuilder({"erase": concepts})
    for k, w in weights.items():
        builder.add(k, w, w.clone())
    report = builder.build()
    assert [p.efficacy for p in report.prompts] == [0.0] * 3
    assert [p.drift for p in report.prompts] == [0.0] * 3
    assert [m.rel_change for m in report.matrices] == [0.0, 0.0]


def test_builder_matches_direct_metrics_and_pools_matrices():
    concepts, raw = random_concepts(3, dim=12, length=8, guided=True)
    weights = random_weights({"a": (8, 12), "b": (6, 12)})
    out = erase(weights, concepts, ScaPreConfig(variant="uce"))
    probes = _probe_set(raw["erase"][:1] + raw["guide"][:1], [raw["erase_last"][0], 2], raw["guide"][0], 0,
                        raw["empty"], ["copy of prompt 0", "other"])
    builder = ReportBuilder({"erase": concepts, "probe": probes}, dtype=torch.float64, tokens="full")
    for k in weights:
        builder.add(k, weights[k], out[k])
    report = builder.build(concept_of={})
    erased = report.group("erase")
    for k_idx, k in enumerate(weights):
        direct = efficacy_gaps(weights[k], out[k], concepts.contexts, concepts.targets)
        for j in range(3):
            assert erased[j].efficacy_per_matrix[k_idx] == pytest.approx(direct[j].efficacy, abs=1e-9)
        d = drift_gaps(weights[k], out[k], probes.contexts)
        assert report.group("probe")[1].drift_per_matrix[k_idx] == pytest.approx(d[1].drift, abs=1e-9)
    pooled = sum((efficacy_gaps(weights[k], out[k], concepts.contexts[:1], concepts.targets[:1])[0]
                  for k in weights), start=Gap(0.0, 0.0))
    assert erased[0].efficacy == pytest.approx(pooled.efficacy, abs=1e-9)


def test_uce_probe_equal_to_an_erased_prompt_reports_its_full_drift():
    concepts, raw = random_concepts(2, dim=24, length=6)
    w0 = random_weights({"w": (16, 24)})["w"]
    w = erase({"w": w0}, concepts, ScaPreConfig(variant="uce", erase_scale=1e4, precision="float32"))["w"]
    probe = _probe_set(raw["erase"][:1], raw["erase_last"][:1], raw["guide"][0], 0, raw["empty"], ["same"])
    builder = ReportBuilder({"erase": concepts, "probe": probe}, dtype=torch.float64)
    builder.add("w", w0, w)
    report = builder.build()
    erased0, probe0 = report.group("erase")[0], report.group("probe")[0]
    assert erased0.efficacy > 0.99 and probe0.efficacy > 0.99
    assert probe0.drift == pytest.approx(erased0.drift, rel=1e-9)
    assert report.worst_drift().text == "same"


def test_json_round_trip_markdown_and_summary():
    concepts, _ = random_concepts(2, dim=12)
    concepts = ConceptSet.from_embeddings([c for c in [torch.randn(8, 12), torch.randn(8, 12)]], [1, 2],
                                          [torch.randn(8, 12)] * 2, [0, 0], torch.randn(8, 12),
                                          erase_texts=["cat", "a | b"])
    w0 = random_weights({"diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (6, 12)})
    out = erase(w0, concepts)
    builder = ReportBuilder({"erase": concepts})
    for k in w0:
        builder.add(k, w0[k], out[k])
    report = builder.build(config=ScaPreConfig().to_dict(), info={"edit": "keys and values"}, seconds=1.5,
                           warnings=("w1",), concept_of={"cat": "cat", "a | b": "a | b"})
    again = EditReport.from_dict(json.loads(report.to_json()))
    assert again == report
    md = report.to_markdown()
    assert "a \\| b" in md and "in4.t0.k" in md and "warning: w1" in md
    assert "not whether pictures lose the concept" in md and "ScaPre Compare" in md  # the verdict is no count
    assert sum(report.summary()["verdict"]["counts"].values()) == 2  # one verdict per erased prompt
    summary = report.summary()
    assert summary["concepts"] == 2 and summary["matrices"] == 1 and summary["worst_drift"] is None
    assert short_name("diffusion_model.output_blocks.11.1.transformer_blocks.3.attn2.to_v.weight") == "out11.t3.v"


def test_unbounded_drift_is_valid_json():
    """A prompt whose original projection is zero has infinite drift; JSON (and the UI message) get null."""
    from comfyui_scapre.scapre_core.report import MatrixResult, PromptResult

    inf = float("inf")
    report = EditReport(matrices=(MatrixResult("m", (2, 2), 0.5),),
                        prompts=(PromptResult("zero", "probe", 0.0, inf, (0.0,), (inf,)),))
    text = report.to_json()
    assert "Infinity" not in text and json.loads(text)["prompts"][0]["drift"] is None
    assert report.summary()["worst_drift"]["value"] is None
    assert EditReport.from_dict(json.loads(text)) == report


def test_blocks_of_prompts_give_the_direct_sums(monkeypatch):
    """Prompts of different lengths, several guides, more prompts than one block holds: every per-matrix
    figure equals the direct per-prompt sums of ``metrics``, whatever the block size."""
    from comfyui_scapre.scapre_core import report as report_module

    g = torch.Generator().manual_seed(5)
    dim, n = 10, 7
    seqs = [torch.randn(12, dim, generator=g, dtype=torch.float64) for _ in range(n)]
    guides = [torch.randn(12, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    concepts = ConceptSet.from_embeddings(seqs, [1, 2, 3, 4, 5, 1, 2], [guides[j % 2] for j in range(n)],
                                          [0, 3] * 3 + [0], torch.randn(12, dim, generator=g, dtype=torch.float64))
    assert len({c.shape[0] for c in concepts.contexts}) > 1 and len(concepts.guides) == 2
    weights = {"a": torch.randn(9, dim, generator=g, dtype=torch.float64),
               "b": torch.randn(5, dim, generator=g, dtype=torch.float64)}
    edited = {k: w + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64) for k, w in weights.items()}

    def run(tokens: int):
        monkeypatch.setattr(report_module, "REPORT_TOKENS", tokens)
        builder = ReportBuilder({"erase": concepts, "probe": concepts}, dtype=torch.float64, tokens="full")
        for k in weights:
            builder.add(k, weights[k], edited[k])
        return builder.build()

    one_per_block, all_in_one = run(1), run(10_000)
    for k_idx, k in enumerate(weights):
        eff = efficacy_gaps(weights[k], edited[k], concepts.contexts, concepts.targets)
        dr = drift_gaps(weights[k], edited[k], concepts.contexts)
        for report in (one_per_block, all_in_one):
            for j, p in enumerate(report.group("erase")):
                assert p.efficacy_per_matrix[k_idx] == pytest.approx(eff[j].efficacy, rel=1e-12, abs=1e-12)
                assert p.drift_per_matrix[k_idx] == pytest.approx(dr[j].drift, rel=1e-12)
    assert [p.drift for p in one_per_block.prompts] == pytest.approx([p.drift for p in all_in_one.prompts], rel=1e-12)
    change = float((edited["a"] - weights["a"]).norm() / weights["a"].norm())
    assert one_per_block.matrices[0].rel_change == pytest.approx(change, rel=1e-12)


def _long_prompts(n: int = 5, length: int = 40, dim: int = 10, lasts: tuple[int, ...] = (1, 3, 7, 2, 5)):
    """Prompts much longer than the key scope, last words at different places, two guides (one empty)."""
    g = torch.Generator().manual_seed(11)
    seqs = [torch.randn(length, dim, generator=g, dtype=torch.float64) for _ in range(n)]
    guides = [torch.randn(length, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    concepts = ConceptSet.from_embeddings(seqs, list(lasts[:n]), [guides[j % 2] for j in range(n)],
                                          [0, 4] * (n // 2) + [0] * (n % 2),
                                          torch.randn(length, dim, generator=g, dtype=torch.float64),
                                          erase_texts=[f"p{j}" for j in range(n)])
    weights = {"a": torch.randn(9, dim, generator=g, dtype=torch.float64),
               "b": torch.randn(6, dim, generator=g, dtype=torch.float64)}
    edited = {k: w + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64) for k, w in weights.items()}
    return concepts, weights, edited


def _build(concepts, weights, edited, tokens, **groups):
    builder = ReportBuilder({"erase": concepts, **groups}, dtype=torch.float64, tokens=tokens)
    for k in weights:
        builder.add(k, weights[k], edited[k])
    return builder.build(info={"edit": "keys and values"})


def test_key_tokens_are_exact_on_the_last_word_and_the_tokens_after_it():
    """The key scope equals the direct sums over each prompt's first 1 + KEY_TOKENS tokens from its last word on
    (its guide aligned to them), for erased prompts (efficacy) and watched prompts (drift), and differs from the
    full scope when prompts are longer."""
    from comfyui_scapre.scapre_core.report import KEY_TOKENS

    concepts, weights, edited = _long_prompts()
    n = 1 + KEY_TOKENS
    assert all(c.shape[0] > n for c in concepts.contexts)
    key = _build(concepts, weights, edited, "key", probe=concepts)
    full = _build(concepts, weights, edited, "full", probe=concepts)
    for k_idx, k in enumerate(weights):
        eff = efficacy_gaps(weights[k], edited[k], [c[:n] for c in concepts.contexts],
                            [t[:n] for t in concepts.targets])
        dr = drift_gaps(weights[k], edited[k], [c[:n] for c in concepts.contexts])
        for j, p in enumerate(key.group("erase")):
            assert p.efficacy_per_matrix[k_idx] == pytest.approx(eff[j].efficacy, rel=1e-12, abs=1e-12)
            assert p.drift_per_matrix[k_idx] == pytest.approx(dr[j].drift, rel=1e-12)
        for j, p in enumerate(key.group("probe")):
            assert p.drift_per_matrix[k_idx] == pytest.approx(dr[j].drift, rel=1e-12)
    assert [p.efficacy for p in key.prompts] != pytest.approx([p.efficacy for p in full.prompts], rel=1e-6)
    assert [m.rel_change for m in key.matrices] == [m.rel_change for m in full.matrices]


def test_key_equals_full_on_prompts_no_longer_than_the_key_scope():
    from comfyui_scapre.scapre_core.report import KEY_TOKENS

    # last words at 1..K+1 of K+2 tokens: each context (from the last word on) has at most 1+K tokens
    concepts, weights, edited = _long_prompts(length=KEY_TOKENS + 2, lasts=(1, 3, KEY_TOKENS + 1, 2, KEY_TOKENS))
    assert all(c.shape[0] <= 1 + KEY_TOKENS for c in concepts.contexts)
    key = _build(concepts, weights, edited, "key")
    full = _build(concepts, weights, edited, "full")
    assert key.prompts == full.prompts


def test_the_report_records_its_token_scope_and_shows_it():
    from comfyui_scapre.scapre_core.report import KEY_TOKENS, describe_scope

    concepts, weights, edited = _long_prompts()
    key = _build(concepts, weights, edited, "key")
    assert key.info["report_tokens"] == "key" and key.info["report_tokens_per_prompt"] == 1 + KEY_TOKENS
    assert key.info["edit"] == "keys and values"  # the caller's info is kept
    assert f"- measured on: {describe_scope('key')} (report tokens: key)" in key.to_markdown()
    full = _build(concepts, weights, edited, "full")
    assert full.info["report_tokens"] == "full" and full.info["report_tokens_per_prompt"] is None
    assert "- measured on: every token" in full.to_markdown()
    assert EditReport.from_dict(json.loads(key.to_json())) == key
    assert ReportBuilder({"erase": concepts}).tokens == "key"  # the default
    with pytest.raises(ValueError, match="report tokens must be one of"):
        ReportBuilder({"erase": concepts}, tokens="some")


def _judged(efficacies: dict[str, float], info: dict | None = None) -> EditReport:
    from comfyui_scapre.scapre_core.report import MatrixResult, PromptResult

    prompts = tuple(PromptResult(t, "erase", e, 0.1, (e,), (0.1,), concept=t) for t, e in efficacies.items())
    probe = PromptResult("a dog", "probe", 0.0, 0.2, (0.0,), (0.2,))
    return EditReport(matrices=(MatrixResult("m", (2, 2), 0.1),), prompts=(*prompts, probe),
                      info={"report_tokens": "key", **(info or {})})


def test_verdict_thresholds_and_their_edges():
    from comfyui_scapre.scapre_core.report import (
        DRAWN_BELOW,
        FORGOTTEN_AT,
        LIKELY_DRAWN,
        LIKELY_FORGOTTEN,
        UNSURE,
        verdict,
    )

    assert 0 < DRAWN_BELOW < FORGOTTEN_AT < 1
    assert verdict(FORGOTTEN_AT) == LIKELY_FORGOTTEN and verdict(1.0) == LIKELY_FORGOTTEN
    assert verdict(FORGOTTEN_AT - 1e-9) == UNSURE and verdict(DRAWN_BELOW) == UNSURE
    assert verdict(DRAWN_BELOW - 1e-9) == LIKELY_DRAWN and verdict(0.0) == LIKELY_DRAWN
    assert verdict(float("nan")) == UNSURE
    assert verdict(0.95, "full") is None  # not calibrated on every token: no verdict rather than a wrong one
    with pytest.raises(ValueError, match="key"):
        verdict(0.5, "some")


def test_report_and_summary_give_a_verdict_per_erased_prompt():
    from comfyui_scapre.scapre_core.report import EMPTY_GUIDE_CAVEAT, VERDICT_RULE, verdict_line

    report = _judged({"cat": 0.95, "dog": 0.2, "green triangle": 0.55}, {"guides": ["a bar"]})
    v = report.summary()["verdict"]
    assert v["counts"] == {"likely forgotten": 1, "unsure": 1, "likely still drawn": 1}
    assert [(p["text"], p["verdict"]) for p in v["not_forgotten"]] == [("dog", "likely still drawn"),
                                                                         ("green triangle", "unsure")]
    assert v["rule"] == VERDICT_RULE and v["caveat"] == "" and v["more"] == 0
    md = report.to_markdown()
    assert "| cat | 0.950 | 0.100 | likely forgotten |" in md and "| dog | 0.200 | 0.100 | likely still drawn |" in md
    assert "| a dog | 0.000 | 0.200 |\n" in md  # probes get no verdict column
    assert "'dog' likely still drawn (0.200)" in verdict_line(v)
    again = EditReport.from_dict(json.loads(report.to_json()))  # the verdict is derived: survives a round trip
    assert again.summary()["verdict"] == v
    empty = _judged({"cat": 0.95}, {"guides": [""]})  # published presets: the empty guide's caveat
    assert empty.summary()["verdict"]["caveat"] == EMPTY_GUIDE_CAVEAT and EMPTY_GUIDE_CAVEAT in empty.to_markdown()
    focused = _judged({"cat": 0.95}, {"guides": [""], "look_alikes": {"cat": ["dog"]}})
    assert focused.summary()["verdict"]["caveat"] == ""
    # look-alikes found but not used (a published preset at strength 1): the guide is still the empty prompt
    unused = _judged({"cat": 0.95}, {"guides": [""], "look_alikes": {"cat": ["dog"]}, "look_alike_share": 0.0})
    assert unused.summary()["verdict"]["caveat"] == EMPTY_GUIDE_CAVEAT
    half = _judged({"cat": 0.95}, {"guides": [""], "look_alikes": {"cat": ["dog"]}, "look_alike_share": 0.5})
    assert half.summary()["verdict"]["caveat"] == ""


def test_summary_lists_at_most_a_few_doubtful_prompts_and_full_scope_has_no_verdict():
    from comfyui_scapre.scapre_core.report import NO_VERDICT, VERDICT_LIST

    many = _judged({f"c{i}": 0.01 * i for i in range(VERDICT_LIST + 3)})
    v = many.summary()["verdict"]
    assert len(v["not_forgotten"]) == VERDICT_LIST and v["more"] == 3
    assert v["not_forgotten"][0]["text"] == "c0"  # lowest efficacy first
    full = _judged({"cat": 0.95}, {"report_tokens": "full"})
    assert full.summary()["verdict"] is None and NO_VERDICT in full.to_markdown()
    assert "| cat | 0.950 | 0.100 |\n" in full.to_markdown()
