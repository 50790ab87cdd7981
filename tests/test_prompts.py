"""Prompt parsing and template expansion for the encode node."""

from __future__ import annotations

import pytest
from comfyui_scapre.scapre_core.prompts import (
    TEMPLATES,
    dedupe,
    parse_templates,
    plan_prompts,
    split_items,
    split_lines,
)


def test_split_items_lines_and_commas():
    assert split_items("cat, dog\n\n  golden retriever  \nJ. M. W. Turner,") == [
        "cat", "dog", "golden retriever", "J. M. W. Turner"]
    assert split_lines("a painting, oil\n\n photo ") == ["a painting, oil", "photo"]


def test_dedupe_ignores_case_and_spacing():
    kept, dropped = dedupe(["Cat", "cat ", "Van  Gogh", "van gogh", "dog"])
    assert kept == ["Cat", "Van  Gogh", "dog"] and dropped == ["cat ", "van gogh"]


def test_templates_published_lists():
    assert TEMPLATES["style"] == ("painting by {c}", "art by {c}", "artwork by {c}", "picture by {c}", "style of {c}")
    assert TEMPLATES["object"] == ("image of {c}", "photo of {c}", "portrait of {c}", "picture of {c}",
                                   "painting of {c}")
    assert parse_templates("custom", "a photo of {c}\n{c} in the wild") == ("a photo of {c}", "{c} in the wild")
    with pytest.raises(ValueError, match="placeholder"):
        parse_templates("custom", "a photo of a cat")
    with pytest.raises(ValueError, match="concept_type"):
        parse_templates("animal")


def test_plan_without_templates_is_the_paper_default():
    plan = plan_prompts("cat, dog")
    assert plan.prompts == ("cat", "dog") and plan.guides == ("", "") and plan.concept_index == (0, 1)


def test_plan_expands_templates_keeping_the_bare_concept():
    plan = plan_prompts("Claude Monet", concept_type="style", expand_templates=True, guide="art")
    assert plan.prompts[0] == "Claude Monet" and plan.prompts[1] == "painting by Claude Monet"
    assert len(plan.prompts) == 6 and set(plan.guides) == {"art"} and set(plan.concept_index) == {0}


def test_plan_guides_one_for_all_or_one_per_concept():
    plan = plan_prompts("cat\ndog", guide="an animal\na pet", expand_templates=True)
    assert plan.guides == ("an animal",) * 6 + ("a pet",) * 6
    with pytest.raises(ValueError, match="guide has 2 lines but there are 3 concepts"):
        plan_prompts("cat, dog, cow", guide="a\nb")
    with pytest.raises(ValueError, match="also erased"):
        plan_prompts("cat, dog", guide="dog")


def test_plan_duplicates_warn_and_conflicts_fail():
    plan = plan_prompts("cat, Cat, dog", preserve="tiger, tiger", probes="lion, cat")
    assert plan.concepts == ("cat", "dog") and plan.preserve == ("tiger",) and plan.probes == ("lion", "cat")
    assert any("duplicate concept" in w for w in plan.warnings)
    assert any("duplicate preserve" in w for w in plan.warnings)
    with pytest.raises(ValueError, match="both erased and preserved"):
        plan_prompts("cat, dog", preserve="dog")
    with pytest.raises(ValueError, match="no concepts"):
        plan_prompts(" , \n ")


def test_explicit_has_no_templates_and_says_so():
    plan = plan_prompts("nudity, nude", concept_type="explicit", expand_templates=True)
    assert plan.prompts == ("nudity", "nude")
    assert any("no templates" in w for w in plan.warnings)
