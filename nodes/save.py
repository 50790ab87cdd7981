"""ScaPreSaveLoRA and ScaPreSaveCheckpoint: share an edit, with its provenance and report."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..scapre_core import __version__
from .common import CATEGORY, edit_records, log, progress
from .glue import formats, stack
from .glue.export import write_lora, write_report
from .glue.payloads import METADATA_KEY, provenance


def _records(model):
    records = edit_records(model)
    if not records:
        raise ValueError("this MODEL carries no ScaPre edit: connect the MODEL output of a ScaPre Erase node")
    return records


def _next_path(filename_prefix: str, subfolder: str) -> tuple[str, str]:
    """``(path_without_extension, shown_name)`` of the next free ``<prefix>_NNNNN_`` under
    ``output/<subfolder>/``; ComfyUI refuses prefixes that leave its output folder."""
    prefix = (filename_prefix or "").strip().replace("\\", "/")
    if not prefix:
        raise ValueError("filename_prefix is empty: give a name such as 'scapre_no_cats'")
    if not prefix.startswith(subfolder + "/"):
        prefix = f"{subfolder}/{prefix}"
    output_dir = folder_paths.get_output_directory()
    try:
        folder, filename, counter, _, _ = folder_paths.get_save_image_path(prefix, output_dir)
    except Exception as err:
        raise ValueError(f"cannot save under {filename_prefix!r}: {err}") from None
    base = os.path.join(folder, f"{filename}_{counter:05}_")
    return base, os.path.relpath(base, output_dir)


class ScaPreSaveLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreSaveLoRA",
            display_name="ScaPre Save LoRA",
            category=CATEGORY,
            description="Save the ScaPre edit(s) carried by an edited MODEL as a LoRA in output/loras, loadable "
                        "with LoraLoader on the model the edit was computed on: the original checkpoint, or the "
                        "checkpoint with the same LoRAs loaded first (contents 'all changes' gives one file for "
                        "the original checkpoint). ComfyUI lists output/loras among its LoRA folders: refresh the "
                        "node definitions to see the file; copy it to models/loras for another ComfyUI. A JSON "
                        "report is saved next to it.",
            inputs=[
                io.Model.Input("model", tooltip="An edited MODEL from ScaPre Erase (several edits are summed)."),
                io.String.Input("filename_prefix", default="loras/scapre",
                                tooltip="File name under output/loras/ (a counter is appended)."),
                io.Int.Input("rank", default=0, min=0, max=4096,
                             tooltip="0: exact (full-rank difference keys, float32, larger file). r > 0: rank-r "
                                     "up/down factors in float16; the truncation error is reported."),
                io.Combo.Input("contents", options=list(stack.CONTENTS), default=stack.EDITS, optional=True,
                               tooltip="ScaPre edits: only the edits, for the model they were computed on (with "
                                       "LoRAs loaded before the edit, load the same LoRAs first). all changes: "
                                       "everything the MODEL carries relative to its original UNet weights (LoRAs "
                                       "and merges under the edit included, not a LoRA's text-encoder part), for the "
                                       "original checkpoint; one full-size difference per changed weight at rank 0."),
            ],
            outputs=[io.String.Output("lora_path", display_name="path", tooltip="The saved file, relative to the "
                                      "output folder.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix, rank, contents=stack.EDITS) -> io.NodeOutput:
        records = _records(model)
        if contents not in stack.CONTENTS:
            raise ValueError(f"contents must be one of {list(stack.CONTENTS)}, got {contents!r}")
        diffs, notes = stack.all_changes(model) if contents == stack.ALL_CHANGES else (None, [])
        notes = [*notes, *filter(None, [stack.base_warning(records, contents)])]
        base, shown = _next_path(filename_prefix, "loras")
        matrices, error = write_lora(base + ".safetensors", records, rank, progress(cls.hidden.unique_id, "lora"),
                                     diffs=diffs, contents=contents, model=model)
        mode = "exact" if rank == 0 else f"rank {rank}, relative error {error:.3g}"
        message = f"saved {shown}.safetensors ({matrices} {'matrices' if diffs is None else 'weights'}, {mode})"
        for note in notes:
            log.warning("ScaPreSaveLoRA: %s", note)
        message = "\n".join([message, *(f"warning: {n}" for n in notes)])
        log.info("ScaPreSaveLoRA: %s", message)
        return io.NodeOutput(shown + ".safetensors", ui={"text": [message]})


class ScaPreSaveCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ScaPreSaveCheckpoint",
            display_name="ScaPre Save Checkpoint",
            category=CATEGORY,
            description="Save the edited model, its CLIP and VAE as one checkpoint through ComfyUI's own saver "
                        "(like Save Checkpoint), recording what was erased in the file's metadata and a JSON "
                        "report next to it.",
            inputs=[
                io.Model.Input("model", tooltip="An edited MODEL from ScaPre Erase."),
                io.Clip.Input("clip", tooltip="The CLIP to store in the checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE to store in the checkpoint."),
                io.String.Input("filename_prefix", default="checkpoints/scapre",
                                tooltip="File name under output/checkpoints/ (a counter is appended)."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, filename_prefix) -> io.NodeOutput:
        from comfy_extras.nodes_model_merging import save_checkpoint

        records = _records(model)
        model = formats.bake_compute_edits(model)  # compute-time (fp8) edits into the weights the saver writes
        base, shown = _next_path(filename_prefix, "checkpoints")
        output_dir = folder_paths.get_output_directory()
        prefix = os.path.relpath(base, output_dir).replace(os.sep, "/")[: -len("_00000_")]
        extra = dict(cls.hidden.extra_pnginfo or {})
        # ComfyUI's saver writes each entry as JSON: the same "scapre" entry the pack's other savers write
        extra[METADATA_KEY] = provenance(records, __version__)
        save_checkpoint(model, clip=clip, vae=vae, filename_prefix=prefix, output_dir=output_dir,
                        prompt=cls.hidden.prompt, extra_pnginfo=extra)
        write_report(base + ".scapre.json", records, os.path.basename(base) + ".safetensors")
        message = f"saved {shown}.safetensors"
        log.info("ScaPreSaveCheckpoint: %s", message)
        return io.NodeOutput(ui={"text": [message]})
