"""What ScaPre Erase does around the edit inside ComfyUI (in-process, CPU): room on the compute device before
the edit; a node-saved checkpoint records what it erased, read back by ``evaluate``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def _edit_module(c):
    return sys.modules[c.pack_module().__name__ + ".nodes.glue.edit"]


def test_room_is_asked_of_comfyui_on_a_gpu_only(scapre_nodes, monkeypatch):
    import comfy.model_management as mm
    import torch

    edit = _edit_module(scapre_nodes)
    calls = []
    monkeypatch.setattr(mm, "free_memory", lambda required, device, keep_loaded=(): calls.append((required, device)))
    edit.make_room(torch.device("cuda", 0), 123_456)
    edit.make_room(torch.device("cpu"), 123_456)
    assert calls == [(123_456, torch.device("cuda", 0))]


def test_erase_node_asks_for_its_working_memory_first(scapre_nodes, sd15_loaded, monkeypatch):
    c = scapre_nodes
    edit = _edit_module(c)
    model, clip, _ = sd15_loaded
    asked = []
    monkeypatch.setattr(edit, "make_room", lambda device, required: asked.append((device, required)))
    few = c.run_node("ScaPreConceptEncode", clip=clip, concepts="cat", concept_type="object",
                     expand_templates=False, templates="", guide="", preserve="", probes="")[0]
    many = c.run_node("ScaPreConceptEncode", clip=clip, concepts="cat, dog, a red car, Van Gogh",
                      concept_type="object", expand_templates=False, templates="", guide="", preserve="",
                      probes="tiger, a house")[0]
    for concepts in (few, many):
        c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="explicit", strength=1.0, seed=0)
    (device, small), (_, large) = asked
    assert device == model.load_device
    rows, width = 1280, 768  # SD1.5's widest key/value matrix, in float32
    assert small > 10 * rows * width * 4
    assert large > small  # more prompts to encode and to report on


def test_evaluate_reads_what_a_node_saved_checkpoint_records(scapre_nodes, sd15_loaded, tmp_path):
    """ScaPre Save Checkpoint through ComfyUI's own saver, then ``evaluate``'s planning on that file: the erased
    concept is read from it, so its prompts count as erased (before 0.3.0 every prompt counted as kept)."""
    c = scapre_nodes
    model, clip, vae = sd15_loaded
    pack = c.pack_module().__name__
    # the command line is not imported when ComfyUI loads the pack: import it from the pack as ComfyUI named it
    cli = importlib.import_module(pack + ".nodes.cli.cli")
    evaluate = importlib.import_module(pack + ".nodes.cli.evaluate_command")
    concepts = c.run_node("ScaPreConceptEncode", clip=clip, concepts="cat", concept_type="object",
                          expand_templates=False, templates="", guide="", preserve="", probes="")[0]
    edited = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="explicit", strength=1.0,
                        seed=0)[0]
    c.run_node("ScaPreSaveCheckpoint", model=edited, clip=clip, vae=vae, filename_prefix="checkpoints/evaluate_me")
    folder = Path(c.folder_paths.get_output_directory()) / "checkpoints"
    (saved,) = sorted(folder.glob("evaluate_me_*.safetensors"))
    try:
        prompts = tmp_path / "prompts.csv"
        prompts.write_text("case_number,prompt,class,evaluation_seed\n0,a photo of a cat,cat,1\n"
                           "1,a photo of a dog,dog,2\n")
        args = cli.build_parser().parse_args(["evaluate", "--server", "http://127.0.0.1:1", "--base", "base",
                                              "--edit", str(saved), "--prompts", str(prompts),
                                              "--out", str(tmp_path / "out")])
        plan = evaluate.prepare(args)
        assert plan.erased == ("cat",) and plan.edit_kind == "checkpoint"
        assert [evaluate.kind_of(row, plan.erased) for row in plan.rows] == ["erased", "kept"]
    finally:
        saved.unlink()  # 4 GiB of float32 weights on the CPU
