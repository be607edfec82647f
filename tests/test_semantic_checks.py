"""Semantic checks of issue 12: ambiguous_reference, no_referent, attribute_mismatch,
part_name_mismatch. Defective and valid cases per code on real RLE units (tests/test_filters.py)."""

from __future__ import annotations

import pytest

from tests.test_filters import PACO_OBJECTS, P, coco_unit, obj, only_reason, paco_unit, rect, run

pytestmark = pytest.mark.unit


def paco_attr_unit(task: str) -> dict:
    """PACO scene: 1 mug (white ceramic, plain), 2 kettle (no attributes), 3 chair; parts 4 mug handle,
    5 mug rim (annotated dark red: parts carry attributes too), 6 kettle handle, 7 chair leg, 8 back."""
    objects = [dict(o) for o in PACO_OBJECTS]
    objects[0]["attributes"] = ["white", "light_grey", "ceramic", "plain", "opaque"]
    objects.append(dict(obj(204, "rim", rect(20, 20, 100, 30), parent=100), attributes=["dark_red"]))
    return dict(paco_unit(task), objects=objects)


# The four examples of the issue, rejected with their codes.
ISSUE_EXAMPLES = [
    ("ambiguous_reference", coco_unit, "reasoning", P("Segment the dog.", [1], "knowledge")),
    ("no_referent", coco_unit, "reasoning", P("Segment it.", [7], "function")),
    ("no_referent", coco_unit, "reasoning", P("Segment the thing.", [7], "function")),
    ("no_referent", coco_unit, "reasoning", P("What should be segmented?", [7], "function")),
    ("attribute_mismatch", paco_attr_unit, "reasoning", P("Segment the red mug.", [1], "knowledge")),
    ("part_name_mismatch", paco_attr_unit, "part", P("Segment the handle of the mug.", [5], "part")),
]

DEFECTS = ISSUE_EXAMPLES + [
    # hypernym: "the animal" with three dogs and a cat in the image
    ("ambiguous_reference", coco_unit, "reasoning", P("the animal", [4], "knowledge")),
    # synonym: "puppy" is a dog
    ("ambiguous_reference", coco_unit, "reasoning", P("the puppy", [3], "knowledge")),
    # counted: two of three dogs
    ("ambiguous_reference", coco_unit, "multi_object", P("the two dogs", [1, 2], "same_category")),
    ("ambiguous_reference", coco_unit, "multi_object", P("the cat and the dog", [4, 1], "mixed_category")),
    ("ambiguous_reference", coco_unit, "reasoning", P("Can you see the dog?", [1], "knowledge")),
    ("no_referent", coco_unit, "multi_object", P("these two", [1, 2], "same_category")),
    # "orange" before a non-noun is still the fruit (not verified absent here): judged as the head noun
    ("present_category", coco_unit, "hallucination", P("the orange next to the cat", [], "object", "No.")),
    ("no_referent", coco_unit, "hallucination", P("the one over there", [], "attribute", "Nothing.")),
    ("no_referent", coco_unit, "reasoning", P("Please segment something.", [7], "function")),
    ("attribute_mismatch", paco_attr_unit, "reasoning", P("the wooden mug", [1], "knowledge")),
    ("attribute_mismatch", paco_attr_unit, "reasoning", P("the striped mug", [1], "knowledge")),
    ("attribute_mismatch", paco_attr_unit, "reasoning", P("the transparent mug", [1], "knowledge")),
    ("attribute_mismatch", paco_attr_unit, "part", P("the white rim of the mug", [5], "part")),
    ("part_name_mismatch", paco_attr_unit, "part", P("the kettle's spout", [6], "part")),
    ("part_name_mismatch", paco_attr_unit, "part", P("the handle and the spout of the mug", [4, 5], "part")),
]

VALID = [
    ("qualified reference", coco_unit, "reasoning", P("the dog sleeping in the middle", [2], "knowledge")),
    ("qualified superlative", coco_unit, "multi_granularity", P("the largest dog", [2], "instance")),
    ("unique hypernym", coco_unit, "reasoning", P("the furniture", [7], "knowledge")),
    ("unique synonym", coco_unit, "reasoning", P("the kitty", [4], "knowledge")),
    ("all instances", coco_unit, "multi_object", P("the three dogs", [1, 2, 3], "same_category")),
    ("crowd not counted", coco_unit, "reasoning", P("the person", [9], "knowledge")),
    ("colour word that is a category", coco_unit, "reasoning", P("the orange cat", [4], "knowledge")),
    ("modal can is no tin can", coco_unit, "reasoning", P("Can you see the cat?", [4], "knowledge")),
    ("described use", coco_unit, "reasoning", P("something to sit on", [7], "function")),
    ("described fact", coco_unit, "reasoning", P("What purrs when it is happy?", [4], "knowledge")),
    ("attribute matches", paco_attr_unit, "reasoning", P("the white ceramic mug", [1], "knowledge")),
    ("shade folds to base", paco_attr_unit, "reasoning", P("the grey mug", [1], "knowledge")),
    ("attribute absent from source", paco_attr_unit, "reasoning", P("the red kettle", [2], "knowledge")),
    ("attribute on non-target", paco_attr_unit, "part", P("the handle of the blue kettle", [6], "part")),
    ("part attribute matches", paco_attr_unit, "part", P("the red rim of the mug", [5], "part")),
    ("part synonym", paco_attr_unit, "part", P("the grip of the mug", [4], "part")),
    ("part plural", paco_attr_unit, "part", P("the handles of the mug and the kettle", [4, 6], "part")),
    ("predicative not parsed", paco_attr_unit, "reasoning", P("the mug, which is not red", [1], "knowledge")),
]


@pytest.mark.parametrize("code,make,task,pair", DEFECTS, ids=[f"{d[0]}:{d[3]['instruction']}" for d in DEFECTS])
def test_defect_rejected_with_code(code, make, task, pair):
    res = run(make(task), pair)
    assert only_reason(res) == code, res.rejected[0].detail


@pytest.mark.parametrize("why,make,task,pair", VALID, ids=[v[0] for v in VALID])
def test_valid_pair_accepted(why, make, task, pair):
    res = run(make(task), pair)
    assert not res.rejected, res.rejected
    assert len(res.accepted) == 1


def test_no_referent_needs_category_setting():
    from pipelines.filters import FilterSettings

    loose = FilterSettings(no_referent_needs_category=False)
    pair = P("the furry companions", [1, 2, 3], "same_category")  # names no known category
    assert only_reason(run(coco_unit("multi_object"), pair)) == "no_referent"
    assert run(coco_unit("multi_object"), pair, settings=loose).accepted


def test_attribute_window_setting():
    from pipelines.filters import FilterSettings

    pair = P("the red and very glossy mug", [1], "knowledge")  # "glossy" is not glue: stops the scan
    assert run(paco_attr_unit("reasoning"), pair).accepted
    near = P("the red glossy mug", [1], "knowledge")
    assert only_reason(run(paco_attr_unit("reasoning"), near)) == "attribute_mismatch"
    assert run(paco_attr_unit("reasoning"), near, settings=FilterSettings(attribute_window=1)).accepted
