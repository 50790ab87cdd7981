"""Prompt lists from the text a user types: parsing, template expansion, guides, duplicates.

Pure string handling for the encode node (and the front end's live count mirrors it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Prompt templates per concept type (the authors' ``--concept_type``/``--add_prompts``).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": ("image of {c}", "photo of {c}", "portrait of {c}", "picture of {c}", "painting of {c}"),
    "style": ("painting by {c}", "art by {c}", "artwork by {c}", "picture by {c}", "style of {c}"),
    "explicit": (),
    "custom": (),
}
CONCEPT_TYPES = tuple(TEMPLATES)
PLACEHOLDER = "{c}"


def split_items(text: str) -> list[str]:
    """One item per line; commas also separate. Surrounding space is dropped, empty items skipped."""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    return [item.strip() for line in text.splitlines() for item in line.split(",") if item.strip()]


def split_lines(text: str) -> list[str]:
    """One item per non-empty line (commas kept: a guide may contain them)."""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    return [line.strip() for line in text.splitlines() if line.strip()]


def normalize(text: str) -> str:
    """The form under which two prompts count as duplicates (case and spacing ignored)."""
    return re.sub(r"\s+", " ", text.strip()).casefold()


def dedupe(items: list[str]) -> tuple[list[str], list[str]]:
    """Drop repeats (keeping the first spelling); returns ``(kept, dropped)``."""
    seen: set[str] = set()
    kept, dropped = [], []
    for item in items:
        key = normalize(item)
        if key in seen:
            dropped.append(item)
        else:
            seen.add(key)
            kept.append(item)
    return kept, dropped


def parse_templates(concept_type: str, custom: str = "") -> tuple[str, ...]:
    """The templates of ``concept_type``; ``custom`` takes one template per line, each with ``{c}``."""
    if concept_type not in TEMPLATES:
        raise ValueError(f"concept_type must be one of {list(CONCEPT_TYPES)}, got {concept_type!r}")
    if concept_type != "custom":
        return TEMPLATES[concept_type]
    templates = tuple(split_lines(custom))
    missing = [t for t in templates if PLACEHOLDER not in t]
    if missing:
        raise ValueError(f"custom template {missing[0]!r} has no {PLACEHOLDER} placeholder for the concept; "
                         f"write e.g. 'a photo of {PLACEHOLDER}'")
    return templates


@dataclass(frozen=True)
class PromptPlan:
    """What will be encoded: every erase prompt with its concept and guide, plus preserve and probes."""

    concepts: tuple[str, ...]
    prompts: tuple[str, ...]
    concept_index: tuple[int, ...]  # prompts[i] erases concepts[concept_index[i]]
    guides: tuple[str, ...]  # one per prompt ("" = the unconditional)
    preserve: tuple[str, ...]
    probes: tuple[str, ...]
    warnings: tuple[str, ...]


def plan_prompts(
    concepts: str,
    concept_type: str = "object",
    expand_templates: bool = False,
    templates: str = "",
    guide: str = "",
    preserve: str = "",
    probes: str = "",
) -> PromptPlan:
    """Turn the encode node's text fields into the prompt lists (SPEC "Inputs").

    ``concepts``: one per line or comma-separated. With ``expand_templates`` each concept also gets
    one prompt per template of its ``concept_type`` (the bare concept is always kept). ``guide``:
    empty (towards the unconditional), one line for all concepts, or one line per concept.
    Duplicates are dropped with a warning; a preserve prompt that is also erased is an error.
    """
    warnings: list[str] = []
    names, dropped = dedupe(split_items(concepts))
    if not names:
        raise ValueError("no concepts to erase: type at least one concept (one per line or comma-separated)")
    if dropped:
        warnings.append(f"ignored {len(dropped)} duplicate concept(s): {', '.join(dropped)}")
    guide_lines = split_lines(guide)
    if len(guide_lines) > 1 and len(guide_lines) != len(names):
        raise ValueError(f"guide has {len(guide_lines)} lines but there are {len(names)} concepts: give one guide "
                         "for all, one per concept (one per line), or leave it empty for the unconditional")
    per_concept_guide = guide_lines if len(guide_lines) > 1 else [guide_lines[0] if guide_lines else ""] * len(names)
    chosen = parse_templates(concept_type, templates) if expand_templates else ()
    if expand_templates and not chosen:
        warnings.append(f"expand_templates is on but concept_type {concept_type!r} has no templates; "
                        "only the concepts themselves are erased")

    prompts, index, guides = [], [], []
    seen: set[str] = set()
    for j, name in enumerate(names):
        for prompt in (name, *(t.replace(PLACEHOLDER, name) for t in chosen)):
            key = normalize(prompt)
            if key in seen:
                continue
            seen.add(key)
            prompts.append(prompt)
            index.append(j)
            guides.append(per_concept_guide[j])
    erased_guides = sorted({g for g in guides if g and normalize(g) in seen})
    if erased_guides:
        raise ValueError(f"guide {erased_guides[0]!r} is also erased; choose a guide that is not in the concepts")

    keep, dropped = dedupe(split_items(preserve))
    if dropped:
        warnings.append(f"ignored {len(dropped)} duplicate preserve prompt(s): {', '.join(dropped)}")
    clash = [p for p in keep if normalize(p) in seen]
    if clash:
        raise ValueError(f"{clash[0]!r} is both erased and preserved; remove it from one of the lists")
    watch, dropped = dedupe(split_items(probes))
    if dropped:
        warnings.append(f"ignored {len(dropped)} duplicate probe(s): {', '.join(dropped)}")
    return PromptPlan(
        concepts=tuple(names), prompts=tuple(prompts), concept_index=tuple(index), guides=tuple(guides),
        preserve=tuple(keep), probes=tuple(watch), warnings=tuple(warnings),
    )
