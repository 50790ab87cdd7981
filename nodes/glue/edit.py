"""The edit itself, once for every caller: encoded concepts and a config in, an edited clone of the
MODEL (patches on exactly the weights its architecture reads text with) and its :class:`EditRecord` out
(SPEC "The closed-form solve"; COMFY_NOTES (a); ``glue.architectures`` for what is edited per model)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import comfy.model_management
import torch

from ...scapre_core import ScaPreConfig, __version__, erase_iter, informax_weights
from ...scapre_core.concepts import ConceptSet
from ...scapre_core.focus import toward_look_alikes
from ...scapre_core.lowrank import LowRankChange
from ...scapre_core.presets import auto_preset
from ...scapre_core.report import REPORT_TOKENS, EditReport, PromptResult, ReportBuilder, scope_tokens, verdict_line
from ...scapre_core.solve import CONCEPT_BLOCK
from . import formats
from .architectures import (
    CLIP_LAYOUTS,
    Architecture,
    Stream,
    Target,
    architecture,
    edit_targets,
    stream_width,
    weight_shapes,
)
from .encode import StreamSets, stream_sets
from .payloads import EditRecord, EncodedConcepts, InformaxPayload
from .weights import EffectiveWeights, compute_device, edit_records, patched_clone

log = logging.getLogger("comfyui-scapre")


def check_concepts(concepts) -> EncodedConcepts:
    if not isinstance(concepts, EncodedConcepts):
        raise ValueError("concepts must come from a ScaPre Concept Encode node")
    return concepts


def _tokens(cs: ConceptSet | None) -> int:
    return 0 if cs is None else sum(int(c.shape[0]) for c in cs.contexts) + sum(int(g.shape[0]) for g in cs.guides)


def working_memory(concepts: EncodedConcepts, shapes: Mapping[str, tuple[int, ...]], config: ScaPreConfig) -> int:
    """Bytes the edit and its report hold on the compute device at once (an estimate on the high side):
    the text side (contexts twice, a few ``d x d`` bases), the largest matrix's working copies, the
    Informax draws and activations, one block of the data term and a few blocks of the report."""
    d = concepts.width
    rows = max((int(s[0]) for s in shapes.values()), default=0)
    erase = concepts.erase
    draws = erase.num_concepts * max(config.entropy_samples, 2 * config.mi_samples)
    floats = (
        3 * _tokens(erase) * d + _tokens(concepts.probes) * d + _tokens(concepts.preserve) * d  # text, both sides
        + 4 * d * d  # eigenbasis, preserve Gram, SVD factors
        + 10 * rows * d  # W0, its change, right-hand side, solved rows, products in the eigenbasis
        + draws * (d + rows)  # Informax/entropy: noisy concept vectors and their activations
        + 2 * rows * CONCEPT_BLOCK * 77  # one block of the data term
        + 6 * rows * REPORT_TOKENS  # one block of the report
    )
    return 4 * floats * (2 if config.precision == "float64" else 1)


def make_room(device: torch.device, memory_required: int) -> None:
    """Ask ComfyUI to unload models from ``device`` until ``memory_required`` bytes are free, as its own
    nodes do before GPU work (``comfy.model_management.free_memory``); nothing to do on the CPU."""
    if device.type == "cpu":
        return
    comfy.model_management.free_memory(memory_required, device)


class TargetWeights(Mapping):
    """The matrices of ``targets`` as the model computes with them now (``EffectiveWeights``, one float32 CPU
    copy at a time), each sliced to its rows (PixArt's ``kv_linear`` holds a key and a value matrix)."""

    def __init__(self, weights: EffectiveWeights, targets: list[Target]) -> None:
        self.targets = {t.name: t for t in targets}
        self._weights = weights

    def __getitem__(self, name: str) -> torch.Tensor:
        target = self.targets[name]
        weight = self._weights[target.key]
        return weight if target.rows is None else weight[target.rows[0]:target.rows[1]]

    def full_shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._weights.entries[key].weight.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.targets)

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class StreamInput:
    """One text stream of an edit: its matrices and how to build its concept sets. The sets are built when the
    stream is edited and dropped after (HiDream has 34 streams of 4096-wide text: all at once would hold
    several GB)."""

    stream: Stream
    targets: list[Target]
    build: Callable[[], StreamSets]

    @property
    def sets(self) -> StreamSets:
        """The stream's concept sets, built anew on each access (keep the result while it is needed)."""
        return self.build()


def _plain(item: StreamInput) -> bool:
    """Whether the stream's matrices read the text encoder's output directly (as the focus variant needs)."""
    return item.stream.source == "cond" and item.stream.projection is None and not item.stream.masked


def focus_unavailable(model, concepts, edit: str = "keys and values") -> str | None:
    """Why the focus variant (preset precise) cannot edit ``model`` with ``concepts``; ``None`` when it can."""
    concepts = check_concepts(concepts)
    if concepts.focus is None:
        return "the concepts were encoded without look-alikes (look_alikes auto on ScaPre Concept Encode finds them)"
    arch, inputs = stream_inputs(model, concepts, edit)
    if not all(_plain(i) for i in inputs):
        return f"{arch.name} does not read the text encoder's output directly (precise is for SD1.x, SD2.x, SDXL)"
    return None


def auto_choice(model, concepts, edit: str = "keys and values") -> tuple[str, str]:
    """``(preset, note)``: what preset ``auto`` runs on ``model`` with ``concepts`` (``scapre_core.presets.
    auto_preset``) and a line for the summary saying why."""
    concepts = check_concepts(concepts)
    why = focus_unavailable(model, concepts, edit)
    count = len(concepts.plan.concepts)
    name = auto_preset(why is None, concepts.concept_type, count)
    if why is None:
        return name, f"preset auto ran {name} (beyond the paper): look-alikes found, each concept guided to its nearest"
    return name, (f"preset auto ran {name}, the published run for {count} concept(s) of type "
                  f"{concepts.concept_type or 'object'}: precise cannot run here, {why}")


def _focus_inputs(arch: Architecture, inputs: list[StreamInput], concepts: EncodedConcepts) -> list[StreamInput]:
    """The focus variant (preset precise, beyond the paper) edits with its own text side (look-alike guides and
    references from ScaPre Concept Encode), built on the text encoder's output as the UNet reads it."""
    if concepts.focus is None:
        raise ValueError("the focus variant (preset precise, beyond the paper) needs look-alikes: set look_alikes "
                         "to auto (or preserve prompts) in ScaPre Concept Encode, or pick another preset")
    plain = [i for i in inputs if _plain(i)]
    if len(plain) != len(inputs):
        raise ValueError(f"the focus variant (preset precise, beyond the paper) is for models whose cross-attention "
                         f"reads the text encoder's output directly (SD1.x, SD2.x, SDXL); this MODEL is {arch.name}: "
                         "pick a published preset")
    return [dataclasses.replace(i, build=_with_erase(i.build, concepts.focus)) for i in inputs]


def _toward_look_alikes(inputs: list[StreamInput], concepts: EncodedConcepts,
                        share: float) -> tuple[list[StreamInput], str]:
    """Strength above 1 with a published preset (beyond the paper): every erase prompt's guide moved ``share`` of the
    way to its nearest look-alike (``scapre_core.focus.toward_look_alikes``), where look-alikes were found and the
    model reads the text encoder's output directly; the stream's preserve prompts stay. Returns the inputs and a
    line for the summary saying what was done or why not."""
    if concepts.focus is None or concepts.own_guides is None:
        return inputs, ("strength above 1: the guides stay as published (no look-alikes to move them towards: "
                        "look_alikes auto on ScaPre Concept Encode finds them)")
    if not all(_plain(i) for i in inputs):
        return inputs, ("strength above 1: the guides stay as published (moving them towards look-alikes is for "
                        "models that read the text encoder's output directly: SD1.x, SD2.x, SDXL)")
    erase = toward_look_alikes(concepts.own_guides, concepts.focus, share)
    moved = [dataclasses.replace(i, build=_with_moved_erase(i.build, erase)) for i in inputs]
    return moved, (f"strength above 1 (beyond the paper): guides moved {share:.0%} of the way towards the "
                   "look-alikes: " + "; ".join(f"{c} -> {n[0]}" for c, n in (concepts.look_alikes or {}).items()
                                               if n))


def _with_moved_erase(build: Callable[[], StreamSets], erase: ConceptSet) -> Callable[[], StreamSets]:
    def moved() -> StreamSets:
        sets = build()
        keep = dataclasses.replace(erase, preserve_contexts=sets.erase.preserve_contexts,
                                   preserve_texts=sets.erase.preserve_texts)
        return dataclasses.replace(sets, erase=keep)
    return moved


def _with_erase(build: Callable[[], StreamSets], erase: ConceptSet) -> Callable[[], StreamSets]:
    return lambda: dataclasses.replace(build(), erase=erase)


def stream_inputs(model, concepts: EncodedConcepts, edit: str = "keys and values"
                  ) -> tuple[Architecture, list[StreamInput]]:
    """The architecture of ``model``, and per text stream its edited matrices and concept sets: the encoded
    prompts passed through the model's own text projection (weights as the model computes with them),
    computed once per edit."""
    arch = architecture(model)
    if concepts.text_encoder and concepts.text_encoder not in arch.clip_layouts:
        used = CLIP_LAYOUTS[concepts.text_encoder].description if concepts.text_encoder in CLIP_LAYOUTS else \
            concepts.text_encoder
        raise ValueError(f"this MODEL is {arch.name} ({type(model.model).__name__}), which reads {arch.text_encoder} "
                         f"text, but the concepts were encoded with {used}: connect the text encoder that belongs to "
                         "this model to ScaPre Concept Encode")
    shapes = weight_shapes(model)
    targets = edit_targets(model, arch, edit, shapes)
    streams, all_targets = arch.layout(model, shapes)
    device = compute_device(model)
    plan = concepts.plan
    concept_of = {p: plan.concepts[j] for p, j in zip(plan.prompts, plan.concept_index, strict=True)}
    out = []
    for stream in streams:
        mine = [t for t in targets if t.stream == stream.name]
        if not mine:
            continue
        if stream.source == "cond" and not stream.width_key:  # UNet: keys/values reading this width
            mine = [t for t in mine if shapes[t.key][-1] == concepts.width]
            if not mine:
                widths = sorted({shapes[t.key][-1] for t in all_targets})
                raise ValueError(f"the concepts were encoded {concepts.width} wide but this model's "
                                 f"cross-attention reads {widths}: encode the concepts with the CLIP that "
                                 "belongs to this model")
        width = stream_width(arch, stream, shapes, mine)
        have = _encoded_width(concepts, stream.source)
        if have != width:
            raise ValueError(f"{arch.name} reads {width}-wide {_what(stream)} but the concepts' text encoder gives "
                             f"{have}: encode the concepts with the text encoder that belongs to this model "
                             f"({arch.text_encoder})")
        if not concepts.encodings or (stream.source == "cond" and stream.projection is None and not stream.masked):
            sets = StreamSets(concepts.erase, concepts.probes, concepts.preserve, _labels(concepts.erase, concept_of))
            build = (lambda made: lambda: made)(sets)
        else:
            build = _stream_builder(model, concepts, stream, device, concept_of)
        out.append(StreamInput(stream, mine, build))
    return arch, out


def _stream_builder(model, concepts: EncodedConcepts, stream: Stream, device: torch.device,
                    concept_of: Mapping[str, str]) -> Callable[[], StreamSets]:
    def build() -> StreamSets:
        return stream_sets(concepts.plan, concepts.encodings, stream.source, _projection(model, stream, device),
                           stream.masked, concept_of)

    return build


def _labels(cs, concept_of: Mapping[str, str]) -> dict[str, str]:
    return {t: concept_of.get(t.rsplit(" [", 1)[0], t) for t in cs.erase_texts}


def _what(stream: Stream) -> str:
    if stream.source == "pooled":
        return "pooled vectors"
    return f"text tokens ({stream.name})" if stream.source.startswith("layers:") else "text tokens"


def _encoded_width(concepts: EncodedConcepts, source: str) -> int | None:
    if source == "cond":
        return concepts.width
    empty = concepts.encodings.get("", None)
    if source.startswith("layers:"):
        layer = int(source.split(":", 1)[1])
        if empty is None or empty.layers is None:
            return None
        if layer >= empty.layers.shape[0]:
            raise ValueError(f"the model reads layer {layer} of its text encoder's per-layer output, but the "
                             f"concepts' text encoder gave {empty.layers.shape[0]} layers: encode the concepts "
                             "with the text encoder that belongs to this model")
        return int(empty.layers.shape[-1])
    return None if empty is None or empty.pooled is None else int(empty.pooled.shape[-1])


def _projection(model, stream: Stream, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if stream.projection is None:
        return None
    source = EffectiveWeights(model, list(stream.projection_keys))
    weights = {k: source[k].to(device) for k in stream.projection_keys}

    def project(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return stream.projection(weights, rows.to(device=device, dtype=torch.float32)).to("cpu")

    return project


def run_erase(model, concepts: EncodedConcepts, config: ScaPreConfig, edit: str = "keys and values",
              informax: InformaxPayload | None = None, step: Callable[[int, int], None] | None = None,
              warnings: tuple[str, ...] = (), origin: Mapping[str, Any] | None = None,
              report_tokens: str = "key"):
    """``(edited_model, record)``: ``model`` erased of ``concepts`` with ``config``; ``model`` is untouched.

    ``informax`` (optional) supplies precomputed row weights; its settings (seed and precision included)
    then win over ``config``'s Informax fields. ``origin`` says where ``config`` came from (e.g.
    ``{"source": "preset", "preset": "artists", "strength": 1.0}``). What was used, and every setting the
    Informax node replaced, is recorded as ``report.info["used"]`` (shown on the node, saved with the
    edit). ``report_tokens`` is the report's token scope (``scapre_core.report.REPORT_SCOPES``): ``"key"`` (each
    prompt's last word token and the few after it, a small fraction of the edit's cost) or ``"full"`` (every token,
    about the edit's own cost). ``step(done, total)`` runs after each matrix and may raise to cancel."""
    concepts = check_concepts(concepts)
    scope_tokens(report_tokens)  # a bad scope fails before any work
    warnings = [*concepts.plan.warnings, *warnings]
    given: Mapping[str, object] = {}
    replaced: dict[str, object] = {}
    if informax is not None:
        if not isinstance(informax, InformaxPayload):
            raise ValueError("informax must come from a ScaPre Informax node")
        replaced = {k: v for k, v in informax.config.informax_key().items() if getattr(config, k) != v}
        if replaced:
            log.info("ScaPre Erase: using ScaPre Informax's settings: %s",
                     ", ".join(f"{k}={v!r}" for k, v in replaced.items()))
            config = config.replace(**replaced)
        given = informax.streams or {"text": informax.result}
    used = {**dict(origin or {}), "seed": config.seed, "precision": config.precision, "edit": edit,
            "informax": "from ScaPre Informax" if given else "computed here",
            "replaced_by_informax": replaced}
    arch, inputs = stream_inputs(model, concepts, edit)
    share = 0.0  # how far the erase prompts' guides went towards their look-alikes (report.info)
    if config.variant == "focus":
        inputs = _focus_inputs(arch, inputs, concepts)
        share = 1.0
        warnings.append("focus variant (beyond the paper); look-alikes: " + "; ".join(
            f"{c} -> {', '.join(n)}" for c, n in (concepts.look_alikes or {}).items()))
    elif config.to_look_alike > 0:
        moved, note = _toward_look_alikes(inputs, concepts, config.to_look_alike)
        share = config.to_look_alike if moved is not inputs else 0.0
        inputs = moved
        warnings.append(note)
    if not arch.published:
        warnings.append(f"{arch.name}: beyond the paper; ScaPre's closed form applied to {arch.where}. Measured on "
                        "weights only (the report), not on images: check with ScaPre Compare")
    if arch.note and any(t.kind == "k" for i in inputs for t in i.targets):
        warnings.append(f"{arch.name}: {arch.note}")
    # every edited weight read through one reader (fp8, scaled fp8 and GGUF as numbers); how the edit reaches the
    # weights the model samples with, per weight (formats)
    effective = EffectiveWeights(model, list(dict.fromkeys(t.key for i in inputs for t in i.targets)))
    tracker = formats.EditTracker(model, effective, edit_records(model))
    sliced: set[str] = set()
    device = compute_device(model)
    total = sum(len(i.targets) for i in inputs)
    diffs: dict[str, torch.Tensor] = {}
    reports, concept_of = [], {}
    start = time.perf_counter()
    done = 0
    for item in inputs:
        weights = TargetWeights(effective, item.targets)
        sets = item.sets
        make_room(device, _stream_memory(model, item.targets, sets, config))
        builder = ReportBuilder({"erase": sets.erase, "probe": sets.probes, "preserve": sets.preserve},
                                device=device, tokens=report_tokens)

        def progress(i: int, _n: int, offset: int = done) -> None:
            if step is not None:
                step(offset + i, total)

        for name, change in erase_iter(weights, sets.erase, config, given.get(item.stream.name), progress,
                                       device=device, changes=True, compact=True):
            original = weights[name]
            target = weights.targets[name]
            stored = None
            if isinstance(change, LowRankChange):  # a patch of r + 1 numbers per row instead of d
                stored = change.to(device="cpu", dtype=original.dtype)
                change = stored.dense(original)
                if target.rows is not None or tracker.applications[target.key].method == formats.COMPUTE:
                    stored = None  # a block of a fused weight, or applied at compute time: dense
            change = change.to(original.dtype)  # the patch: the change as computed, not edited - original
            builder.add(name, original, original + change)
            if stored is not None:
                diffs[target.key] = stored
            else:
                _store(diffs, weights, target, change)
            if target.rows is None:
                tracker.add(target.key, original, change)
            else:
                sliced.add(target.key)
        done += len(item.targets)
        reports.append(builder.build())
        concept_of.update(sets.concept_of)
        del sets, builder
    for key in sorted(sliced):  # fused weights (a key and a value matrix in one): measured whole
        tracker.add(key, effective[key], diffs[key])
    seconds = time.perf_counter() - start
    patches = patch_memory(diffs)
    warnings += tracker.warnings()
    report = combine_reports(reports, [i.stream.name for i in inputs], config=config.to_dict(),
                             seconds=seconds, warnings=tuple(warnings), concept_of=concept_of,
                             info={**concepts.describe(), "edit": edit, "version": __version__,
                                   "architecture": arch.name, "model_class": type(model.model).__name__,
                                   "method": arch.method,
                                   "informax": "precomputed" if given else "computed", "used": used,
                                   "report_tokens": report_tokens, "look_alike_share": share,
                                   "report_tokens_per_prompt": scope_tokens(report_tokens), "patches": patches,
                                   **tracker.info()})
    record = EditRecord(diffs=diffs, report=report, concepts=concepts.describe(), config=config.to_dict(),
                        edit=edit, version=__version__)
    edited_model = patched_clone(model, diffs, record, tracker.applications)
    summary = report.summary()
    log.info("ScaPre Erase (%s): %d concept(s), %d matrices in %.2f s, mean efficacy %s; patches %.1f MB (%d of %d "
             "weights in compact form; %.1f MB as dense matrices)", arch.name, summary["concepts"], summary["matrices"],
             seconds, summary["mean_efficacy"], patches["mb"], patches["compact"], patches["weights"],
             patches["dense_mb"])
    log.info("ScaPre Erase: %s", verdict_line(summary["verdict"]))
    return edited_model, record


def patch_memory(diffs: Mapping[str, torch.Tensor | LowRankChange]) -> dict[str, Any]:
    """What the edited MODEL holds for ``diffs``: ``weights``, how many of them in compact form (``compact``),
    the megabytes held (``mb``; a right factor shared by several changes counted once) and what dense float32
    matrices would take (``dense_mb``)."""
    held, dense, shared = 0, 0, set()
    for diff in diffs.values():
        dense += math.prod(diff.shape) * 4
        if isinstance(diff, LowRankChange):
            held += diff.nbytes(shared=True)
            if diff.right.data_ptr() not in shared:
                shared.add(diff.right.data_ptr())
                held += diff.right.numel() * diff.right.element_size()
        else:
            held += diff.numel() * diff.element_size()
    compact = sum(isinstance(d, LowRankChange) for d in diffs.values())
    return {"weights": len(diffs), "compact": compact, "mb": round(held / 2**20, 2),
            "dense_mb": round(dense / 2**20, 2)}


def _stream_memory(model, targets: list[Target], sets: StreamSets, config: ScaPreConfig) -> int:
    """:func:`working_memory` of one stream: its own text width and concept sets, its matrices' shapes."""
    text = SimpleNamespace(width=sets.erase.dim, erase=sets.erase, probes=sets.probes, preserve=sets.preserve)
    shapes = weight_shapes_of(model, targets)
    return working_memory(text, shapes, config)


def weight_shapes_of(model, targets: list[Target]) -> dict[str, tuple[int, ...]]:
    entries = formats.key_entries(model, dict.fromkeys(t.key for t in targets))
    out = {}
    for t in targets:
        shape = tuple(entries[t.key].weight.shape)
        out[t.name] = shape if t.rows is None else (t.rows[1] - t.rows[0], *shape[1:])
    return out


def _store(diffs: dict[str, torch.Tensor], weights: TargetWeights, target: Target, change: torch.Tensor) -> None:
    """Put one matrix's change into the patch of its model weight (a row block of a fused weight)."""
    if target.rows is None:
        diffs[target.key] = change
        return
    full = diffs.get(target.key)
    if full is None:
        full = diffs[target.key] = torch.zeros(weights.full_shape(target.key), dtype=change.dtype)
    full[target.rows[0]:target.rows[1]] = change


def combine_reports(reports: list[EditReport], streams: list[str], *, config, seconds: float, warnings,
                    concept_of: Mapping[str, str], info) -> EditReport:
    """One report over every stream: matrices in edit order; a prompt measured on another stream's
    matrices than its own gets NaN there (its pooled figures are over its own stream's matrices). Prompts of
    a stream other than the first are labelled with the stream (``"cat [pooled]"``)."""
    matrices = [m for r in reports for m in r.matrices]
    prompts = []
    offset = 0
    for report, stream in zip(reports, streams, strict=True):
        n = len(report.matrices)
        before, after = offset, len(matrices) - offset - n
        head, tail = (math.nan,) * before, (math.nan,) * after
        for p in report.prompts:
            label = p.text if stream == streams[0] else f"{p.text} [{stream}]"
            concept = p.concept or (concept_of.get(p.text, "") if p.group == "erase" else "")
            prompts.append(PromptResult(label, p.group, p.efficacy, p.drift, head + p.efficacy_per_matrix + tail,
                                        head + p.drift_per_matrix + tail, concept))
        offset += n
    return EditReport(matrices=tuple(matrices), prompts=tuple(prompts), config=dict(config), info=dict(info),
                      seconds=seconds, warnings=tuple(warnings))


def run_informax(model, concepts: EncodedConcepts, config: ScaPreConfig,
                 step: Callable[[int, int], None] | None = None) -> InformaxPayload:
    """Informax row weights and entropy factors of every matrix the edit would change, per stream."""
    concepts = check_concepts(concepts)
    _, inputs = stream_inputs(model, concepts)
    device = compute_device(model)
    total = sum(len(i.targets) for i in inputs)
    results, done, keys = {}, 0, []
    for item in inputs:
        def progress(i: int, _n: int, offset: int = done) -> None:
            if step is not None:
                step(offset + i, total)

        weights = TargetWeights(EffectiveWeights(model, list(dict.fromkeys(t.key for t in item.targets))),
                                item.targets)
        results[item.stream.name] = informax_weights(weights, item.sets.erase, config, progress, device=device)
        keys += list(weights)
        done += len(item.targets)
    first = next(iter(results.values()))
    return InformaxPayload(result=results.get("text", first), config=config, keys=tuple(keys), streams=results)
