"""ScaPreInformax, ScaPre Erase (preset + strength, ``ScaPreEraseSimple``), ScaPre Settings (every
field) and the deprecated ScaPre Erase (legacy) (``ScaPreErase``, every field as a widget).

Both erase nodes run :func:`glue.edit.run_erase`; they differ only in where the config
comes from. ``ScaPreErase`` keeps its id and its widgets in their saved order so that old workflows
(which store widget values by position) load and run unchanged.
"""

from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..scapre_core import INFORMAX_FIELDS, ScaPreConfig, informax_weights
from ..scapre_core.config import FIELD_HELP
from ..scapre_core.presets import EDIT_MODES, PRESET_NAMES, PRESETS, EraseSettings, preset_config
from .common import CATEGORY, Concepts, Informax, Report, config_input, log, progress
from .glue.edit import check_concepts, run_erase
from .glue.payloads import InformaxPayload
from .glue.weights import EffectiveWeights, compute_device, kv_keys

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ScaPreConfig))

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
            description="Mutual-information row weights and entropy factors of every cross-attention key/value "
                        "matrix (the Informax decoupler). Optional: ScaPre Erase computes them itself when this "
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
        concepts = check_concepts(concepts)
        config = _build_config(values)
        keys = kv_keys(model, concepts.width)
        result = informax_weights(EffectiveWeights(model, keys), concepts.erase, config,
                                  progress(cls.hidden.unique_id, "informax"), device=compute_device(model))
        return io.NodeOutput(InformaxPayload(result=result, config=config, keys=tuple(keys)))


def _edit_input() -> io.Input:
    return io.Combo.Input("edit", options=list(EDIT_MODES), default="keys and values",
                          tooltip="Which projections to edit: both (published), only values, or only keys.")


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


def _erase_output(model, concepts, settings: EraseSettings, informax, node_id, origin: dict) -> io.NodeOutput:
    """Both erase nodes end here: one edit function, one output shape. The node shows the summary and
    what the edit used (``used``: where the settings came from, seed, precision, Informax source)."""
    edited_model, record = run_erase(model, concepts, settings.config, settings.edit, informax,
                                     progress(node_id, "erase"), origin=origin)
    summary = {**record.report.summary(), "used": record.report.info["used"]}
    return io.NodeOutput(edited_model, record.report, ui={"scapre_summary": [summary]})


_PRESET_HELP = "; ".join(f"{name}: {PRESETS[name].description}" for name in PRESET_NAMES)


class ScaPreEraseSimple(io.ComfyNode):
    """ScaPre Erase: a published setting, a strength and a seed (ScaPre Settings for every field)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreEraseSimple",
            display_name="ScaPre Erase",
            category=CATEGORY,
            description="Erase the encoded concepts from the model by ScaPre's closed-form edit of the "
                        "cross-attention keys and values (no training data, no extra networks). Outputs an "
                        "edited clone; the input MODEL is unchanged. Pick the published setting for what you "
                        "erase; connect ScaPre Settings to set every field yourself.",
            inputs=[
                io.Model.Input("model", tooltip="The model to edit (SD1.x, SD2.x or SDXL UNet)."),
                Concepts.Input("concepts", tooltip="From ScaPre Concept Encode (with this model's CLIP)."),
                io.Combo.Input("preset", options=list(PRESET_NAMES), default="custom",
                               tooltip="The authors' published setting for what you erase. " + _PRESET_HELP
                                       + ". Ignored when settings is connected."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Multiplies the preset's erase_scale: 1 is the published setting, higher "
                                       "erases harder and changes more. Ignored when settings is connected."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip=FIELD_SEED + " Ignored when settings is connected (it has its own seed) or "
                                     "when informax is connected (ScaPre Informax's seed is used)."),
                _informax_input(),
                Settings.Input("settings", optional=True,
                               tooltip="Optional, from ScaPre Settings: every setting of the edit. When "
                                       "connected it replaces preset, strength and seed (a connected ScaPre "
                                       "Informax still sets the Informax settings)."),
            ],
            outputs=_erase_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, concepts, preset, strength, seed, informax=None, settings=None) -> io.NodeOutput:
        if settings is not None:
            if not isinstance(settings, EraseSettings):
                raise ValueError("settings must come from a ScaPre Settings node")
            if (preset, strength, seed) != ("custom", 1.0, 0):
                log.info("ScaPre Erase: settings connected; preset %r, strength %s and seed %s are not used",
                         preset, strength, seed)
            origin = {"source": "ScaPre Settings"}
        else:
            try:
                settings = EraseSettings(preset_config(preset, strength, seed))
            except ValueError as err:
                raise ValueError(f"invalid ScaPre setting: {err}") from None
            origin = {"source": "preset", "preset": preset, "strength": float(strength)}
        return _erase_output(model, concepts, settings, informax, cls.hidden.unique_id, origin)


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
            inputs=[_edit_input(), *(config_input(name) for name in CONFIG_FIELDS)],
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
                        "by ScaPre's closed-form edit of the cross-attention keys and values.",
            inputs=[
                io.Model.Input("model", tooltip="The model to edit (SD1.x, SD2.x or SDXL UNet)."),
                Concepts.Input("concepts", tooltip="From ScaPre Concept Encode (with this model's CLIP)."),
                _informax_input(),
                _edit_input(),
                *(config_input(name) for name in CONFIG_FIELDS),
            ],
            outputs=_erase_outputs(),
            hidden=[io.Hidden.unique_id],
            is_deprecated=True,
        )

    @classmethod
    def execute(cls, model, concepts, edit, informax=None, **values) -> io.NodeOutput:
        return _erase_output(model, concepts, EraseSettings(_build_config(values), edit), informax,
                             cls.hidden.unique_id, {"source": "widgets"})
