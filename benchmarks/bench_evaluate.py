"""Throughput of ``python -m comfyui-scapre evaluate``: images per minute on the first server alone, then on all
of them, over the same prompts (fresh result folders, so nothing is resumed). Each run shifts every
``evaluation_seed`` by its own offset, so no server can answer from ComfyUI's cache of an earlier run.

Start the ComfyUI servers yourself (each listing the base checkpoint and the edit), then::

    python benchmarks/bench_evaluate.py --server http://127.0.0.1:8188 --server http://127.0.0.1:8189 \\
        --base model.safetensors --edit no_cat.safetensors --prompts prompts.csv --limit 16 \\
        -- --steps 2 --width 64 --height 64

Arguments after ``--`` go to ``evaluate`` unchanged. Run it with the Python of a ComfyUI install (it runs the
pack's command line, which needs Pillow and torch for the measures).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]


def shifted_prompts(source: str, offset: int, target: Path) -> Path:
    with open(source, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), reader.fieldnames
    for row in rows:
        row["evaluation_seed"] = str(int(row["evaluation_seed"]) + offset)
    with open(target, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return target


def run(servers: list[str], args: argparse.Namespace, extra: list[str], out: Path, prompts: Path) -> float:
    command = [sys.executable, "-m", PACK_ROOT.name, "evaluate", "--base", args.base, "--edit", args.edit,
               "--prompts", str(prompts), "--out", str(out), "--limit", str(args.limit), "-q", *extra]
    for url in servers:
        command += ["--server", url]
    t0 = time.perf_counter()
    subprocess.run(command, cwd=PACK_ROOT.parent, check=True)  # python -m <pack folder> from its parent
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--edit", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--limit", type=int, default=16)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    images = 2 * args.limit  # original and edited per prompt
    results = {}
    with tempfile.TemporaryDirectory(prefix="scapre-bench-") as tmp:
        runs = (("1 server", args.server[:1]), (f"{len(args.server)} servers", args.server))
        for offset, (label, servers) in enumerate(runs, start=1):
            prompts = shifted_prompts(args.prompts, 100_000 * offset, Path(tmp) / f"prompts_{offset}.csv")
            seconds = run(servers, args, extra, Path(tmp) / label.replace(" ", "_"), prompts)
            results[label] = {"seconds": round(seconds, 1), "images_per_min": round(images / seconds * 60, 2)}
            print(f"{label}: {images} images in {seconds:.1f} s = {images / seconds * 60:.2f} images/min", flush=True)
    first, last = results.values()
    ratio = round(last["images_per_min"] / first["images_per_min"], 2)
    print(json.dumps({"images": images, **results, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
