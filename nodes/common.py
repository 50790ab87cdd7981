"""Node-side glue: sockets, widgets for config fields, the progress bar (weights and patches live in
``nodes/glue``, shared with the command line)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..scapre_core import FIELD_HELP, ScaPreConfig
from .glue.weights import (  # noqa: F401  (re-exported for the node modules)
    EffectiveWeights,
    compute_device,
    edit_records,
    patched_clone,
)

log = logging.getLogger("comfyui-scapre")

CATEGORY = "ScaPre"

Concepts = io.Custom("SCAPRE_CONCEPTS")
Informax = io.Custom("SCAPRE_INFORMAX")
Report = io.Custom("SCAPRE_REPORT")
AttackPrompts = io.Custom("SCAPRE_ATTACK_PROMPTS")


# Widget ranges for ScaPreConfig fields (tooltips come from FIELD_HELP).
_FLOAT = {
    "lam": (0.001, 100.0, 0.01), "erase_scale": (0.0, 100.0, 0.05), "preserve_scale": (0.0, 100.0, 0.05),
    "p": (0.0, 32.0, 0.1), "mi_temperature": (0.01, 10.0, 0.01), "noise_sigma": (0.0, 10.0, 0.001),
    "mu": (0.0, 100.0, 0.01), "t_sigma": (0.01, 100.0, 0.01), "p_sigma": (0.0, 32.0, 0.1),
    "alpha_min": (0.0, 1.0, 0.01), "strength": (0.0, 10.0, 0.05), "focus_eps": (1e-6, 10.0, 1e-4),
    "overshoot": (0.0, 10.0, 0.05),
    "look_alike_pull": (0.0, 10.0, 0.05),
}
_INT = {"mi_samples": (1, 1000), "entropy_samples": (1, 1000), "entropy_bins": (2, 1000), "bures_iters": (0, 100),
        "seed": (0, 0xFFFFFFFFFFFFFFFF), "focus_rank": (1, 64)}
_COMBO = {"variant": ["scale", "small", "uce", "focus"], "technique": ["replace", "tensor"],
          "mi_estimator": ["sampled", "expected"], "precision": ["float32", "float64"]}


def config_input(name: str, optional: bool = False) -> io.Input:
    """The widget for one ScaPreConfig field, with the paper's default and its meaning as tooltip. ``optional``
    for fields added after a node was first published: a prompt saved before them still validates, and the
    field keeps its default."""
    default = getattr(ScaPreConfig(), name)
    tip = FIELD_HELP[name]
    if name in _COMBO:
        return io.Combo.Input(name, options=_COMBO[name], default=default, tooltip=tip, optional=optional)
    if name in _FLOAT:
        low, high, step = _FLOAT[name]
        return io.Float.Input(name, default=default, min=low, max=high, step=step, tooltip=tip, optional=optional)
    if name in _INT:
        low, high = _INT[name]
        # The frontend adds a "control after generate: randomize" widget to any INT named seed unless told
        # not to; an edit should stay reproducible until the user changes the seed.
        extra = {"control_after_generate": False} if name == "seed" else {}
        return io.Int.Input(name, default=default, min=low, max=high, tooltip=tip, optional=optional, **extra)
    return io.Boolean.Input(name, default=default, tooltip=tip, optional=optional)


def progress(node_id: str | None, label: str) -> Callable[[int, int], None]:
    """A per-matrix progress callback that drives the node's progress bar and stops at Cancel."""
    bar: list[comfy.utils.ProgressBar] = []

    def update(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not bar:
            bar.append(comfy.utils.ProgressBar(total, node_id=node_id))
        bar[0].update_absolute(done, total)
        log.debug("%s %d/%d", label, done, total)

    comfy.model_management.throw_exception_if_processing_interrupted()
    return update
