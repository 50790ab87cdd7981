"""What ScaPre Erase does around the edit inside ComfyUI: room on the compute device before the edit
(in-process, CPU)."""

from __future__ import annotations

import sys


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
