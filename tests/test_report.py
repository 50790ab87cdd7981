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
    builder = ReportBuilder({"erase": concepts, "probe": probes}, dtype=torch.float64)
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
        builder = ReportBuilder({"erase": concepts, "probe": concepts}, dtype=torch.float64)
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
