"""Reading the command line's input files: concepts (text or CSV) and evaluation prompts (CSV).

The paper's CSVs (``case_number, prompt, class, evaluation_seed``) work as they are."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


class InputError(ValueError):
    """A problem with an input file, worded for the command line."""


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not a readable CSV file: {err}") from None


def read_concepts(path: str | Path, column: str | None = None) -> str:
    """The concepts of ``path`` as the concept text ScaPre Concept Encode takes (one per line).

    A ``.csv`` file gives the distinct values of ``column`` (default ``class``, or the only column) in
    order of appearance; any other file is read as text: one concept per line (commas also separate,
    as in the node), blank lines and lines starting with ``#`` skipped."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        names, rows = _read_csv(path)
        if column is None:
            column = "class" if "class" in names else (names[0] if len(names) == 1 else None)
            if column is None:
                raise InputError(f"{path} has no 'class' column; name one with --column (columns: {names})")
        elif column not in names:
            raise InputError(f"{path} has no column {column!r} (columns: {names})")
        values = list(dict.fromkeys(v.strip() for r in rows if (v := r.get(column) or "").strip()))
        commas = [v for v in values if "," in v]
        if commas:
            raise InputError(f"{path}: {column} value {commas[0]!r} contains a comma, which separates concepts")
        if not values:
            raise InputError(f"{path} has no values in column {column!r}")
        return "\n".join(values)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text: {err}") from None
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith("#")]
    if not kept:
        raise InputError(f"{path} names no concepts (one per line)")
    return "\n".join(kept)


@dataclass(frozen=True)
class PromptRow:
    """One evaluation prompt: its index in the file, text, seed and (optional) class."""

    index: int
    prompt: str
    seed: int
    cls: str


def read_prompts(path: str | Path) -> list[PromptRow]:
    """Rows of a prompt CSV with ``prompt`` and ``evaluation_seed`` columns and an optional ``class``."""
    path = Path(path)
    names, rows = _read_csv(path)
    missing = [c for c in ("prompt", "evaluation_seed") if c not in names]
    if missing:
        raise InputError(f"{path} lacks column(s) {missing} (columns: {names}); "
                         "a prompt CSV needs prompt, evaluation_seed and optionally class")
    out = []
    for i, row in enumerate(rows):
        prompt = (row.get("prompt") or "").strip()
        if not prompt:
            raise InputError(f"{path} row {i + 2}: empty prompt")
        try:
            seed = int((row.get("evaluation_seed") or "").strip())
        except ValueError:
            raise InputError(f"{path} row {i + 2}: evaluation_seed {row.get('evaluation_seed')!r} "
                             "is not an integer") from None
        if seed < 0:
            raise InputError(f"{path} row {i + 2}: evaluation_seed must be >= 0, got {seed}")
        out.append(PromptRow(index=i, prompt=prompt, seed=seed, cls=(row.get("class") or "").strip()))
    if not out:
        raise InputError(f"{path} has no prompts")
    return out
