"""Smoke tests of the ComfyUI test host: fixtures, in-process node calls, the server, workflow conversion.

They check the harness against a real ComfyUI (``COMFYUI_PATH``), not the pack's math; the pack only has to
register its nodes for the last tests (which skip while it registers none).
"""

from __future__ import annotations

import collections
import logging
import struct
import time

import comfy_support
import pytest

log = logging.getLogger("scapre.comfy_tests")

# attn2 K/V weights per family: {shape: count}, read through model.get_key_patches().
EXPECTED_ATTN2_KV = {
    # 16 cross-attention blocks (input 1,2,4,5,7,8; middle; output 3..11) x (to_k, to_v)
    "sd15": {(320, 768): 10, (640, 768): 10, (1280, 768): 12},
    # Segmind-Vega: input 4,5 (1 block, 640) and 7,8 (2 blocks, 1280), no middle-block transformer,
    # output 0,1,2 (2 blocks, 1280) and 3,4,5 (1 block, 640): 15 blocks x (to_k, to_v) = 30
    "vega": {(640, 2048): 10, (1280, 2048): 20},
}
EXPECTED_CONFIG = {"sd15": ("SD15", "SD1ClipModel"), "vega": ("Segmind_Vega", "SDXLClipModel")}


# ------------------------------------------------------------------------------------------------
# (a) checkpoint fixtures load with ComfyUI
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sd15", "vega"])
def test_checkpoint_fixture_loads(arch, request, comfy_inprocess):
    ckpt = request.getfixturevalue(f"{arch}_ckpt_path")
    header = comfy_support.safetensors_header(ckpt)
    assert header["__metadata__"]["scapre_test_checkpoint"] == arch
    assert ckpt.name in comfy_inprocess.folder_paths.get_filename_list("checkpoints")

    t0 = time.perf_counter()
    if arch == "sd15":  # the session fixture, which later tests share
        model, clip, vae = request.getfixturevalue("sd15_loaded")
    else:  # loaded here and freed at once: about 6 GB that the server tests below should not sit beside
        model, clip, vae = comfy_support.load_checkpoint(ckpt)
    log.info("%s: %d tensors in file, (MODEL, CLIP, VAE) ready in %.1f s", arch, len(header) - 1,
             time.perf_counter() - t0)
    config_name, clip_name = EXPECTED_CONFIG[arch]
    assert type(model.model.model_config).__name__ == config_name
    assert type(clip.cond_stage_model).__name__ == clip_name
    assert vae is not None

    shapes = comfy_support.attn2_kv_shapes(model)
    if arch != "sd15":
        del model, clip, vae
        comfy_support.free_models()
    assert dict(collections.Counter(shapes.values())) == EXPECTED_ATTN2_KV[arch]
    to_k = [k for k in shapes if k.endswith("to_k.weight")]
    assert len(to_k) == len(shapes) // 2
    assert all(k.replace("to_k", "to_v") in shapes for k in to_k)
    log.info("%s: %d attn2 K/V matrices %s", arch, len(shapes), EXPECTED_ATTN2_KV[arch])


# ------------------------------------------------------------------------------------------------
# in-process node calls (V1 and V3 styles)
# ------------------------------------------------------------------------------------------------

def test_run_node_v1_and_v3(comfy_inprocess, sd15_loaded):
    import torch

    (latent,) = comfy_inprocess.run_node("EmptyLatentImage", width=64, height=64, batch_size=1)  # V1
    assert tuple(latent["samples"].shape) == (1, 4, 8, 8)

    add = comfy_inprocess.node_class("LatentAdd")  # V3 in both 0.3.64 and 0.8.0
    assert comfy_support.is_v3_node(add)
    (summed,) = comfy_inprocess.run_node("LatentAdd", samples1=latent, samples2=latent)
    assert torch.equal(summed["samples"], latent["samples"] * 2)

    model = sd15_loaded[0]
    (patched,) = comfy_inprocess.run_node("UNetCrossAttentionMultiply", model=model,
                                          q=1.0, k=0.5, v=1.0, out=1.0)
    assert patched is not model and patched.model is model.model  # a clone sharing the module
    kv = comfy_support.attn2_kv_shapes(model)
    patched_keys = {k for k in patched.patches if k in kv}
    assert patched_keys == set(kv)  # to_k and to_v weights of every attn2 block got a patch
    assert not any(k in model.patches for k in kv)  # the input model is untouched


# ------------------------------------------------------------------------------------------------
# (b) the server starts and lists core nodes
# ------------------------------------------------------------------------------------------------

def test_server_lists_core_nodes(comfy_server, sd15_ckpt_path, comfy_version):
    info = comfy_server.object_info()
    for node_id in ("KSampler", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEDecode", "SaveImage"):
        assert node_id in info, node_id
    ckpts = comfy_support.combo_options(info["CheckpointLoaderSimple"], "ckpt_name")
    assert sd15_ckpt_path.name in ckpts
    log.info("ComfyUI %s at %s: %d node types, started in %.1f s", comfy_version, comfy_server.base_url,
             len(info), comfy_server.startup_seconds)
    comfy_server.interrupt()  # idle: a no-op that must still answer
    assert "system" in comfy_server.get("/system_stats")


# ------------------------------------------------------------------------------------------------
# (c) UI workflow -> API prompt -> run over HTTP
# ------------------------------------------------------------------------------------------------

def core_ui_workflow(ckpt_name: str) -> dict:
    """A frontend-format workflow of core nodes, as the UI saves it (ids, slots, widgets_values, links).

    Checkpoint -> 2x CLIPTextEncode -> EmptyLatentImage 64x64 -> (bypassed LatentUpscaleBy) -> KSampler 1 step
    -> VAEDecode (VAE through a Reroute) -> SaveImage, plus a Note and a muted PreviewImage.
    """
    def node(node_id, node_type, inputs=(), outputs=(), widgets=(), mode=0):
        return {"id": node_id, "type": node_type, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0,
                "mode": mode, "properties": {"Node name for S&R": node_type},
                "inputs": [{"name": n, "type": t, "link": lk} for n, t, lk in inputs],
                "outputs": [{"name": n, "type": t, "links": lks, "slot_index": i}
                            for i, (n, t, lks) in enumerate(outputs)],
                "widgets_values": list(widgets)}

    nodes = [
        node(4, "CheckpointLoaderSimple", outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [3, 5]),
                                                   ("VAE", "VAE", [8])], widgets=[ckpt_name]),
        node(6, "CLIPTextEncode", [("clip", "CLIP", 3)], [("CONDITIONING", "CONDITIONING", [4])],
             ["a photo of a cat"]),
        node(7, "CLIPTextEncode", [("clip", "CLIP", 5)], [("CONDITIONING", "CONDITIONING", [6])], ["blurry"]),
        node(5, "EmptyLatentImage", outputs=[("LATENT", "LATENT", [11])], widgets=[64, 64, 1]),
        node(12, "LatentUpscaleBy", [("samples", "LATENT", 11)], [("LATENT", "LATENT", [2])],
             ["nearest-exact", 2.0], mode=4),
        node(3, "KSampler",
             [("model", "MODEL", 1), ("positive", "CONDITIONING", 4), ("negative", "CONDITIONING", 6),
              ("latent_image", "LATENT", 2)],
             [("LATENT", "LATENT", [7])], [42, "randomize", 1, 2.0, "euler", "normal", 1.0]),
        node(10, "Reroute", [("", "*", 8)], [("", "VAE", [9])]),
        node(8, "VAEDecode", [("samples", "LATENT", 7), ("vae", "VAE", 9)], [("IMAGE", "IMAGE", [10, 12])]),
        node(9, "SaveImage", [("images", "IMAGE", 10)], widgets=["scapre_smoke"]),
        node(11, "PreviewImage", [("images", "IMAGE", 12)], mode=2),
        node(13, "Note", widgets=["core-only smoke workflow"]),
    ]
    links = [
        [1, 4, 0, 3, 0, "MODEL"], [2, 12, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
        [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
        [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 10, 0, "VAE"], [9, 10, 0, 8, 1, "VAE"],
        [10, 8, 0, 9, 0, "IMAGE"], [11, 5, 0, 12, 0, "LATENT"], [12, 8, 0, 11, 0, "IMAGE"],
    ]
    return {"last_node_id": 13, "last_link_id": 12, "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def expected_api_prompt(ckpt_name: str) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 42, "steps": 1, "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "scapre_smoke"}},
    }


def test_ui_workflow_conversion(comfy_server, sd15_ckpt_path):
    info = comfy_server.object_info()
    prompt = comfy_support.ui_workflow_to_api(core_ui_workflow(sd15_ckpt_path.name), info)
    assert prompt == expected_api_prompt(sd15_ckpt_path.name)

    with pytest.raises(ValueError, match="NoSuchNode"):
        comfy_support.ui_workflow_to_api({"nodes": [{"id": 1, "type": "NoSuchNode"}], "links": []}, info)


def test_core_workflow_runs_over_http(comfy_server, sd15_ckpt_path):
    workflow = core_ui_workflow(sd15_ckpt_path.name)
    prompt = comfy_support.ui_workflow_to_api(workflow, comfy_server.object_info())
    t0 = time.perf_counter()
    entry = comfy_server.run(prompt, timeout=600)
    elapsed = time.perf_counter() - t0
    log.info("core SD1.5 workflow (load + 1 step 64x64 + decode + save) ran in %.1f s", elapsed)

    (image,) = comfy_server.output_files(entry)
    assert image.is_file() and image.parent == comfy_server.output_dir
    with open(image, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (64, 64)

    again = dict(prompt, **{"3": {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "seed": 43}}})
    t0 = time.perf_counter()
    comfy_server.run(again, timeout=600)  # model cached in the server: sampling + decode only
    log.info("same workflow, new seed (model already loaded) ran in %.1f s", time.perf_counter() - t0)
    comfy_server.free()


# ------------------------------------------------------------------------------------------------
# (d) the pack's nodes, once registered
# ------------------------------------------------------------------------------------------------

def _pack_import_errors(log_text: str) -> list[str]:
    lines = log_text.splitlines()
    return [line for line in lines if comfy_support.PACK_LINK_NAME in line
            and ("IMPORT FAILED" in line or "Cannot import" in line or "Error" in line)]


def test_pack_nodes_registered_on_server(comfy_server, record_property):
    problem = comfy_support.pack_problem()
    if problem:
        pytest.skip(problem)
    ids = comfy_server.node_ids(comfy_support.NODE_ID_PREFIX)
    errors = _pack_import_errors(comfy_server.log_text())
    assert not errors, f"ComfyUI could not import the pack:\n{comfy_server.log_tail()}"
    if not ids:
        pytest.skip("the pack loaded but registers no ScaPre* nodes yet")
    record_property("scapre_node_ids", ",".join(ids))
    log.info("ScaPre nodes on the server: %s", ids)
    info = comfy_server.object_info()
    for node_id in ids:
        assert info[node_id]["category"], node_id


def test_pack_nodes_registered_in_process(comfy_inprocess, comfy_server):
    if comfy_inprocess.pack_problem and not comfy_inprocess.pack_loaded:
        if comfy_support.pack_problem():
            pytest.skip(comfy_inprocess.pack_problem)
        pytest.fail(comfy_inprocess.pack_problem)
    ids = [i for i in comfy_inprocess.pack_node_ids if i.startswith(comfy_support.NODE_ID_PREFIX)]
    if not ids:
        pytest.skip("the pack loaded but registers no ScaPre* nodes yet")
    assert sorted(ids) == comfy_server.node_ids(comfy_support.NODE_ID_PREFIX)
    assert comfy_inprocess.pack_module() is not None
