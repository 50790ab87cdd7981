"""ScaPreInformax, ScaPre Erase (preset + strength, ``ScaPreEraseSimple``), ScaPre Settings (every
field) and the deprecated ScaPre Erase (legacy) (``ScaPreErase``, every field as a widget).

Both erase nodes run :func:`glue.edit.run_erase`; they differ only in where the config
comes from. ``ScaPreErase`` keeps its id and its widgets in their saved order so that old workflows
(which store widget values by position) load and run unchanged.
"""

from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..scapre_core import INFORMAX_FIELDS, ScaPreConfig
from ..scapre_core.config import FIELD_HELP
from ..scapre_core.presets import (
    AUTO,
    AUTO_DESCRIPTION,
    DEFAULT_PRESET,
    EDIT_MODES,
    PRESET_CHOICES,
    PRESET_NAMES,
    PRESETS,
    EraseSettings,
    preset_config,
)
from ..scapre_core.report import REPORT_SCOPES, describe_scope
from .common import CATEGORY, Concepts, Informax, Report, config_input, log, progress
from .glue.edit import auto_choice, run_erase, run_informax

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ScaPreConfig))
#: The legacy node's widgets, frozen in their saved order (fields added to the config later are not shown there and
#: keep their defaults, so an old workflow's values land on the widgets they were saved from).
LEGACY_FIELDS = CONFIG_FIELDS[:CONFIG_FIELDS.index("precision") + 1]

MODEL_TIP = ("The model to edit. ScaPre as published (cross-attention keys/values): SD1.x, SD2.x, SDXL, Wan 2.1/2.2, "
             "LTX-Video, PixArt. Beyond the paper (the text-input projection, measured on weights only, not on "
             "images; docs/dit-models.md): Flux, Chroma, SD3/3.5, Qwen-Image, HiDream. Other models are refused.")
Settings = io.Custom("SCAPRE_SETTINGS")
FIELD_SEED = FIELD_HELP["seed"]


def _build_config(values: dict) -> ScaPreConfig:
    try:
        return ScaPreConfig(**values)
    except ValueError as err:
        raise ValueError(f"invalid ScaPre setting: {err}") from None


class ScaPreInformax(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreInformax",
            display_name="ScaPre Informax",
            category=CATEGORY,
            description="Mutual-information row weights and entropy factors of every matrix ScaPre Erase edits "
                        "(the Informax decoupler). Optional: ScaPre Erase computes them itself when this "
                        "is not connected; computing them here lets you reuse them across several erase nodes.",
            inputs=[
                io.Model.Input("model", tooltip="The model you will edit (the same one ScaPre Erase gets)."),
                Concepts.Input("concepts", tooltip="From ScaPre Concept Encode."),
                *(config_input(name) for name in INFORMAX_FIELDS),
            ],
            outputs=[Informax.Output("row_weights", display_name="informax",
                                     tooltip="Row weights and entropy factors; connect to ScaPre Erase.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, concepts, **values) -> io.NodeOutput:
        config = _build_config(values)
        payload = run_informax(model, concepts, config, progress(cls.hidden.unique_id, "informax"))
        return io.NodeOutput(payload)


def _edit_input() -> io.Input:
    return io.Combo.Input("edit", options=list(EDIT_MODES), default="keys and values",
                          tooltip="Which projections to edit: both (published), only values, or only keys. Models that "
                                  "read text through one text-input projection (Flux, SD3, ...) take only 'keys "
                                  "and values'.")


def _informax_input() -> io.Input:
    return Informax.Input("informax", optional=True,
                          tooltip="Optional precomputed row weights from ScaPre Informax. When connected, its "
                                  "Informax settings replace this node's (or the preset's, or ScaPre Settings'): p, "
                                  "the MI and entropy settings, seed and precision. The node's summary lists "
                                  "every setting replaced.")


def _erase_outputs() -> list[io.Output]:
    return [
        io.Model.Output("edited_model", display_name="MODEL",
                        tooltip="The edited model: chain it into KSampler, ScaPre Save LoRA or a checkpoint saver."),
        Report.Output("report", display_name="report",
                      tooltip="What the edit did per concept, probe, preserve prompt and matrix; connect to "
                              "ScaPre Report."),
    ]


def _erase_output(model, concepts, settings: EraseSettings, informax, node_id, origin: dict,
                  report_tokens: str, notes: tuple[str, ...] = ()) -> io.NodeOutput:
    """Both erase nodes end here: one edit function, one output shape. The node shows the summary, what the
    edit used (``used``: where the settings came from, seed, precision, Informax source) and the report's
    token scope."""
    edited_model, record = run_erase(model, concepts, settings.config, settings.edit, informax,
                                     progress(node_id, "erase"), warnings=notes, origin=origin,
                                     report_tokens=report_tokens)
    summary = {**record.report.summary(), "used": record.report.info["used"],
               "report_tokens": record.report.info["report_tokens"]}
    return io.NodeOutput(edited_model, record.report, ui={"scapre_summary": [summary]})


def _report_tokens_input() -> io.Input:
    return io.Combo.Input(
        "report_tokens", options=list(REPORT_SCOPES), default="key", optional=True,
        tooltip="Which tokens the report (efficacy and drift per prompt) is measured on; the edit is the same "
                f"either way. key: {describe_scope('key')}, exact on those tokens, about a tenth of the edit's "
                f"time or less. full: {describe_scope('full')}, about as long again as the edit itself.")


_PRESET_HELP = "; ".join(f"{name}: {PRESETS[name].description}" for name in PRESET_NAMES)
_PRESET_TOOLTIP = (f"What to run. Default {DEFAULT_PRESET}: {AUTO_DESCRIPTION}. The others: {_PRESET_HELP}.")
STRENGTH_HELP = ("How far the edit goes (beyond the paper). 0 = no edit (the model comes back unchanged), 0.5 = "
                 "half the preset's change, 1 = the preset exactly as published; above 1 the method goes further "
                 "itself (its erase scale times the strength; what pulls the change back and Informax's p divided "
                 "by it), aims the erased prompts past their guides (overshoot 0.3 per unit from 1 to 5, shared "
                 "among them) and moves their guides towards their nearest look-alikes (half way at 2, all the way "
                 "from 3, where ScaPre Concept Encode found look-alikes; ScaPre Settings: look_alike_pull), so a "
                 "concept the model draws even unnamed can go too. Raise it when the report says a concept is likely "
                 "still drawn; higher forgets more and changes more of the rest (precise is already at its limit at "
                 "1).")


class ScaPreEraseSimple(io.ComfyNode):
    """ScaPre Erase: a published setting, a strength and a seed (ScaPre Settings for every field)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreEraseSimple",
            display_name="ScaPre Erase",
            category=CATEGORY,
            description="Erase the encoded concepts from the model by ScaPre's closed-form edit of the "
                        "cross-attention keys and values (no training data, no extra networks); on Flux, Chroma, "
                        "SD3/3.5, Qwen-Image and HiDream, of the text-input projections instead (beyond the paper). "
                        "Outputs "
                        "an edited clone; the input MODEL is unchanged. Pick the published setting for what you "
                        "erase; connect ScaPre Settings to set every field yourself.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TIP),
                Concepts.Input("concepts", tooltip="From ScaPre Concept Encode (with this model's own text encoder)."),
                io.Combo.Input("preset", options=list(PRESET_CHOICES), default=DEFAULT_PRESET,
                               tooltip=_PRESET_TOOLTIP + " Ignored when settings is connected."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip=STRENGTH_HELP + " Ignored when settings is connected."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip=FIELD_SEED + " Ignored when settings is connected (it has its own seed) or "
                                     "when informax is connected (ScaPre Informax's seed is used)."),
                _informax_input(),
                Settings.Input("settings", optional=True,
                               tooltip="Optional, from ScaPre Settings: every setting of the edit. When "
                                       "connected it replaces preset, strength and seed (a connected ScaPre "
                                       "Informax still sets the Informax settings)."),
                _report_tokens_input(),
            ],
            outputs=_erase_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, concepts, preset, strength, seed, informax=None, settings=None,
                report_tokens="key") -> io.NodeOutput:
        notes: tuple[str, ...] = ()
        if settings is not None:
            if not isinstance(settings, EraseSettings):
                raise ValueError("settings must come from a ScaPre Settings node")
            if (preset, strength, seed) != (DEFAULT_PRESET, 1.0, 0):
                log.info("ScaPre Erase: settings connected; preset %r, strength %s and seed %s are not used",
                         preset, strength, seed)
            origin = {"source": "ScaPre Settings"}
        else:
            name = preset
            if preset == AUTO:
                name, note = auto_choice(model, concepts)
                notes = (note,) if name != "precise" else ()  # precise says so itself (focus variant, look-alikes)
            try:
                settings = EraseSettings(preset_config(name, strength, seed))
            except ValueError as err:
                raise ValueError(f"invalid ScaPre setting: {err}") from None
            origin = {"source": "preset", "preset": preset, "strength": float(strength)}
            if preset == AUTO:
                origin["ran"] = name
        return _erase_output(model, concepts, settings, informax, cls.hidden.unique_id, origin, report_tokens,
                             notes)


class ScaPreSettings(io.ComfyNode):
    """ScaPre Settings: every field of the config, for ScaPre Erase's ``settings`` input."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreSettings",
            display_name="ScaPre Settings",
            category=CATEGORY,
            description="Every setting of a ScaPre edit, with the paper's defaults. Connect to the settings input "
                        "of ScaPre Erase, where it replaces the preset, strength and seed.",
            # fields added after 0.2.0 (strength, focus_*) are optional: prompts saved before them still run
            inputs=[_edit_input(), *(config_input(name, optional=name not in LEGACY_FIELDS) for name in CONFIG_FIELDS)],
            outputs=[Settings.Output("scapre_settings", display_name="settings",
                                     tooltip="Connect to ScaPre Erase's settings input.")],
        )

    @classmethod
    def execute(cls, edit, **values) -> io.NodeOutput:
        return io.NodeOutput(EraseSettings(_build_config(values), edit))


class ScaPreErase(io.ComfyNode):
    """ScaPre Erase (legacy): every setting as a widget. Deprecated: kept, with its id and widget order,
    so that saved workflows keep loading and running exactly as before."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreErase",
            display_name="ScaPre Erase (legacy)",
            category=CATEGORY,
            description="Deprecated: use ScaPre Erase (with ScaPre Settings for every field). Kept so that "
                        "workflows saved with it still load and give the same edit. Erases the encoded concepts "
                        "by ScaPre's closed-form edit of the cross-attention keys and values. Its report is "
                        "measured on every token (report tokens: full), as before.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TIP),
                Concepts.Input("concepts", tooltip="From ScaPre Concept Encode (with this model's own text encoder)."),
                _informax_input(),
                _edit_input(),
                *(config_input(name) for name in LEGACY_FIELDS),
            ],
            outputs=_erase_outputs(),
            hidden=[io.Hidden.unique_id],
            is_deprecated=True,
        )

    @classmethod
    def execute(cls, model, concepts, edit, informax=None, **values) -> io.NodeOutput:
        # its report stays on every token, as before (no new widget: saved workflows store widgets by position)
        return _erase_output(model, concepts, EraseSettings(_build_config(values), edit), informax,
                             cls.hidden.unique_id, {"source": "widgets"}, "full")
