"""Filters: every reason code rejects a hand-made defect with exactly that code, and valid pairs of
every task pass. Units carry real compressed RLE masks drawn with numpy and encoded by pycocotools."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.core.knowledge import load_knowledge
from pipelines.core.object_table import build_object_table
from pipelines.filters import FilterSettings, check_unit, filter_version, reason_codes
from pipelines.filters.checks_spatial import find_superlatives

H, W = 240, 320
KNOWLEDGE = load_knowledge()
SETTINGS = FilterSettings()
COCO_ANIMALS_ETC = ["giraffe", "zebra", "elephant", "bear", "horse", "sheep", "cow", "bird", "airplane", "bus"]


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def enc(m: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii")


def obj(ann_id: int, name: str, m: np.ndarray, *, parent: int | None = None, crowd: bool = False) -> dict:
    rle = {"size": [H, W], "counts": enc(m)}
    return {
        "ann_id": ann_id, "category_id": ann_id, "category_name": name, "name": name, "supercategory": "",
        "is_part": parent is not None, "parent_ann_id": parent,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
        "iscrowd": crowd, "rle_counts": rle["counts"], "attributes": [],
    }  # fmt: skip


# COCO scene -> local ids: 1 dog (left, small) 2 dog (middle, largest) 3 dog (right) 4 cat
# 5 person crowd 6 cup 7 chair 8 bottle (tiny) 9 person
COCO_OBJECTS = [
    obj(11, "dog", rect(5, 100, 45, 140)),
    obj(12, "dog", rect(110, 90, 200, 170)),
    obj(13, "dog", rect(250, 100, 300, 150)),
    obj(14, "cat", rect(60, 180, 100, 220)),
    obj(15, "person", rect(200, 0, 320, 60), crowd=True),
    obj(16, "cup", rect(130, 20, 150, 45)),
    obj(17, "chair", rect(20, 20, 90, 90)),
    obj(18, "bottle", rect(300, 200, 304, 204)),
    obj(19, "person", rect(160, 180, 220, 240)),
]
# PACO scene -> local ids: 1 mug 2 kettle 3 chair, 4 mug handle, 5 kettle handle, 6 chair leg
# 7 chair "back" annotated outside its chair (a suspect annotation).
PACO_OBJECTS = [
    dict(obj(100, "mug", rect(20, 20, 100, 120)), attributes=["white", "ceramic", "plain"]),
    obj(101, "kettle", rect(150, 20, 260, 140)),
    obj(102, "chair", rect(40, 150, 140, 238)),
    obj(200, "handle", rect(80, 50, 100, 90), parent=100),
    obj(201, "handle", rect(230, 40, 260, 100), parent=101),
    obj(202, "leg", rect(40, 200, 50, 238), parent=102),
    obj(203, "back", rect(200, 160, 300, 230), parent=102),
]


def coco_unit(task: str) -> dict[str, Any]:
    return {
        "gen_key": "k", "task": task, "dataset_format": "coco", "width": W, "height": H,
        "objects": COCO_OBJECTS, "absent_categories": COCO_ANIMALS_ETC, "not_exhaustive_categories": [],
    }  # fmt: skip


def paco_unit(task: str) -> dict[str, Any]:
    return {
        "gen_key": "p", "task": task, "dataset_format": "paco", "width": W, "height": H,
        "objects": PACO_OBJECTS, "absent_categories": ["giraffe", "laptop"],
        "not_exhaustive_categories": ["bowl"],
    }  # fmt: skip


def P(instruction: str, ids: list[int], subtype: str, answer: str = "Sure, [SEG].") -> dict[str, Any]:
    return {"instruction": instruction, "answer": answer, "target_ids": ids, "subtype": subtype}


def run(unit: dict, *pairs: dict, finish: str = "stop", raw: str | None = None, settings=SETTINGS):
    text = raw if raw is not None else json.dumps({"pairs": list(pairs)})
    return check_unit(unit, text, finish, settings, KNOWLEDGE)


def only_reason(result) -> str:
    assert not result.accepted, [a.instruction for a in result.accepted]
    assert len(result.rejected) == 1, result.rejected
    return result.rejected[0].reason


def decoded_or(objects: list[dict], ann_ids: list[int]) -> np.ndarray:
    out = np.zeros((H, W), dtype=np.uint8)
    by = {o["ann_id"]: o for o in objects}
    for a in ann_ids:
        out |= mask_utils.decode({"size": [H, W], "counts": by[a]["rle_counts"]})
    return out


# ------------------------------------------------------------------------------ valid pairs
VALID = [
    (coco_unit, "hallucination", P("the giraffe next to the chair", [], "object", "There is no giraffe.")),
    (coco_unit, "hallucination", P("the purple dog", [], "attribute", "No dog here is purple.")),
    (coco_unit, "hallucination", P("the dog driving the chair", [], "relation", "No dog does that.")),
    (coco_unit, "multi_object", P("all the dogs", [1, 2, 3], "same_category")),
    (coco_unit, "multi_object", P("the cat and the chair", [4, 7], "mixed_category")),
    (coco_unit, "multi_object", P("Segment the three dogs as well as the cat.", [1, 2, 3, 4], "mixed_category")),
    (coco_unit, "multi_object", P("both dogs on the left", [1, 2], "same_category")),
    (coco_unit, "reasoning", P("the person with the dog", [9], "knowledge")),
    (coco_unit, "multi_object", P("the dogs on the left half", [1, 2], "same_category")),
    (coco_unit, "reasoning", P("something for one person to sit on", [7], "function")),
    (coco_unit, "reasoning", P("the pet that purrs", [4], "knowledge")),
    (coco_unit, "multi_granularity", P("all the animals in the image", [1, 2, 3, 4], "group")),
    (coco_unit, "multi_granularity", P("the people", [9], "group")),
    (coco_unit, "multi_granularity", P("the leftmost dog", [1], "instance")),
    (coco_unit, "multi_granularity", P("the dog on the far right", [3], "instance")),
    (coco_unit, "multi_granularity", P("the largest dog", [2], "instance")),
    (coco_unit, "multi_granularity", P("the cup to the left of the largest dog", [6], "instance")),
    (coco_unit, "reasoning", P("of the pets that bark, the smallest one", [1], "knowledge")),  # qualified
    (coco_unit, "multi_object", P("the two leftmost dogs", [1, 2], "same_category")),
    (coco_unit, "multi_object", P("the two dogs that are furthest to the right", [3, 2], "same_category")),
    (coco_unit, "reasoning", P("the leftmost dog sleeping on the grass", [2], "knowledge")),  # qualified
    (paco_unit, "part", P("the handle of the mug", [4], "part")),
    (paco_unit, "part", P("the kettle's handle", [5], "part")),
    (paco_unit, "part", P("the leg of the chair", [6], "part")),
    (paco_unit, "part", P("the handles of the mug and the kettle", [4, 5], "part")),
    (paco_unit, "part", P("the handle of the rightmost mug", [4], "part")),  # one mug: trivially rightmost
    (paco_unit, "hallucination", P("the giraffe beside the kettle", [], "object", "There is none.")),
]


@pytest.mark.parametrize("make,task,pair", VALID, ids=[v[2]["instruction"] for v in VALID])
def test_valid_pairs_pass(make, task, pair):
    unit = make(task)
    res = run(unit, pair)
    assert not res.rejected, res.rejected
    (acc,) = res.accepted
    rows = {r.local_id: r for r in build_object_table(unit["objects"])}
    ann = [rows[i].ann_id for i in pair["target_ids"]]
    assert acc.target_ann_ids == ann and acc.subtype == pair["subtype"]
    assert acc.mask["size"] == [H, W] and isinstance(acc.mask["counts"], str)
    got = mask_utils.decode({"size": [H, W], "counts": acc.mask["counts"]})
    assert np.array_equal(got, decoded_or(unit["objects"], ann))
    assert len(acc.bboxes) == len(ann)


def test_one_response_of_every_task_mixed_pairs():
    res = run(
        coco_unit("multi_granularity"),
        P("all the animals", [1, 2, 3, 4], "group"),
        P("the rightmost dog", [1], "instance"),  # spatial
        P("the dog", [1, 2, 3], "instance"),  # granularity
        P("the smallest dog", [1], "instance"),
    )
    assert [a.pair_index for a in res.accepted] == [0, 3]
    assert [(r.pair_index, r.reason) for r in res.rejected] == [(1, "spatial"), (2, "granularity")]


# ------------------------------------------------------------------- one defect per reason code
DEFECTS: list[tuple[str, Any, str, dict[str, Any]]] = [
    # (expected code, unit maker, task, kwargs for run)
    ("unparseable", coco_unit, "reasoning", {"raw": "I think the answer is the chair."}),
    ("unparseable", coco_unit, "reasoning", {"raw": '["pairs"]'}),
    ("truncated", coco_unit, "reasoning", {"finish": "length", "pairs": [P("the chair", [7], "function")]}),
    ("truncated", coco_unit, "reasoning", {"raw": '{"pairs": [{"instruction": "the ch'}),
    ("schema", coco_unit, "reasoning", {"raw": '{"pairs": [], "note": 1}'}),
    ("schema", coco_unit, "reasoning", {"raw": '{"pairs": []}'}),
    ("schema", coco_unit, "reasoning", {"pairs": [{"instruction": "the chair", "target_ids": [7]}]}),
    ("schema", coco_unit, "reasoning", {"pairs": [P("the chair", [7], "group")]}),
    ("schema", coco_unit, "reasoning", {"pairs": [P("the chair", ["7"], "function")]}),
    ("schema", coco_unit, "reasoning", {"pairs": [dict(P("the chair", [7], "function"), extra=1)]}),
    ("schema", coco_unit, "reasoning", {"pairs": ["the chair"]}),
    ("schema", coco_unit, "reasoning", {"pairs": [P("the chair", [7.0], "function")]}),
    ("length", coco_unit, "reasoning", {"pairs": [P("  ", [7], "function")]}),
    ("length", coco_unit, "reasoning", {"pairs": [P("the chair", [7], "function", answer="")]}),
    ("length", coco_unit, "reasoning", {"pairs": [P("the chair " * 40, [7], "function")]}),
    ("id_leak", coco_unit, "reasoning", {"pairs": [P("the seat, object 7", [7], "function")]}),
    ("id_leak", coco_unit, "reasoning", {"pairs": [P("the chair", [7], "function", answer="It is #7.")]}),
    ("id_leak", coco_unit, "reasoning", {"pairs": [P("the thing with id 7 to sit on", [7], "function")]}),
    ("id_leak", coco_unit, "reasoning", {"pairs": [P("the chair [7]", [7], "function")]}),
    ("unknown_id", coco_unit, "reasoning", {"pairs": [P("the chair", [42], "function")]}),
    ("duplicate_id", coco_unit, "multi_object", {"pairs": [P("the dogs", [1, 1, 2, 3], "same_category")]}),
    ("target_count", coco_unit, "hallucination", {"pairs": [P("the giraffe", [4], "object")]}),
    ("target_count", coco_unit, "multi_object", {"pairs": [P("the cat", [4], "same_category")]}),
    ("target_count", coco_unit, "reasoning", {"pairs": [P("the pet that purrs", [], "knowledge")]}),
    ("crowd_target", coco_unit, "reasoning", {"pairs": [P("the fans in the stands", [5], "knowledge")]}),
    ("mask_too_small", coco_unit, "reasoning", {"pairs": [P("something to drink from", [8], "function")]}),
    ("not_a_part", paco_unit, "part", {"pairs": [P("the handle of the mug", [1], "part")]}),
    ("part_parent_mismatch", paco_unit, "part", {"pairs": [P("the handle of the mug", [5], "part")]}),
    ("part_parent_mismatch", paco_unit, "part", {"pairs": [P("the handle of the cup", [5], "part")]}),
    ("part_parent_mismatch", paco_unit, "part", {"pairs": [P("the handle you hold", [4], "part")]}),
    ("part_parent_mismatch", paco_unit, "part", {"pairs": [P("the back of the chair", [7], "part")]}),
    ("present_category", coco_unit, "hallucination", {"pairs": [P("the puppy on the sofa", [], "object")]}),
    ("present_category", coco_unit, "hallucination", {"pairs": [P("the cats", [], "object")]}),
    ("present_category", coco_unit, "hallucination", {"pairs": [P("the animals grazing", [], "object")]}),
    ("present_category", coco_unit, "hallucination", {"pairs": [P("the animal by the door", [], "object")]}),
    ("present_category", coco_unit, "hallucination", {"pairs": [P("the unicorn", [], "object")]}),
    ("present_category", coco_unit, "hallucination", {"pairs": [P("the laptop", [], "object")]}),
    ("present_category", paco_unit, "hallucination", {"pairs": [P("the bowl", [], "object")]}),
    ("granularity", coco_unit, "multi_object", {"pairs": [P("all the dogs", [1, 2], "same_category")]}),
    ("granularity", coco_unit, "multi_object", {"pairs": [P("every dog and the cat", [1, 2, 3], "mixed_category")]}),
    ("granularity", coco_unit, "multi_granularity", {"pairs": [P("the animals", [1, 2, 3, 7], "group")]}),
    ("granularity", coco_unit, "multi_granularity", {"pairs": [P("the dog", [1, 2, 3], "instance")]}),
    (
        "granularity",
        coco_unit,
        "multi_object",
        {"pairs": [P("the three dogs and the cat", [1, 2, 4], "mixed_category")]},
    ),
    (
        "granularity",
        coco_unit,
        "multi_object",
        {"pairs": [P("the cat together with the chair", [4, 6, 7], "mixed_category")]},
    ),
    ("granularity", coco_unit, "reasoning", {"pairs": [P("the dog", [1, 2], "knowledge")]}),
    ("spatial", coco_unit, "multi_granularity", {"pairs": [P("the leftmost dog", [3], "instance")]}),
    ("spatial", coco_unit, "multi_granularity", {"pairs": [P("the dog on the far left", [2], "instance")]}),
    ("spatial", coco_unit, "multi_granularity", {"pairs": [P("the biggest dog", [1], "instance")]}),
    ("spatial", coco_unit, "reasoning", {"pairs": [P("the smallest pet", [2], "knowledge")]}),
    ("spatial", coco_unit, "multi_object", {"pairs": [P("the leftmost dog and the cat", [3, 4], "mixed_category")]}),
    ("spatial", coco_unit, "reasoning", {"pairs": [P("the dog at the very top", [2], "knowledge")]}),
    ("spatial", coco_unit, "multi_object", {"pairs": [P("the two leftmost dogs", [1, 3], "same_category")]}),
    ("spatial", coco_unit, "multi_object", {"pairs": [P("the three largest dogs", [2, 3], "same_category")]}),
    ("ambiguous_reference", coco_unit, "reasoning", {"pairs": [P("Segment the dog.", [2], "knowledge")]}),
    ("no_referent", coco_unit, "reasoning", {"pairs": [P("Segment it.", [7], "function")]}),
    ("part_name_mismatch", paco_unit, "part", {"pairs": [P("the leg of the mug", [4], "part")]}),
    ("attribute_mismatch", paco_unit, "reasoning", {"pairs": [P("the red mug", [1], "knowledge")]}),
]


@pytest.mark.parametrize("code,make,task,kw", DEFECTS, ids=[f"{d[0]}-{i}" for i, d in enumerate(DEFECTS)])
def test_defect_rejected_with_exact_code(code, make, task, kw):
    kw = dict(kw)
    pairs = kw.pop("pairs", [])
    res = run(make(task), *pairs, **kw)
    assert only_reason(res) == code, res.rejected[0].detail
    assert res.rejected[0].detail


def test_every_reason_code_has_a_defect():
    assert {d[0] for d in DEFECTS} | {"duplicate_instruction"} == set(reason_codes())


def test_whole_response_rejects_are_pair_index_minus_one():
    res = run(coco_unit("reasoning"), raw="not json at all")
    assert res.rejected[0].pair_index == -1 and res.rejected[0].target_local_ids == []


def test_duplicate_instruction_rejects_later_pair_only():
    res = run(
        coco_unit("multi_object"),
        P("all the dogs", [1, 2, 3], "same_category"),
        P("Find all the dogs in this image!", [1, 2, 3], "same_category"),
        P("the chair and the cat", [7, 4], "mixed_category"),  # (three dogs: "the dog" would be ambiguous)
    )
    assert [a.pair_index for a in res.accepted] == [0, 2]
    assert [(r.pair_index, r.reason) for r in res.rejected] == [(1, "duplicate_instruction")]


def test_near_identical_text_with_other_targets_is_kept():
    res = run(
        coco_unit("multi_granularity"),
        P("the dog on the far left of the picture", [1], "instance"),
        P("the dog on the far right of the picture", [3], "instance"),
    )
    assert len(res.accepted) == 2, res.rejected


def test_first_failing_check_wins():
    # Unknown id and id leak at once: id_leak runs first (documented order).
    res = run(coco_unit("reasoning"), P("object 42", [42], "function"))
    assert only_reason(res) == "id_leak"


def test_max_pairs_rejects_the_extra_pairs():
    s = FilterSettings(max_pairs=1)
    res = run(coco_unit("reasoning"), P("the chair", [7], "function"), P("the cat", [4], "knowledge"), settings=s)
    assert len(res.accepted) == 1 and res.rejected[0].reason == "schema"


def test_part_without_its_parent_in_the_image():
    orphan = dict(paco_unit("part"), objects=[o for o in PACO_OBJECTS if o["ann_id"] != 100])
    res = run(orphan, P("the handle of the mug", [6], "part"))  # local 6 = the orphaned mug handle
    assert only_reason(res) == "part_parent_mismatch" and "not in the image" in res.rejected[0].detail


def test_thresholds_come_from_settings():
    loose = FilterSettings(min_mask_area=1, part_in_parent_min=0.0)
    assert run(coco_unit("reasoning"), P("something to drink from", [8], "function"), settings=loose).accepted
    ok = run(paco_unit("part"), P("the back of the chair", [7], "part"), settings=loose)
    assert ok.accepted, ok.rejected


def test_hallucination_mask_is_empty_image_sized():
    (acc,) = run(coco_unit("hallucination"), P("the zebra", [], "object", "There is no zebra.")).accepted
    assert acc.target_ann_ids == [] and acc.bboxes == []
    assert mask_utils.decode({"size": [H, W], "counts": acc.mask["counts"]}).sum() == 0


def test_lenient_json_accepts_code_fences():
    raw = "```json\n" + json.dumps({"pairs": [P("the chair", [7], "function")]}) + "\n```"
    assert run(coco_unit("reasoning"), raw=raw).accepted


def test_on_the_left_is_a_superlative_only_between_two():
    cups = [obj(1, "cup", rect(10, 10, 40, 40)), obj(2, "cup", rect(200, 10, 240, 40))]
    two = dict(coco_unit("reasoning"), objects=cups)
    assert run(two, P("the cup on the left", [1], "function")).accepted
    assert only_reason(run(two, P("the cup on the left", [2], "function"))) == "spatial"
    assert only_reason(run(two, P("the cup to the right", [1], "function"))) == "spatial"
    # Three dogs: "on the left" does not single one out, so it is not checked.
    assert run(coco_unit("reasoning"), P("the dog on the left", [2], "knowledge")).accepted


def test_superlative_parsing_skips_relations():
    from pipelines.filters.lexicon import tokens

    assert not find_superlatives(tokens("the cup on top of the table"))
    assert not find_superlatives(tokens("the cup to the left of the laptop"))
    assert find_superlatives(tokens("the dog on the left side of the image"))
    assert [p.words for _, _, p in find_superlatives(tokens("the left-most dog"))] == [("left", "most")]


def test_filter_version_changes_with_settings():
    assert filter_version(FilterSettings()) == filter_version(FilterSettings())
    assert filter_version(FilterSettings()) != filter_version(FilterSettings(min_mask_area=65))
    assert filter_version(FilterSettings(), KNOWLEDGE) != filter_version(FilterSettings())
