"""``python -m comfyui-scapre``: ScaPre without the GUI (``comfyui-scapre`` is the pack's folder name).

* ``erase CHECKPOINT --concepts FILE --out FILE.safetensors [--lora FILE.safetensors --rank R]``:
  loads the checkpoint in-process with a ComfyUI install, erases the concepts with a published preset
  (or a settings JSON) exactly as the nodes do, writes an edited checkpoint and/or a LoRA with the
  JSON report.
* ``evaluate --server URL [--server URL ...] --base NAME --edit FILE --prompts FILE.csv --out DIR``:
  renders every prompt with the original and the edited model on running ComfyUI servers, resumable,
  and writes images, results and an HTML page.

Bad arguments end with one line on stderr and exit code 2; errors while running with exit code 1;
Ctrl-C with exit code 130, leaving no partial file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ...scapre_core.presets import (
    AUTO,
    AUTO_DESCRIPTION,
    DEFAULT_PRESET,
    EDIT_MODES,
    PRESET_CHOICES,
    PRESET_NAMES,
    PRESETS,
)
from ...scapre_core.prompts import CONCEPT_TYPES
from ...scapre_core.report import KEY_TOKENS, REPORT_SCOPES

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def program_name() -> str:
    """``python -m <pack folder>``, as the user typed it (the top package is named after the folder)."""
    return f"python -m {(__package__ or 'comfyui-scapre').split('.')[0]}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=program_name(), description="ScaPre concept erasure without the GUI.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="{erase,evaluate,attack,attack-prompts,attack-report}")

    erase = sub.add_parser("erase", help="erase concepts from a checkpoint; write a checkpoint and/or a LoRA",
                           description="Erase concepts from a checkpoint with ComfyUI's own loader and text encoder.")
    erase.add_argument("checkpoint", help="a single-file SD1.x/SD2.x/SDXL checkpoint (.safetensors)")
    erase.add_argument("--concepts", required=True, metavar="FILE",
                       help="what to erase: a text file (one per line) or a CSV (its 'class' column, deduplicated)")
    erase.add_argument("--column", help="CSV column holding the concepts (default: class)")
    erase.add_argument("--out", metavar="FILE.safetensors", help="write the edited checkpoint here")
    erase.add_argument("--lora", metavar="FILE.safetensors", help="write the edit as a LoRA here")
    erase.add_argument("--rank", type=int, default=0, help="LoRA rank: 0 exact (default), r > 0 rank-r factors")
    erase.add_argument("--dtype", choices=["same", "fp16", "bf16", "fp32"], default="same",
                       help="dtype of --out's floating tensors: same (default) keeps each one's dtype in CHECKPOINT")
    erase.add_argument("--preset", choices=PRESET_CHOICES, default=DEFAULT_PRESET, metavar="NAME",
                       help=f"what to run (default {DEFAULT_PRESET}). {AUTO}: {AUTO_DESCRIPTION}; "
                            + "; ".join(f"{n}: {PRESETS[n].description}" for n in PRESET_NAMES))
    erase.add_argument("--strength", type=float, default=1.0,
                       help="how far the edit goes: 0 no edit, up to 1 a share of the preset's change, 1 as published, "
                            "above 1 further (erase scale times it, pull-back and Informax's p divided by it, the "
                            "erased prompts aimed past their guides, the guides moved towards look-alikes); default 1")
    erase.add_argument("--seed", type=int, default=0, help="seed of the Informax/entropy noise (0)")
    erase.add_argument("--settings", metavar="FILE.json",
                       help="JSON object of config field names (and 'edit') overriding the preset's values")
    erase.add_argument("--edit", choices=list(EDIT_MODES), default="keys and values",
                       help="projections to edit (default: keys and values, as published)")
    erase.add_argument("--concept-type", choices=list(CONCEPT_TYPES), default="object",
                       help="templates used with --expand-templates (default object)")
    erase.add_argument("--expand-templates", action="store_true", help="also erase each concept in its templates")
    erase.add_argument("--guide", default="", help="what erased prompts should become (default: unconditional)")
    erase.add_argument("--preserve", default="", help="comma-separated prompts to keep unchanged")
    erase.add_argument("--report-tokens", choices=list(REPORT_SCOPES), default="key",
                       help="tokens the report (.scapre.json) is measured on: key (default; each prompt's last word "
                            f"token and the {KEY_TOKENS} after it, cheap) or full (every token, about as long again as "
                            "the edit)")
    erase.add_argument("--look-alikes", choices=["auto", "preserve prompts", "off"], default=None,
                       help="look-alikes for the focus variant (presets precise and auto, beyond the paper) and "
                            "for --strength above 1 (the guides move towards them): auto (default with either) finds "
                            "them among about 200 everyday concepts, 'preserve prompts' uses --preserve only")
    erase.add_argument("--comfyui", metavar="PATH",
                       help="ComfyUI folder (default: $COMFYUI_PATH, else the ComfyUI this pack is installed in)")
    erase.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    erase.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")

    ev = sub.add_parser("evaluate", help="render prompts with the original and the edited model on ComfyUI servers",
                        description="Render every prompt of a CSV with the original and the edited model on one or "
                                    "more running ComfyUI servers, and measure how much each image changed.")
    ev.add_argument("--server", action="append", required=True, metavar="URL",
                    help="a running ComfyUI server, e.g. http://127.0.0.1:8188 (repeat for several)")
    ev.add_argument("--base", required=True, metavar="CHECKPOINT_NAME",
                    help="the original checkpoint, by the name the servers list it under")
    ev.add_argument("--edit", required=True, metavar="FILE",
                    help="the edit: a checkpoint or LoRA the servers list (its file name, or a path to it)")
    ev.add_argument("--prompts", required=True, metavar="FILE.csv",
                    help="CSV with prompt, evaluation_seed and optionally class columns")
    ev.add_argument("--out", required=True, metavar="DIR", help="results folder (a rerun resumes it)")
    ev.add_argument("--erased", metavar="TEXT",
                    help="comma-separated erased concepts: rows whose class is one of them are 'erased', the rest "
                         "'kept' (default: the concepts recorded in the edit file, when --edit is a local path)")
    ev.add_argument("--steps", type=int, default=20)
    ev.add_argument("--cfg", type=float, default=7.0)
    ev.add_argument("--sampler", default="euler")
    ev.add_argument("--scheduler", default="normal")
    ev.add_argument("--width", type=int, default=512)
    ev.add_argument("--height", type=int, default=512)
    ev.add_argument("--negative", default="", help="negative prompt (default empty)")
    ev.add_argument("--limit", type=int, help="only the first N prompts")
    ev.add_argument("--depth", type=int, default=2, help="prompts kept queued per server (default 2)")
    ev.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds one image may take before its server counts as stuck (default 1800)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info logs")
    from .attack_command import add_parsers

    add_parsers(sub)
    return parser


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    prog = f"{parser.prog} {args.command}"
    try:
        if args.command == "erase":
            return _erase(args, prog)
        if args.command.startswith("attack"):
            from .attack_command import main as attack_main

            return attack_main(args, prog)
        return _evaluate(args, prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no partial file was left", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _erase(args, prog: str) -> int:
    from . import erase_command, host
    from .progress import Bars

    try:
        job = erase_command.prepare(args)
        comfyui = host.find_comfyui(args.comfyui)
    except (erase_command.UsageError, host.HostError) as err:
        return _fail(prog, str(err), EXIT_USAGE)
    try:
        lines = erase_command.run(job, comfyui, cpu=args.cpu, bars=Bars(enabled=not args.quiet))
    except (host.HostError, ValueError, RuntimeError, OSError) as err:
        return _fail(prog, str(err), EXIT_FAILED)
    for line in lines:
        print(line)
    return 0


def _evaluate(args, prog: str) -> int:
    from . import evaluate_command

    try:
        plan = evaluate_command.prepare(args)
    except evaluate_command.UsageError as err:
        return _fail(prog, str(err), EXIT_USAGE)
    try:
        lines = evaluate_command.run(plan, quiet=args.quiet)
    except evaluate_command.EvaluateError as err:
        return _fail(prog, str(err), EXIT_FAILED)
    for line in lines:
        print(line)
    return 0
