"""``check_student``: every parameter of a student is in exactly one part, or the family is refused."""

from __future__ import annotations

import dataclasses

import pytest

from taid_vlm.adapters import build_adapter
from taid_vlm.adapters.hf_vlm import HFVLMAdapter
from taid_vlm.adapters.student import check_student, part_coverage
from taid_vlm.adapters.vlm_families import family_rule


@pytest.fixture(scope="module")
def internvl(tiny_tokenizer) -> HFVLMAdapter:
    return build_adapter("internvl", config={"tiny": "internvl"}, tokenizer=tiny_tokenizer)


def test_the_family_rule_splits_the_model_exactly(internvl):
    assert part_coverage(internvl.model, internvl.parts()) == ([], [])
    check_student(internvl)


def test_missing_and_shared_parameters_are_named(internvl):
    rule = family_rule("internvl")
    internvl.rule = dataclasses.replace(rule, lm=("lm_head",))
    try:
        outside, shared = part_coverage(internvl.model, internvl.parts())
        assert outside and all(n.startswith("model.language_model.") for n in outside) and shared == []
        with pytest.raises(ValueError, match=r"'internvl' family cannot be a student: .* in no part"):
            check_student(internvl)
        internvl.rule = dataclasses.replace(rule, projector="model")  # the whole body: vision and LM twice
        outside, shared = part_coverage(internvl.model, internvl.parts())
        assert outside == [] and any(n.startswith("model.vision_tower.") for n in shared)
        with pytest.raises(ValueError, match="in two parts"):
            check_student(internvl)
    finally:
        internvl.rule = rule
