"""How much of a ScaPre edit survives in the weights the model samples with, per weight format and per
way ComfyUI can apply a patch (docs/model-formats.md). Runs inside a ComfyUI (CPU) on the random SD1.5 test
checkpoint's UNet (``--unet tiny``: the format tests' small SD1.5-class UNet) in UNet-only files of each
format (``tests/comfy/formats_support.py``, built into the test cache on first use).

For every format (float32, float16, bfloat16, float8_e4m3fn, float8_e5m2, scaled fp8, GGUF Q8_0, GGUF Q4_K)
the edit is computed once by ScaPre Erase on that model, then applied each way, and the weights the layers
multiply with are read back by running each cross-attention key/value layer on the identity matrix
(``formats_support.sampled_weights``), in each compute dtype (float32, float16, bfloat16; set with
``set_model_compute_dtype`` as ComfyUI's ModelComputeDtype node does):

* ``patch``: ``add_patches`` and a full load, ComfyUI's default: the edit is added in float32 and rounded
  into the storage dtype (stochastic rounding into fp8; a requantization with a new scale and stochastic
  rounding for 0.8.0's scaled fp8; ComfyUI-GGUF keeps it beside the blocks and adds it when it dequantizes).
* ``lowvram``: ``add_patches`` with the model loaded in lowvram mode (``LowVramPatch``): the patch is
  applied when the layer runs, to the weight cast to the compute dtype.
* ``function``: a weight function (``add_weight_wrapper``; this pack's ``ComputeTimeEdit``), applied when
  the layer runs, to the weight cast (and dequantized) to the compute dtype.
* ``resaved``: the edited weights written into the same format again (round to nearest; GGUF blocks
  quantized again), as saving an edited float checkpoint and loading or converting it back gives. Computed
  from the weights, not through a ComfyUI load.

Per cell: surviving fraction ``<D, C> / ||C||^2`` and error ``||D - C|| / ||C||`` pooled over the
matrices (``scapre_core/survival.py``), with ``D`` the change in the sampled weights and ``C`` the edit as
computed (``--scale`` also measures ``scale * C``, a smaller edit, against the same rounding). The last
column is what ScaPre Erase chose and printed. Usage (several minutes on 2 CPU cores)::

    COMFYUI_PATH=~/.cache/scapre-hosts/0.8.0/ComfyUI SCAPRE_COMFY_PACKS=../shared/comfyui-packs \\
        ~/.cache/scapre-hosts/0.8.0/venv/bin/python benchmarks/bench_formats.py --out /tmp/formats.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfy"))
import comfy_support  # noqa: E402
import formats_support  # noqa: E402

FORMATS = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "scaled_fp8", "Q8_0", "Q4_K")
COMPUTE = ("float32", "float16", "bfloat16")
METHODS = ("patch", "lowvram", "function", "resaved")
CONCEPTS = "cat, golden retriever"
log = logging.getLogger("bench_formats")


def load_unet(c, fmt: str, files: dict, gguf_nodes: Path):
    """The UNet of ``fmt``; ``files``: kind (formats_support.UNET_KINDS) -> file in the diffusion_models folder."""
    import comfy.sd
    import torch

    if fmt in ("Q8_0", "Q4_K"):
        loader = formats_support.load_gguf_pack(c, gguf_nodes)
        return loader().load_unet(files[fmt].name)[0]
    if fmt == "scaled_fp8":
        return comfy.sd.load_diffusion_model(str(files["scaled_fp8"]))
    return comfy.sd.load_diffusion_model(str(files["fp16"]), model_options={"dtype": getattr(torch, fmt)})


def resaved(fmt: str, app, weight, change, c):
    """The sampled weights after writing ``weight + change`` into the same format (round to nearest)."""
    import gguf
    import numpy as np
    import torch

    def requantize(w):
        arr = w.numpy().astype(np.float32)
        qtype = gguf.GGMLQuantizationType[fmt]
        blocks = formats_support.quantize_q4_k(arr) if fmt == "Q4_K" else gguf.quants.quantize(arr, qtype)
        return torch.from_numpy(gguf.quants.dequantize(blocks, qtype).astype(np.float32))

    if fmt in ("Q8_0", "Q4_K"):
        return weight.to(c), requantize(weight + change).to(c)
    if app.format.kind in ("scaled fp8", "quantized"):
        scale = app.format.scale if app.format.scale is not None else float(app.stored._params.scale)
        q = ((weight + change) / scale).to(torch.float8_e4m3fn).float() * scale
        return weight.to(c), q.to(c)
    storage = app.format.storage
    return weight.to(storage).to(c), (weight + change).to(storage).to(c)


def measure(c, fmt: str, files: dict, clip, gguf_nodes: Path, scales: list[float]) -> dict:
    import comfy.model_management as mm
    import torch

    pack = sys.modules[c.pack_module().__name__ + ".nodes.glue.formats"]
    survival = sys.modules[c.pack_module().__name__ + ".scapre_core.survival"]
    model = load_unet(c, fmt, files, gguf_nodes)
    (concepts,) = c.run_node("ScaPreConceptEncode", clip=clip, concepts=CONCEPTS, concept_type="object",
                             expand_templates=False, templates="", guide="", preserve="", probes="")
    t0 = time.perf_counter()
    edited, report = c.run_node("ScaPreEraseSimple", model=model, concepts=concepts, preset="custom", strength=1.0,
                                seed=0)[:2]
    seconds = time.perf_counter() - t0
    record = edited.model_options["scapre_edits"][-1]
    stack = sys.modules[c.pack_module().__name__ + ".nodes.glue.stack"]
    changes = stack.edit_changes(edited, (record,))
    diffs = {k: changes[k] for k in changes}  # every change as a matrix (compact ones made dense)
    keys = sorted(diffs)
    entries = pack.key_entries(model, keys)
    apps = pack.plan(model, entries)
    originals = {k: pack.read_original(entries[k]) for k in keys}
    chosen = report.info["weights"]
    result = {"format": chosen["format"], "matrices": len(keys), "erase_seconds": round(seconds, 2),
              "chosen": chosen["methods"],
              "printed": {"surviving": chosen["surviving"], "error": chosen["error"],
                          "compute_dtype": chosen["compute_dtype"]},
              "rel_change": float(sum(float(d.pow(2).sum()) for d in diffs.values()) ** 0.5
                                  / sum(float(originals[k].pow(2).sum()) for k in keys) ** 0.5),
              "cells": {}}
    for scale in scales:
        intended = {k: diffs[k] * scale for k in keys}
        for cname in COMPUTE:
            cdt = getattr(torch, cname)
            base = model.clone()
            base.set_model_compute_dtype(cdt)
            before = formats_support.sampled_weights(base, keys, cdt)
            for method in METHODS:
                if method == "resaved":
                    pairs = {k: resaved(fmt, apps[k], originals[k], intended[k], cdt) for k in keys}
                    meter = survival.SurvivalMeter()
                    for k in keys:
                        meter.add(k, intended[k], *pairs[k])
                    pooled = meter.pooled()
                else:
                    clone = base.clone()
                    if method == "function":
                        for k in keys:
                            fmt_k = apps[k].format
                            scale_k = fmt_k.scale if fmt_k.kind == "scaled fp8" else None
                            clone.add_weight_wrapper(k, pack.ComputeTimeEdit(intended[k], cdt, scale_k))
                    else:
                        assert set(clone.add_patches({k: (intended[k],) for k in keys}, 1.0, 1.0)) == set(keys)
                    with lowvram(clone) if method == "lowvram" else contextlib.nullcontext():
                        after = formats_support.sampled_weights(clone, keys, cdt, load=method != "lowvram")
                    meter = survival.SurvivalMeter()
                    for k in keys:
                        meter.add(k, intended[k], before[k], after[k])
                    pooled = meter.pooled()
                    del clone
                result["cells"][f"{scale:g}|{cname}|{method}"] = [pooled.fraction, pooled.error]
                log.info("%s scale %g %s %s: surviving %.4f error %.4g", fmt, scale, cname, method,
                         pooled.fraction, pooled.error)
            del base
    del model, edited
    mm.unload_all_models()
    return result


@contextlib.contextmanager
def lowvram(model):
    """``model`` loaded in ComfyUI's lowvram mode: every layer patched when it runs (LowVramPatch)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    mm.unload_all_models()
    for module in model.model.modules():  # a full load with a forced compute dtype leaves layers marked as
        comfy.model_patcher.wipe_lowvram_weight(module)  # lowvram'd, and lowvram loads would then skip them
    model.patch_model(device_to=model.load_device, lowvram_model_memory=1, load_weights=True,
                      force_patch_weights=False)
    try:
        yield model
    finally:
        model.unpatch_model(model.offload_device)


def table(results: dict, scales: list[float]) -> str:
    """One markdown table per edit scale: a row per format and compute dtype, a column per method, each
    cell ``surviving fraction / error``; the last column is what ScaPre Erase chose and printed."""
    lines = []
    for scale in scales:
        matrices = sorted({r.get("matrices", 32) for r in results.values()})
        lines += ["", f"edit x{scale:g}: surviving fraction / error, pooled over the "
                      f"{'/'.join(map(str, matrices))} matrices", "",
                  "| format | compute | " + " | ".join(METHODS) + " | ScaPre Erase chose, printed |",
                  "|---|---|" + "---:|" * (len(METHODS) + 1)]
        for r in results.values():
            p = r["printed"]
            for c in COMPUTE:
                cells = [r["cells"].get(f"{scale:g}|{c}|{m}") for m in METHODS]
                shown = " | ".join("-" if v is None else f"{v[0]:.4f} / {_pct(v[1])}" for v in cells)
                chosen = (f"{r['chosen']}: {p['surviving']:.4f} / {_pct(p['error'])}"
                          if c == p["compute_dtype"] and scale == 1.0 else "")
                lines.append(f"| {r['format']} | {c} | {shown} | {chosen} |")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.2g} %"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0, 0.1],
                        help="measure these multiples of the edit (default 1 and 0.1)")
    parser.add_argument("--unet", choices=("sd15", "tiny"), default="sd15",
                        help="sd15: the random SD1.5 test checkpoint's UNet (32 key/value matrices, default); "
                             "tiny: the format tests' small SD1.5-class UNet (14 matrices, quicker)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="print the tables of these earlier --out files (one run per format) instead")
    args = parser.parse_args(argv)
    if args.merge:
        runs = [json.loads(p.read_text()) for p in args.merge]
        merged = {k: v for run in runs for k, v in run["results"].items()}
        print(table(merged, sorted({float(k.split("|")[0]) for r in merged.values() for k in r["cells"]},
                                   reverse=True)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("comfy", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    comfy_path = comfy_support.comfyui_path()
    cache = comfy_support.cache_dir()
    python = sys.executable
    source = comfy_support.ensure_random_checkpoint("sd15", comfy_path=comfy_path, python=python, directory=cache)
    kinds = {"float16": "fp16", "bfloat16": "fp16", "float32": "fp16", "float8_e4m3fn": "fp16",
             "float8_e5m2": "fp16", "scaled_fp8": "scaled_fp8", "Q8_0": "Q8_0", "Q4_K": "Q4_K"}
    needed = sorted({kinds[fmt] for fmt in args.formats})
    if args.unet == "tiny":
        files = formats_support.ensure_tiny_unet_files(needed, comfy_path=comfy_path, python=python, directory=cache)
    else:
        files = {kind: formats_support.ensure_unet_file(kind, source, comfy_path=comfy_path, python=python,
                                                        directory=cache) for kind in needed}
    work = Path(tempfile.mkdtemp(prefix="bench_formats_"))
    c = comfy_support.import_comfy_inprocess(comfy_path, output_dir=work / "output", temp_dir=work / "temp",
                                             model_dirs={"checkpoints": [cache], "diffusion_models": [cache]},
                                             pack_parent=work / "custom_nodes")
    results = {}
    with torch.inference_mode():
        import comfy.sd

        clip = comfy.sd.load_checkpoint_guess_config(str(source), output_vae=False, output_clip=True,
                                                     output_model=False)[1]
        for fmt in args.formats:
            results[fmt] = measure(c, fmt, files, clip, work / "gguf_nodes", args.scale)
    print(table(results, args.scale))
    if args.out is not None:
        args.out.write_text(json.dumps({"comfyui": c.version, "unet": args.unet, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
