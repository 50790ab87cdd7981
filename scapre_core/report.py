"""The edit report: per matrix and per prompt, what moved and what else moved with it.

Measures (see :mod:`scapre_core.metrics`): *efficacy*, how far a prompt's projections moved onto
its guide's (0 to 1), and *drift*, the relative change of a prompt's projections. Both are computed
for every erased prompt, probe and preserve prompt, per matrix and pooled over the whole edit, from
the same token contexts the solve reads, on one of two token scopes (:data:`REPORT_SCOPES`): ``"key"``
(the default: each prompt's last word token and the :data:`KEY_TOKENS` tokens after it) or ``"full"``
(every token from the last word on). Either is exact on its tokens; ``"full"`` costs about as much as
the edit itself, ``"key"`` a small fraction of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .concepts import ConceptSet
from .metrics import Gap
from .solve import pad_sequences

GROUPS = ("erase", "probe", "preserve")


@dataclass(frozen=True)
class PromptResult:
    """One prompt's measures: pooled over matrices, and per matrix (in ``EditReport.matrices`` order)."""

    text: str
    group: str  # "erase", "probe" or "preserve"
    efficacy: float
    drift: float
    efficacy_per_matrix: tuple[float, ...]
    drift_per_matrix: tuple[float, ...]
    concept: str = ""  # for erase prompts: the concept the prompt belongs to

    def verdict(self, scope: str = "key") -> str | None:
        """For an erase prompt, :func:`verdict` of its efficacy measured on ``scope``; None for other groups."""
        return verdict(self.efficacy, scope) if self.group == "erase" else None


@dataclass(frozen=True)
class MatrixResult:
    name: str
    shape: tuple[int, int]
    rel_change: float


@dataclass(frozen=True)
class EditReport:
    """Everything a user needs to judge an edit before sampling; JSON-serialisable."""

    matrices: tuple[MatrixResult, ...]
    prompts: tuple[PromptResult, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)  # texts, guide, edit mode, version, timing...
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()

    def __deepcopy__(self, memo: dict) -> EditReport:  # immutable: ComfyUI may deep-copy model options
        return self

    def group(self, name: str) -> tuple[PromptResult, ...]:
        return tuple(p for p in self.prompts if p.group == name)

    def worst_efficacy(self) -> PromptResult | None:
        erased = self.group("erase")
        return min(erased, key=lambda p: p.efficacy) if erased else None

    def worst_drift(self) -> PromptResult | None:
        watched = self.group("probe") + self.group("preserve")
        return max(watched, key=lambda p: p.drift) if watched else None

    @property
    def scope(self) -> str:
        """The token scope the report measured on (``"key"`` for reports that do not say)."""
        return str(self.info.get("report_tokens") or "key")

    def empty_guide(self) -> bool:
        """Whether every erased prompt was guided to the empty prompt (the published presets), as far as ``info``
        says: ``guides``, and ``look_alike_share`` (how far the guides moved towards look-alikes: 0 for a published
        preset at strength 1 or less, even where look-alikes were found); reports that predate it count any
        ``look_alikes`` as used."""
        if "look_alike_share" in self.info:
            moved = bool(self.info["look_alike_share"])
        else:
            moved = bool(self.info.get("look_alikes"))
        return list(self.info.get("guides") or ()) == [""] and not moved

    def verdicts(self) -> dict[str, Any] | None:
        """The verdict on the erased prompts (:func:`verdict`): how many of each, the prompts not likely forgotten
        (lowest efficacy first, at most :data:`VERDICT_LIST`), the rule, and the empty guide's caveat where it
        applies; None on a scope the verdict is not calibrated for, or without erased prompts."""
        erased = sorted(self.group("erase"), key=lambda p: p.efficacy)
        if not erased or self.scope not in REPORT_SCOPES or verdict(erased[0].efficacy, self.scope) is None:
            return None
        counts = {label: 0 for label in VERDICTS}
        for p in erased:
            counts[p.verdict(self.scope)] += 1
        doubtful = [{"text": p.text, "verdict": p.verdict(self.scope), "value": p.efficacy} for p in erased
                    if p.verdict(self.scope) != LIKELY_FORGOTTEN]
        return {"counts": counts, "not_forgotten": doubtful[:VERDICT_LIST], "more": max(0, len(doubtful) -
                                                                                      VERDICT_LIST),
                "rule": VERDICT_RULE, "caveat": EMPTY_GUIDE_CAVEAT if self.empty_guide() else ""}

    def summary(self) -> dict[str, Any]:
        """The compact figures the graph shows on the erase node."""
        we, wd = self.worst_efficacy(), self.worst_drift()
        concepts = {p.concept or p.text for p in self.group("erase")}
        return finite({
            "verdict": self.verdicts(),
            "concepts": len(concepts),
            "prompts": len(self.group("erase")),
            "matrices": len(self.matrices),
            "seconds": round(self.seconds, 2),
            "mean_efficacy": _mean([p.efficacy for p in self.group("erase")]),
            "worst_efficacy": None if we is None else {"text": we.text, "value": we.efficacy},
            "worst_drift": None if wd is None else {"text": wd.text, "group": wd.group, "value": wd.drift},
            "mean_change": _mean([m.rel_change for m in self.matrices]),
            "warnings": list(self.warnings),
        })

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; non-finite numbers become ``None`` (JSON has no infinity)."""
        return finite({"format": "scapre-report/1", **asdict(self)})

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_jsonable, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditReport:
        def num(v: float | None) -> float:  # None stood for a non-finite value (an unbounded drift)
            return math.inf if v is None else float(v)

        return cls(
            matrices=tuple(MatrixResult(m["name"], tuple(m["shape"]), num(m["rel_change"]))
                           for m in data["matrices"]),
            prompts=tuple(PromptResult(**{**p, "efficacy": num(p["efficacy"]), "drift": num(p["drift"]),
                                          "efficacy_per_matrix": tuple(map(num, p["efficacy_per_matrix"])),
                                          "drift_per_matrix": tuple(map(num, p["drift_per_matrix"]))})
                          for p in data["prompts"]),
            config=dict(data.get("config", {})), info=dict(data.get("info", {})),
            seconds=float(data.get("seconds", 0.0)), warnings=tuple(data.get("warnings", ())),
        )

    def to_markdown(self, max_rows: int = 60) -> str:
        """A readable table: summary, then prompts by group (worst first), then matrices."""
        s = self.summary()
        lines = [
            f"## ScaPre edit: {s['concepts']} concept(s), {s['prompts']} prompt(s), {s['matrices']} matrices, "
            f"{s['seconds']} s",
            "",
            f"- mean efficacy of erased prompts: {_fmt(s['mean_efficacy'])}",
        ]
        if s["worst_efficacy"]:
            lines.append(f"- weakest erasure: **{s['worst_efficacy']['text']}** "
                         f"({_fmt(s['worst_efficacy']['value'])})")
        if s["worst_drift"]:
            lines.append(f"- largest collateral drift: **{s['worst_drift']['text']}** "
                         f"({s['worst_drift']['group']}, {_fmt(s['worst_drift']['value'])})")
        lines.append(f"- mean relative weight change: {_fmt(s['mean_change'])}")
        v = s["verdict"]
        lines.append(f"- {verdict_line(v)}" + ("" if v is None else f" ({v['rule']})"))
        if v is not None and v["caveat"]:
            lines.append(f"- {v['caveat']}")
        lines.append(f"- {EFFICACY_IS_NOT_A_VERDICT}")
        if self.info.get("report_tokens") in REPORT_SCOPES:
            lines.append(f"- measured on: {describe_scope(self.info['report_tokens'])} "
                         f"(report tokens: {self.info['report_tokens']})")
        lines += [f"- warning: {w}" for w in self.warnings]
        for group, title, key in (("erase", "Erased prompts (lowest efficacy first)", "efficacy"),
                                  ("probe", "Probes (highest drift first)", "drift"),
                                  ("preserve", "Preserved prompts (highest drift first)", "drift")):
            rows = sorted(self.group(group), key=lambda p: getattr(p, key), reverse=(key == "drift"))
            if not rows:
                continue
            judged = group == "erase" and v is not None
            lines += ["", f"### {title}", "", "| prompt | efficacy | drift |" + (" verdict |" if judged else ""),
                      "|---|---:|---:|" + ("---|" if judged else "")]
            for p in rows[:max_rows]:
                lines.append(f"| {_cell(p.text)} | {_fmt(p.efficacy)} | {_fmt(p.drift)} |"
                             + (f" {p.verdict(self.scope)} |" if judged else ""))
            if len(rows) > max_rows:
                lines.append(f"| ... {len(rows) - max_rows} more | | |" + (" |" if judged else ""))
        lines += ["", "### Matrices", "", "| matrix | shape | relative change |", "|---|---|---:|"]
        for m in self.matrices[:max_rows]:
            lines.append(f"| {_cell(short_name(m.name))} | {m.shape[0]}x{m.shape[1]} | {_fmt(m.rel_change)} |")
        if len(self.matrices) > max_rows:
            lines.append(f"| ... {len(self.matrices) - max_rows} more | | |")
        return "\n".join(lines) + "\n"


#: What efficacy does not say (calibrated against pictures in the miniature worlds: docs/miniworlds.md).
EFFICACY_IS_NOT_A_VERDICT = (
    "efficacy measures how far the erased prompts' projections moved, not whether pictures lose the concept; the "
    "verdict is a likelihood from small worlds, not a count: count pictures with ScaPre Compare")

#: The verdict on an erased prompt (beyond the paper), from the report's efficacy on the ``"key"`` token scope.
LIKELY_FORGOTTEN, UNSURE, LIKELY_DRAWN = "likely forgotten", "unsure", "likely still drawn"
VERDICTS = (LIKELY_FORGOTTEN, UNSURE, LIKELY_DRAWN)

#: Efficacy at or above which an erased prompt is "likely forgotten", and below which "likely still drawn"
#: (between them "unsure"). Calibrated against pictures in four miniature worlds (two CLIP-like at width 64 with
#: two seeds, one at width 128, one whose end tokens carry no concept; ``benchmarks/miniworld/calibrate.py``,
#: docs/miniworlds.md "Does the report predict the pictures?"): see :data:`VERDICT_RULE` for what they held.
FORGOTTEN_AT = 0.7
DRAWN_BELOW = 0.4

#: The rule and where it came from, as the report and the node's summary say it (figures: calibrate.py on the four
#: worlds, 256 points; "gone" = drawn in at most 10 % of the concept's pictures).
VERDICT_RULE = (
    f"efficacy >= {FORGOTTEN_AT}: likely forgotten, < {DRAWN_BELOW}: likely still drawn, between: unsure; from "
    "pictures in 4 miniature worlds (docs/miniworlds.md): at or above 0.7, 132 of 147 concepts were gone (110 of "
    "115 guided to a look-alike; all 7 still drawn were guided to the empty prompt); below 0.4, 8 of 9 were "
    "still drawn in some pictures; between, 35 of 100 were gone")

#: What the verdict cannot see when the guide is the empty prompt.
EMPTY_GUIDE_CAVEAT = (
    "the guide is the empty prompt: a concept the model draws when nothing is named (a default subject) stays "
    "whatever the efficacy; use a guide that names something else, or the precise preset")

#: Why a report on every token gives no verdict.
NO_VERDICT = "the verdict is calibrated on the key token scope; set report_tokens to key for one"

#: Prompts the summary names that are not likely forgotten (lowest efficacy first).
VERDICT_LIST = 5


def verdict_line(v: Mapping[str, Any] | None) -> str:
    """:meth:`EditReport.verdicts` in one line: the counts, then the prompts not likely forgotten."""
    if v is None:
        return f"verdict: none ({NO_VERDICT})"
    line = "verdict: " + ", ".join(f"{label} {n}" for label, n in v["counts"].items() if n)
    if v["not_forgotten"]:
        line += "; " + ", ".join(f"{p['text']!r} {p['verdict']} ({_fmt(p['value'])})" for p in v["not_forgotten"])
        line += f" and {v['more']} more" if v["more"] else ""
    return line


def verdict(efficacy: float, scope: str = "key") -> str | None:
    """"likely forgotten" at an efficacy of :data:`FORGOTTEN_AT` or more, "likely still drawn" below
    :data:`DRAWN_BELOW`, "unsure" between (a non-finite efficacy is "unsure"); None on a ``scope`` other than
    ``"key"``, which the thresholds were not calibrated on."""
    if scope not in REPORT_SCOPES:
        raise ValueError(f"report tokens must be one of {REPORT_SCOPES}, got {scope!r}")
    if scope != "key":
        return None
    if not math.isfinite(efficacy):
        return UNSURE
    return LIKELY_FORGOTTEN if efficacy >= FORGOTTEN_AT else LIKELY_DRAWN if efficacy < DRAWN_BELOW else UNSURE


def short_name(key: str) -> str:
    """``diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight`` -> ``in4.t0.k``."""
    parts = key.removeprefix("diffusion_model.").removesuffix(".weight").split(".")
    out = []
    for i, part in enumerate(parts):
        nxt = parts[i + 1] if i + 1 < len(parts) else ""
        if part == "input_blocks":
            out.append(f"in{nxt}")
        elif part == "output_blocks":
            out.append(f"out{nxt}")
        elif part == "middle_block":
            out.append("mid")
        elif part == "transformer_blocks":
            out.append(f"t{nxt}")
        elif part in ("to_k", "to_v"):
            out.append(part[-1])
    return ".".join(out) if out else key


#: Tokens per block of prompts in :meth:`ReportBuilder.add`: bounds its working memory (a few ``o x
#: REPORT_TOKENS`` floats per block, whatever the number of prompts) and keeps the products cache-sized;
#: fixed, so results never depend on the machine.
REPORT_TOKENS = 512

#: The report's token scopes. ``"key"``: per prompt its last word token and the :data:`KEY_TOKENS` tokens after
#: it (the end token and the first padding tokens), where the edit moves a prompt most; ``"full"``: every
#: token from the last word on (all the tokens the edit reads). Exact on its tokens either way, not an estimate.
REPORT_SCOPES = ("key", "full")

#: Tokens after the last word token in the ``"key"`` scope (the end token and three padding tokens). Chosen by
#: measurement (docs/performance.md): on SD1.5 shapes with 50 concepts the node path (edit + report) takes 1.04x
#: the edit alone with 0 tokens after the last word, 1.13x with 4, 1.20x with 8 and 2.05x with every token; 4
#: leaves room under the 1.2x target for a machine whose load changes.
KEY_TOKENS = 4


def scope_tokens(scope: str) -> int | None:
    """Tokens per prompt the report reads in ``scope`` (from the last word token on), None for all of them."""
    if scope not in REPORT_SCOPES:
        raise ValueError(f"report tokens must be one of {REPORT_SCOPES}, got {scope!r}")
    return None if scope == "full" else 1 + KEY_TOKENS


def describe_scope(scope: str) -> str:
    """What a report in ``scope`` measured on, in words (the report's table shows it)."""
    if scope_tokens(scope) is None:
        return "every token of each prompt from its last word on (all the tokens the edit reads)"
    return (f"each prompt's last word token and the {KEY_TOKENS} tokens after it (end token, first padding "
            f"tokens)")


#: Rows of :meth:`ReportBuilder.add`'s per-matrix sums: the numerator and denominator of efficacy, then of drift.
_SUMS = ("moved_along_way", "way_sq", "moved_sq", "before_sq")


@dataclass(frozen=True)
class _Group:
    """One group's prompts on the report's device: ``X`` zero-padded ``[n, t, d]``, its mask ``[n, t]``, the
    distinct guide sequences ``[u, t_g, d]`` and which one each prompt maps to."""

    concepts: ConceptSet
    contexts: torch.Tensor
    mask: torch.Tensor
    guides: torch.Tensor
    guide_index: torch.Tensor


class ReportBuilder:
    """Accumulates efficacy and drift per matrix while an edit runs (one matrix at a time).

    Per matrix and prompt it needs four sums over the prompt's tokens (see :class:`~.metrics.Gap`):
    ``<(W - W0) X^T, W0 (Y - X)^T>``, ``||W0 (Y - X)^T||^2``, ``||(W - W0) X^T||^2`` and ``||W0 X^T||^2``.
    They are formed in blocks of about :data:`REPORT_TOKENS` tokens: two products ``W0 X_b^T`` and
    ``(W - W0) X_b^T`` per block (the guide side ``W0 Y^T`` once per distinct guide), summed in the
    arithmetic's dtype within a block and in float64 across blocks and matrices. Working memory is a few
    ``o x REPORT_TOKENS`` blocks whatever the number of prompts.

    ``tokens`` (:data:`REPORT_SCOPES`) says which of each prompt's tokens the sums run over: ``"key"`` (default)
    its first ``1 + KEY_TOKENS`` tokens from the last word on (a prompt's context ``X_j`` starts at its last word
    token, and its guide ``Y_j`` is aligned to it), ``"full"`` all of them. The report's ``info`` records it."""

    def __init__(self, groups: Mapping[str, ConceptSet | None], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, tokens: str = "key") -> None:
        self._device, self._dtype = torch.device(device), dtype
        self._tokens, limit = tokens, scope_tokens(tokens)
        self._groups: dict[str, _Group] = {}
        for name, cs in groups.items():
            if name not in GROUPS:
                raise ValueError(f"unknown report group {name!r}; use one of {GROUPS}")
            if cs is None or cs.num_concepts == 0:
                continue
            seqs = cs.contexts if limit is None else tuple(c[:limit] for c in cs.contexts)
            guides = cs.guides if limit is None else tuple(gd[:limit] for gd in cs.guides)
            contexts = pad_sequences(seqs, dtype, self._device)
            lengths = torch.tensor([c.shape[0] for c in seqs], device=self._device)
            mask = torch.arange(contexts.shape[1], device=self._device).unsqueeze(0) < lengths.unsqueeze(1)
            self._groups[name] = _Group(
                concepts=cs, contexts=contexts, mask=mask.to(dtype),
                guides=pad_sequences(guides, dtype, self._device),
                guide_index=torch.tensor(cs.guide_index, dtype=torch.long, device=self._device),
            )
        self._matrices: list[MatrixResult] = []
        self._sums: dict[str, list[torch.Tensor]] = {name: [] for name in self._groups}  # [4, n] per matrix

    @property
    def tokens(self) -> str:
        """The token scope, ``"key"`` or ``"full"``."""
        return self._tokens

    def add(self, name: str, w0: torch.Tensor, w: torch.Tensor) -> None:
        """Measure one edited matrix ``w0 -> w``."""
        w0 = w0.to(device=self._device, dtype=self._dtype)
        delta = w.to(device=self._device, dtype=self._dtype) - w0
        base = float(torch.linalg.vector_norm(w0, dtype=torch.float64))
        change = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
        self._matrices.append(MatrixResult(name, tuple(w0.shape), change / base if base > 0 else change))
        for group_name, g in self._groups.items():
            self._sums[group_name].append(_group_sums(w0, delta, g).cpu())

    def build(self, *, config: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None,
              seconds: float = 0.0, warnings: tuple[str, ...] = (),
              concept_of: Mapping[str, str] | None = None) -> EditReport:
        prompts = []
        for group, g in self._groups.items():
            cs = g.concepts
            sums = self._sums[group]  # one [4, n] float64 tensor per matrix
            texts = cs.erase_texts or tuple(f"{group} {j + 1}" for j in range(cs.num_concepts))
            for j, text in enumerate(texts):
                eff = [Gap(float(s[0, j]), float(s[1, j])) for s in sums]
                dr = [Gap(float(s[2, j]), float(s[3, j])) for s in sums]
                prompts.append(PromptResult(
                    text=text, group=group,
                    efficacy=_pool(eff).efficacy, drift=_pool(dr).drift,
                    efficacy_per_matrix=tuple(x.efficacy for x in eff),
                    drift_per_matrix=tuple(x.drift for x in dr),
                    concept=(concept_of or {}).get(text, "") if group == "erase" else "",
                ))
        scope = {"report_tokens": self._tokens, "report_tokens_per_prompt": scope_tokens(self._tokens)}
        return EditReport(matrices=tuple(self._matrices), prompts=tuple(prompts), config=dict(config or {}),
                          info={**dict(info or {}), **scope}, seconds=seconds, warnings=tuple(warnings))


def _group_sums(w0: torch.Tensor, delta: torch.Tensor, g: _Group) -> torch.Tensor:
    """``[4, n]`` float64 (rows as in :data:`_SUMS`) for one matrix and one group, in blocks of prompts."""
    n, t, d = g.contexts.shape
    o = w0.shape[0]
    u = g.guides.shape[0]
    guide_proj = (w0 @ g.guides[:, :t].reshape(u * t, d).T).view(o, u, t)  # W0 Y^T once per distinct guide
    out = torch.empty(len(_SUMS), n, dtype=torch.float64, device=w0.device)
    step = max(1, REPORT_TOKENS // max(t, 1))
    for start in range(0, n, step):
        block = slice(start, min(start + step, n))
        b = block.stop - block.start
        x = g.contexts[block].reshape(b * t, d)
        before = (w0 @ x.T).view(o, b, t)  # W0 X^T
        moved = (delta @ x.T).view(o, b, t)  # (W - W0) X^T
        way = (guide_proj[:, g.guide_index[block], :] - before) * g.mask[block]  # W0 (Y - X)^T, padding masked
        out[:, block] = torch.stack([
            torch.einsum("obt,obt->b", moved, way),
            torch.einsum("obt,obt->b", way, way),
            torch.einsum("obt,obt->b", moved, moved),
            torch.einsum("obt,obt->b", before, before),
        ]).to(torch.float64)
    return out


def _pool(gaps: list[Gap]) -> Gap:
    total = Gap(0.0, 0.0)
    for gap in gaps:
        total = total + gap
    return total


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def finite(value: Any) -> Any:
    """Copy of ``value`` with non-finite floats replaced by ``None`` (recursively; tuples become lists), for
    strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
