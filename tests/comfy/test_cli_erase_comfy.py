"""``python -m comfyui-scapre erase`` against a real ComfyUI on the random SD1.5 and SDXL-family checkpoints: the saved
edit equals the nodes' edit; Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import pytest
from cli_support import (
    CONCEPTS,
    CUSTOM_NODES,
    MODULE,
    _assert_same_as_lora,
    _cli,
    _core,
    _ctrl_c_as_at_a_terminal,
    _env,
    _node_edit,
)

#: Each test runs the command line, which loads a checkpoint in a process of its own: tests/run_all.sh runs them
#: apart from the in-process SD1.5 model (with the servers' tests; the SDXL-family one with the sdxl tests), and a
#: test that needs the model in-process too loads it after the command (``sd15_own``), not beside it.
pytestmark = pytest.mark.cli


# ------------------------------------------------------------------------------------------------
# erase
# ------------------------------------------------------------------------------------------------

def test_erase_lora_equals_the_node_edit_sd15(request, scapre_nodes, sd15_ckpt_path, comfy_path, comfy_python,
                                              tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text(CONCEPTS)
    lora = tmp_path / "no_cats.safetensors"
    result = _cli(comfy_path, comfy_python, "erase", str(sd15_ckpt_path), "--concepts", str(concepts),
                  "--lora", str(lora), "--preset", "artists", "--cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote LoRA {lora} (32 matrices, exact)" in result.stdout
    assert "erase" in result.stderr  # the progress bar
    model, clip, _ = request.getfixturevalue("sd15_own")  # after the command: one SD1.5 in RAM at a time
    _, diffs = _node_edit(scapre_nodes, model, clip, preset="artists")
    _assert_same_as_lora(scapre_nodes, diffs, lora)
    report = json.loads(lora.with_name("no_cats.scapre.json").read_text())
    assert report["edits"][0]["concepts"] == ["cat", "golden retriever"]
    assert report["edits"][0]["config"] == _core(scapre_nodes).presets.preset_config("artists").to_dict()
    weights = report["edits"][0]["report"]["info"]["weights"]  # the model's format and the surviving fraction
    assert (weights["format"], weights["methods"]) == ("float32", "patch")
    assert weights["surviving"] == pytest.approx(1.0, abs=1e-6) and weights["error"] < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["concepts.txt", "no_cats.safetensors", "no_cats.scapre.json"]


def test_erase_checkpoint_from_a_csv_with_settings_equals_the_node_edit(request, scapre_nodes, sd15_ckpt_path,
                                                                        comfy_path, comfy_python, tmp_path):
    """A paper CSV's class column as the concepts and a settings JSON over a preset; the checkpoint holds
    original + edit on exactly the K/V weights and the original everywhere else."""
    import torch
    from safetensors import safe_open

    csv_path = tmp_path / "classes.csv"
    csv_path.write_text("case_number,prompt,class,evaluation_seed\n0,an image of a cat,cat,1\n"
                        "1,a photo of a cat,cat,2\n2,an image of a golden retriever,golden retriever,3\n")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"p": 6.0, "ased": True, "edit": "values only"}))
    out = tmp_path / "edited.safetensors"
    # no --cpu: on this machine without a GPU the command picks the CPU itself and says so
    result = _cli(comfy_path, comfy_python, "erase", str(sd15_ckpt_path), "--concepts", str(csv_path),
                  "--out", str(out), "--preset", "many-objects", "--settings", str(settings), "--seed", "4", "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no GPU found: running on the CPU" in result.stderr
    assert "erase:" not in result.stderr and "%|" not in result.stderr  # -q: no progress bars
    assert "ScaPre Erase:" not in result.stderr  # nor our info lines (ComfyUI's own warnings may remain)
    model, clip, _ = request.getfixturevalue("sd15_own")  # after the command: one SD1.5 in RAM at a time
    values = {**_core(scapre_nodes).presets.preset_config("many-objects", 1.0, 4).to_dict(), "p": 6.0, "ased": True}
    _, diffs = _node_edit(scapre_nodes, model, clip, settings={"edit": "values only", **values})
    assert len(diffs) == 16 and all(k.endswith("to_v.weight") for k in diffs)
    entries = model.get_key_patches("diffusion_model.")
    with safe_open(str(sd15_ckpt_path), "pt") as src:
        source_dtypes = {k: src.get_slice(k).get_dtype() for k in src.keys()}
    with safe_open(str(out), "pt") as fh:
        recorded = json.loads(fh.metadata()["scapre"])
        assert recorded["format"] == "scapre-metadata/1" and recorded["concepts"] == ["cat", "golden retriever"]
        assert recorded["edits"][0]["used"]["source"] == "command line"
        saved_dtypes = {k: fh.get_slice(k).get_dtype() for k in fh.keys()}
        for key, diff in diffs.items():
            original = entries[key][0][0].float()
            saved = fh.get_tensor("model." + key)
            assert saved.dtype == torch.float16, key  # the checkpoint's own dtype, not ComfyUI's CPU float32
            assert torch.equal(saved, (original + diff).half()), key
        for key in [k.replace("to_v", "to_k") for k in list(diffs)[:2]] + [next(iter(diffs)).replace("to_v", "to_q")]:
            assert torch.equal(fh.get_tensor("model." + key).float(), entries[key][0][0].float()), key
    shared = set(source_dtypes) & set(saved_dtypes)
    assert len(shared) > 0.9 * len(source_dtypes)
    assert [k for k in shared if source_dtypes[k] != saved_dtypes[k]] == []
    assert out.stat().st_size < 1.1 * sd15_ckpt_path.stat().st_size  # 2.0 GiB in, not 4 GiB of float32 out
    out.unlink()


def test_erase_lora_on_the_sdxl_family(request, scapre_nodes, vega_ckpt_path, comfy_path, comfy_python, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text(CONCEPTS)
    lora = tmp_path / "vega.safetensors"
    result = _cli(comfy_path, comfy_python, "erase", str(vega_ckpt_path), "--concepts", str(concepts),
                  "--lora", str(lora), "--preset", "explicit", "-q", "--cpu")  # the CLI first: one SDXL in RAM
    assert result.returncode == 0, result.stderr[-3000:]
    model, clip, _ = request.getfixturevalue("vega_loaded")
    _, diffs = _node_edit(scapre_nodes, model, clip, preset="explicit")
    assert len(diffs) == 30
    _assert_same_as_lora(scapre_nodes, diffs, lora)


def test_ctrl_c_leaves_no_file(sd15_ckpt_path, comfy_path, comfy_python, tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text(CONCEPTS)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([comfy_python, "-m", MODULE, "erase", str(sd15_ckpt_path), "--concepts", str(concepts),
                             "--out", str(out_dir / "c.safetensors"), "--lora", str(out_dir / "l.safetensors"),
                             "--cpu"], cwd=CUSTOM_NODES, env=_env(comfy_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_at_a_terminal)
    seen = bytearray()
    started = threading.Event()

    def read() -> None:
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            seen.extend(chunk)
            if b"erase:" in seen:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(900), seen.decode(errors="replace")[-3000:]
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends; the edit is under way, nothing is written yet
    code = proc.wait(600)
    reader.join(10)
    text = seen.decode(errors="replace")
    assert code == 130, text[-3000:]
    assert text.strip().splitlines()[-1].endswith("interrupted; no partial file was left")
    assert list(out_dir.iterdir()) == []
