"""ScaPreReport: the edit report as a figure and a markdown table."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..scapre_core.report import EditReport
from ..scapre_core.survival import weights_markdown
from .common import CATEGORY, Report, log


class ScaPreReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreReport",
            display_name="ScaPre Report",
            category=CATEGORY,
            description="Show what an edit did before sampling: efficacy of every erased prompt, drift of probes and "
                        "preserved prompts, where in the UNet the weights changed, and how much of the edit the "
                        "weights the model samples with carry (its weight format: fp8, GGUF, ...). Efficacy is not "
                        "a verdict on the pictures (it did not predict forgetting in the miniature worlds): count "
                        "pictures with ScaPre Compare.",
            inputs=[Report.Input("report", tooltip="The report output of ScaPre Erase.")],
            outputs=[
                io.Image.Output("figure", display_name="figure",
                                tooltip="The report as an image (connect Preview Image or Save Image)."),
                io.String.Output("table", display_name="table",
                                 tooltip="The report as a markdown table (all figures, worst first)."),
            ],
        )

    @classmethod
    def execute(cls, report) -> io.NodeOutput:
        if not isinstance(report, EditReport):
            raise ValueError("report must come from the report output of a ScaPre Erase node")
        table = report.to_markdown() + weights_markdown(report.info.get("weights"), report.info.get("computed_on"),
                                                         patches=report.info.get("patches"))
        from .glue.figure import FigureUnavailable, render

        try:
            image = torch.from_numpy(render(report)).unsqueeze(0)
        except FigureUnavailable as err:
            log.warning("ScaPreReport: %s", err)
            table = f"> figure unavailable: {err}\n\n" + table
            image = torch.full((1, 64, 512, 3), 0.5)
        return io.NodeOutput(image, table, ui={"text": [table]})
