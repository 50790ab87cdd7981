"""The default float32 edit, saved, equals the float64 edit (issue: exact by default).

On both random-weight fixtures (SD1.5 and the SDXL-family Segmind-Vega) with ComfyUI's own text
embeddings: erase with the node's defaults (float32), save, read the file back, and compare its
cross-attention weights with ``scapre_core.erase`` in float64 on the same original weights and encodings.

SD1.5 is saved as a whole checkpoint (ScaPre Save Checkpoint). Vega is saved as the exact LoRA (ScaPre
Save LoRA, rank 0: the edit itself as ``.diff`` keys), since a whole SDXL-family checkpoint is 6.6 GB in
float32 on the CPU and takes minutes to write; that its weights are the patched ones is the saver's own
test (``test_nodes.py``).

Tolerance, stated: ``1e-4 * ||W64 - W0||`` (the float32 edit) plus the rounding of the saved weight to
its storage dtype, ``2^-p * ||W64||`` with ``p`` the dtype's significand bits (24 for float32, 11 for
float16, 8 for bfloat16).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

SIGNIFICAND_BITS = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}  # float64: 53


def _core(c):
    return sys.modules[c.pack_module().__name__ + ".scapre_core"]


def _check_saved_edit(c, loaded, concepts_text: str, prefix: str, saver: str) -> dict[str, float]:
    import safetensors

    model, clip, vae = loaded
    core = _core(c)
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts=concepts_text, concept_type="object",
                             expand_templates=False, templates="", guide="", preserve="", probes="")
    defaults = core.ScaPreConfig().to_dict()
    (edited, _report) = c.run_node("ScaPreErase", model=model, concepts=concepts, edit="keys and values",
                                   **defaults)[:2]
    keys = sorted(edited.patches)
    entries = model.get_key_patches("diffusion_model.")
    originals = {k: entries[k][0][0].detach().to(torch.float64).cpu().clone() for k in keys}
    ref = core.erase(originals, concepts.erase, core.ScaPreConfig(precision="float64"))

    if saver == "checkpoint":
        c.run_node("ScaPreSaveCheckpoint", model=edited, clip=clip, vae=vae, filename_prefix=f"checkpoints/{prefix}")
        folder, read = "checkpoints", lambda fh, k: fh.get_tensor("model." + k)
    else:  # the exact LoRA: the saved tensor is the edit; the weight it gives is original + edit
        c.run_node("ScaPreSaveLoRA", model=edited, filename_prefix=f"loras/{prefix}", rank=0)
        folder = "loras"

        lora_name = sys.modules[c.pack_module().__name__ + ".nodes.glue.lora_file"].lora_name

        def read(fh, k):
            return originals[k] + fh.get_tensor(lora_name(k) + ".diff").to(torch.float64)

    (path,) = sorted((Path(c.folder_paths.get_output_directory()) / folder).glob(f"{prefix}_*.safetensors"))
    errors = {}
    with safetensors.safe_open(str(path), framework="pt") as fh:
        for k in keys:
            saved = read(fh, k)
            bits = SIGNIFICAND_BITS.get(saved.dtype, 53)
            edit_norm = float((ref[k] - originals[k]).norm())
            allowed = 1e-4 * edit_norm + 2.0**-bits * float(ref[k].norm())
            err = float((saved.to(torch.float64) - ref[k]).norm())
            assert err <= allowed, f"{k}: |saved - W64| = {err:.3e} > {allowed:.3e} ({saved.dtype})"
            errors[k] = err / edit_norm
    path.unlink()  # several GB on the CPU: do not keep it around for the rest of the session
    return errors


def test_saved_sd15_edit_equals_float64_edit(scapre_nodes, sd15_loaded):
    errors = _check_saved_edit(scapre_nodes, sd15_loaded, "cat, golden retriever, Eiffel Tower", "exact_sd15",
                               "checkpoint")
    assert len(errors) == 32


def test_saved_sdxl_family_edit_equals_float64_edit(scapre_nodes, vega_loaded):
    errors = _check_saved_edit(scapre_nodes, vega_loaded, "Van Gogh, Claude Monet, a red car", "exact_vega",
                               "lora")
    assert len(errors) == 30
