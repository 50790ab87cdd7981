"""``python -m comfyui-scapre attack | attack-prompts | attack-report``: does the erased concept come back?

* ``attack CHECKPOINT --edit FILE``: ScaPre Attack without the GUI: loads the checkpoint and the edit (a LoRA or an
  edited checkpoint) in-process with ComfyUI, runs the soft-token or concept-vector attack
  (``nodes/glue/attack.py``) and writes ``attack.json``, ``attack.md``, the images and the found vectors.
* ``attack-prompts --concepts FILE --out FILE.csv``: the prompt variants of ScaPre Attack Prompts as a prompt CSV
  (``prompt, evaluation_seed, class, variant``) for ``evaluate``.
* ``attack-report DIR``: after ``evaluate --prompts <that CSV>``, the recovery per variant kind from its results
  (``attack.json``, ``attack.md`` in DIR).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...scapre_core import __version__
from ...scapre_core.attack_prompts import ATTACK_KINDS, PLAIN, VARIANT_KINDS, attack_variants, word_lists
from ...scapre_core.attacks import parse_strengths
from ...scapre_core.evaluation import recovery
from ...scapre_core.prompts import CONCEPT_TYPES, normalize, split_items
from ...scapre_core.report import finite
from .inputs import InputError, read_concepts

log = logging.getLogger("scapre")

COMMANDS = ("attack", "attack-prompts", "attack-report")
METHOD_NAMES = {"soft": "soft tokens", "vector": "concept vector"}


class UsageError(ValueError):
    """A bad argument (exit code 2)."""


def add_parsers(sub) -> None:
    """The three subcommands, on the command line's subparsers."""
    at = sub.add_parser("attack", help="attack an edit: soft tokens or a concept vector (in-process, ComfyUI)",
                        description="Search prompt embeddings that make the edited model draw what the original drew "
                                    "for the erased concepts, and measure how often the concept comes back.")
    at.add_argument("checkpoint", help="the original single-file checkpoint (.safetensors)")
    at.add_argument("--edit", required=True, metavar="FILE",
                    help="the edit: a LoRA written by ScaPre (or any LoRA) or an edited checkpoint (.safetensors)")
    at.add_argument("--concepts", metavar="FILE_OR_TEXT",
                    help="concepts to attack: a text/CSV file as for erase, or comma-separated text (default: the "
                         "concepts recorded in the edit file)")
    at.add_argument("--concept-type", choices=list(CONCEPT_TYPES), default="object",
                    help="evaluation templates (default object)")
    at.add_argument("--method", choices=list(METHOD_NAMES), default="soft",
                    help="soft: soft tokens (UnlearnDiff-style, gradients); vector: concept vector (Ring-A-Bell-style)")
    at.add_argument("--template", default="", help="the attack's prompt with {c} (default: the first evaluation "
                                                   "template of the concept type)")
    at.add_argument("--tokens", type=int, default=3, help="soft tokens (3)")
    at.add_argument("--steps", type=int, default=100, help="the search's budget in optimization steps (100)")
    at.add_argument("--lr", type=float, default=0.1, help="Adam's step relative to the vectors' size (0.1)")
    at.add_argument("--norm-limit", type=float, default=1.0,
                    help="soft tokens within this multiple of the template's largest token norm; 0: unbounded (1)")
    at.add_argument("--train-images", type=int, default=4, help="original images the search trains on (4)")
    at.add_argument("--strengths", default="1, 2, 4", help="concept vector strengths (1, 2, 4)")
    at.add_argument("--images", type=int, default=2, help="evaluation images per concept (2)")
    at.add_argument("--seed", type=int, default=0)
    at.add_argument("--sample-steps", type=int, default=20)
    at.add_argument("--cfg", type=float, default=7.0)
    at.add_argument("--sampler", default="euler")
    at.add_argument("--scheduler", default="normal")
    at.add_argument("--width", type=int, default=512)
    at.add_argument("--height", type=int, default=512)
    at.add_argument("--out", required=True, metavar="DIR", help="results folder (created)")
    at.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder (default: $COMFYUI_PATH or the install this "
                                                      "pack sits in)")
    at.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    at.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")

    ap = sub.add_parser("attack-prompts", help="write prompt variants of the erased concepts as a prompt CSV",
                        description="Synonyms, nearest words, longer prompts, misspellings and other languages of "
                                    "the erased concepts, as a CSV for evaluate (prompt, evaluation_seed, class, "
                                    "variant).")
    ap.add_argument("--concepts", required=True, metavar="FILE_OR_TEXT",
                    help="the erased concepts: a text/CSV file as for erase, or comma-separated text")
    ap.add_argument("--concept-type", choices=list(CONCEPT_TYPES), default="object")
    ap.add_argument("--kinds", nargs="+", choices=list(ATTACK_KINDS), default=list(ATTACK_KINDS),
                    help="variant kinds (default all; plain prompts are always written)")
    ap.add_argument("--per-kind", type=int, default=2, help="variants per concept and kind (2)")
    ap.add_argument("--synonyms", metavar="FILE", help="synonyms, one line per concept: 'concept: word, word'")
    ap.add_argument("--translations", metavar="FILE", help="translations, one line per concept: 'concept: word'")
    ap.add_argument("--checkpoint", metavar="FILE",
                    help="a checkpoint whose text encoder gives the neighbour words (loads ComfyUI; without it no "
                         "neighbour variants)")
    ap.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder, for --checkpoint")
    ap.add_argument("--images", type=int, default=2, help="rows (seeds) per prompt (2)")
    ap.add_argument("--seed", type=int, default=0, help="first evaluation seed, and the misspellings' seed (0)")
    ap.add_argument("--out", required=True, metavar="FILE.csv")
    ap.add_argument("-q", "--quiet", action="store_true")

    rp = sub.add_parser("attack-report", help="recovery per variant kind from an evaluate folder",
                        description="After evaluate --prompts <an attack-prompts CSV>: how often each variant kind "
                                    "escaped the edit (its change at most half the plain prompts').")
    rp.add_argument("folder", metavar="DIR", help="the evaluate --out folder")
    rp.add_argument("--prompts", metavar="FILE.csv", help="the attack-prompts CSV (default: the one evaluate read)")
    rp.add_argument("-q", "--quiet", action="store_true")


def _concepts(value: str | None, what: str = "--concepts") -> list[str]:
    if value is None:
        return []
    if os.path.isfile(value):
        try:
            return split_items(read_concepts(value))
        except InputError as err:
            raise UsageError(str(err)) from None
    names = split_items(value)
    if not names:
        raise UsageError(f"{what} names no concepts")
    return names


def _words(path: str | None, concepts: list[str], what: str) -> dict[str, tuple[str, ...]]:
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read --{what} {path!r}: {err.strerror or err}") from None
    try:
        return word_lists(text, concepts, what)
    except ValueError as err:
        raise UsageError(str(err)) from None


def main(args, prog: str) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    from .cli import EXIT_FAILED, EXIT_USAGE, _fail

    try:
        if args.command == "attack-prompts":
            lines = write_prompts(args)
        elif args.command == "attack-report":
            lines = report(args.folder, args.prompts)
        else:
            job = prepare(args)
            lines = run(job, quiet=args.quiet)
    except UsageError as err:
        return _fail(prog, str(err), EXIT_USAGE)
    except (RuntimeError, ValueError, OSError) as err:
        return _fail(prog, str(err), EXIT_FAILED)
    for line in lines:
        print(line)
    return 0


# ------------------------------------------------------------------------------------------------------------
# attack-prompts
# ------------------------------------------------------------------------------------------------------------

def write_prompts(args) -> list[str]:
    concepts = _concepts(args.concepts)
    if args.per_kind < 1 or args.images < 1:
        raise UsageError("--per-kind and --images must be >= 1")
    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".csv" or not out.parent.resolve().is_dir():
        raise UsageError(f"--out {args.out!r} must be a .csv file in an existing folder")
    synonyms = _words(args.synonyms, concepts, "synonyms")
    translations = _words(args.translations, concepts, "translations")
    near: dict[str, tuple[str, ...]] = {}
    notes = []
    if "neighbour" in args.kinds:
        if args.checkpoint is None:
            notes.append("no neighbour variants: give --checkpoint to read its text encoder's nearest words")
        else:
            near = _neighbours(args.checkpoint, args.comfyui, concepts, args.per_kind)
    variants = attack_variants(concepts, args.concept_type, synonyms=synonyms, translations=translations,
                               neighbours=near, kinds=[PLAIN, *args.kinds], per_kind=args.per_kind, seed=args.seed)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt", "evaluation_seed", "class", "variant"])
    for v in variants:
        for j in range(args.images):
            writer.writerow([v.prompt, args.seed + j, v.concept, v.kind])
    out.write_text(buffer.getvalue(), encoding="utf-8")
    counts = {k: sum(v.kind == k for v in variants) for k in VARIANT_KINDS}
    return [*notes, f"wrote {out}: {len(variants)} prompt(s) x {args.images} seed(s) "
                    f"({', '.join(f'{k} {n}' for k, n in counts.items() if n)}); render them with: evaluate --prompts "
                    f"{out} --erased {','.join(concepts)} ..., then attack-report <that --out folder>"]


def _neighbours(checkpoint: str, comfyui: str | None, concepts: list[str], k: int) -> dict[str, tuple[str, ...]]:
    from . import host

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise UsageError(f"--checkpoint {checkpoint!r} is not a file")
    try:
        host.import_comfyui(host.find_comfyui(comfyui), cpu=True)
        import comfy.sd

        clip = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True,
                                                     output_model=False)[1]
    except host.HostError as err:
        raise UsageError(str(err)) from None
    from ..glue.attack import neighbours

    found, notes = neighbours(clip, concepts, k)
    for note in notes:
        log.warning("%s", note)
    return found


# ------------------------------------------------------------------------------------------------------------
# attack-report
# ------------------------------------------------------------------------------------------------------------

def report(folder: str, prompts: str | None = None) -> list[str]:
    out = Path(folder).expanduser()
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{out} holds no readable results.json of evaluate ({err})") from None
    if prompts is None:
        try:
            prompts = json.loads((out / "run.json").read_text(encoding="utf-8"))["prompts"]
        except (OSError, ValueError, KeyError):
            raise UsageError(f"{out}/run.json does not name the prompt CSV; pass --prompts") from None
    try:
        with open(prompts, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise UsageError(f"cannot read --prompts {prompts!r}: {err.strerror or err}") from None
    if not rows or "variant" not in rows[0]:
        raise UsageError(f"{prompts} has no 'variant' column: write it with attack-prompts")
    by_row = {i: (r.get("variant") or "", r.get("class") or "") for i, r in enumerate(rows)}
    grouped: dict[str, dict[str, Any]] = {}
    for record in results.get("records", []):
        variant, concept = by_row.get(int(record["row"]), ("", ""))
        if not variant:
            continue
        entry = grouped.setdefault(normalize(record["prompt"]), {"prompt": record["prompt"], "concept": concept,
                                                                  "variant": variant, "changes": []})
        entry["changes"].append(float(record["change"]))
    per_image = recovery.variant_records(list(grouped.values()))
    summary = recovery.summarize_attack(per_image, key="escaped")
    data = {"format": "scapre-attack-prompts/1", "definition": ESCAPED, "escaped": summary, "images": per_image}
    (out / "attack.json").write_text(json.dumps(data, indent=1, allow_nan=False, default=str), encoding="utf-8")
    text = variant_table(summary)
    (out / "attack.md").write_text(text + "\n", encoding="utf-8")
    return [text, f"wrote {out / 'attack.json'} and {out / 'attack.md'}"]


ESCAPED = (f"escaped: a variant prompt's image changed at most {recovery.SHARE:g} x the mean change of its concept's "
           "plain prompts (the edit barely touched that phrasing)")


def variant_table(summary: dict[str, dict[str, Any]]) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = [f"> {ESCAPED}", "", "| variant | escaped | 95 % interval | images counted | mean change |",
             "|---|---:|---|---:|---:|"]
    for group, e in summary.items():
        lines.append(f"| {group} | {f(e['rate'])} | [{f(e['lo'])}, {f(e['hi'])}] | {e['n']} of {e['images']} | "
                     f"{f(e.get('mean_change'))} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# attack
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackJob:
    checkpoint: Path
    edit: Path
    concepts: tuple[str, ...]
    concept_type: str
    options: dict
    out: Path
    comfyui: str | None
    cpu: bool


def prepare(args) -> AttackJob:
    checkpoint, edit = Path(args.checkpoint).expanduser(), Path(args.edit).expanduser()
    for name, path in (("checkpoint", checkpoint), ("--edit", edit)):
        if not path.is_file():
            raise UsageError(f"{name} {str(path)!r} is not a file")
    concepts = _concepts(args.concepts) or list(_recorded_concepts(edit))
    if not concepts:
        raise UsageError("no concepts: give --concepts (the edit file records none)")
    for name, low in (("tokens", 1), ("steps", 0), ("train_images", 1), ("images", 1), ("sample_steps", 1)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.width % 8 or args.height % 8:
        raise UsageError("--width and --height must be multiples of 8")
    if args.template and "{c}" not in args.template:
        raise UsageError(f"--template {args.template!r} has no {{c}} for the concept")
    try:
        strengths = parse_strengths(args.strengths)
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = Path(args.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file, not a folder")
    if not out.parent.is_dir():
        raise UsageError(f"--out folder's parent {str(out.parent)!r} does not exist")
    options = {"method": METHOD_NAMES[args.method], "template": args.template, "tokens": args.tokens,
               "steps": args.steps, "lr": args.lr, "norm_limit": args.norm_limit, "targets": args.train_images,
               "strengths": strengths, "images": args.images, "seed": args.seed,
               "sampling": (args.sample_steps, args.cfg, args.sampler, args.scheduler, args.width, args.height)}
    return AttackJob(checkpoint.resolve(), edit.resolve(), tuple(concepts), args.concept_type, options, out,
                     args.comfyui, args.cpu)


def _recorded_concepts(path: Path) -> tuple[str, ...]:
    from .evaluate_command import UsageError as EvalUsage
    from .evaluate_command import _edit_info

    try:
        return _edit_info(str(path))[2]
    except EvalUsage as err:
        raise UsageError(str(err)) from None


def _load_edit(path: Path, model, clip):
    """The edited MODEL: ``path`` applied as a LoRA (the model part) or loaded as a checkpoint."""
    import comfy.sd
    import comfy.utils

    from .evaluate_command import _edit_info

    if _edit_info(str(path))[1] == "lora":
        lora = comfy.utils.load_torch_file(str(path), safe_load=True)
        edited, _ = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 0.0)
        return edited
    from . import host

    return host.load_checkpoint(path)[0]


def run(job: AttackJob, quiet: bool = False) -> list[str]:
    from . import host
    from .progress import Bars

    try:
        host.import_comfyui(host.find_comfyui(job.comfyui), cpu=job.cpu)
    except host.HostError as err:
        raise UsageError(str(err)) from None
    import comfy.utils

    from ..glue import attack as glue

    o = job.options
    settings = glue.AttackSettings(method=o["method"], template=o["template"], tokens=o["tokens"], steps=o["steps"],
                                   lr=o["lr"], norm_limit=o["norm_limit"], targets=o["targets"],
                                   strengths=o["strengths"], images=o["images"], seed=o["seed"],
                                   sampling=glue.Sampling(*o["sampling"]))
    settings.check()
    bars = Bars(enabled=not quiet)
    total = settings.total_ticks(len(job.concepts))
    done = [0]
    step = bars.step("attack")

    def tick() -> None:
        done[0] += 1
        step(done[0], total)

    try:
        model, clip, vae = host.load_checkpoint(job.checkpoint)
        edited = _load_edit(job.edit, model, clip)
        outcome = glue.run_attack(model, edited, clip, vae, list(job.concepts), job.concept_type, settings, tick)
    finally:
        bars.close()
    job.out.mkdir(parents=True, exist_ok=True)
    images = job.out / "images"
    images.mkdir(exist_ok=True)
    from PIL import Image

    names = []
    for k, (label, originals, others) in enumerate(outcome.panels):
        for side, batch in (("original", originals), ("edited", others)):
            for j, image in enumerate(batch):
                name = f"{k:03d}_{side}_{j}.png"
                Image.fromarray((image.numpy() * 255 + 0.5).clip(0, 255).astype("uint8")).save(images / name)
                names.append({"panel": label, "side": side, "image": j, "file": f"images/{name}"})
    result = dict(outcome.result)
    result.update(checkpoint=str(job.checkpoint), edit=str(job.edit), concepts=list(job.concepts), images=names)
    tensors = {f"conditioning/{i}": c[0][0].contiguous() for i, c in enumerate(outcome.conditionings)}
    tensors.update(outcome.tensors)
    comfy.utils.save_torch_file(tensors, str(job.out / "attack.safetensors"),
                                metadata=glue.attack_metadata(__version__, outcome.labels, result))
    (job.out / "attack.json").write_text(json.dumps(finite(result), indent=1, allow_nan=False), encoding="utf-8")
    text = glue.markdown(result)
    (job.out / "attack.md").write_text(text + "\n", encoding="utf-8")
    pooled = result["recovery"]["all"]
    return [text, f"recovered {pooled['count']} of {pooled['n']} counted image(s); wrote {job.out}"]


