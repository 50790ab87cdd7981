"""The node list and the V3 entry point ComfyUI calls (``comfy_entrypoint``)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .attack import ScaPreAttack, ScaPreAttackPrompts
from .compare import ScaPreCompare
from .encode import ScaPreConceptEncode
from .erase import ScaPreErase, ScaPreEraseSimple, ScaPreInformax, ScaPreSettings
from .report import ScaPreReport
from .save import ScaPreSaveCheckpoint, ScaPreSaveLoRA

NODES: list[type[io.ComfyNode]] = [
    ScaPreConceptEncode,
    ScaPreInformax,
    ScaPreEraseSimple,
    ScaPreSettings,
    ScaPreErase,
    ScaPreReport,
    ScaPreSaveLoRA,
    ScaPreSaveCheckpoint,
    ScaPreCompare,
    ScaPreAttackPrompts,
    ScaPreAttack,
]


class ScaPreExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ScaPreExtension:
    return ScaPreExtension()
