"""Prompt files (teachers/prompts/*.yaml), their loader, and the chat messages / answer schema."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from pipelines.core.knowledge import load_knowledge
from schemas.columns import ANSWER_FIELDS, TASK_SUBTYPES, TASKS
from teachers.messages import IMAGE_PART, answer_json_schema, build_messages, prefix_messages
from teachers.prompts import PromptError, default_prompts_dir, load_prompt, load_prompts

PROMPTS = default_prompts_dir()


@pytest.fixture(scope="module")
def specs():
    return load_prompts(PROMPTS, TASKS)


def test_every_task_loads_with_three_examples(specs):
    assert set(specs) == set(TASKS)
    for task, spec in specs.items():
        assert spec.subtypes == TASK_SUBTYPES[task]
        assert len(spec.examples) == 3, task
        assert spec.system and spec.rules and spec.output_rules
        assert len(spec.content_hash) == 64


def _parent_names(category: str) -> set[str]:
    kn = load_knowledge()
    names = kn.names_for(category) | {category, category.split()[-1]}
    return {n for n in names if n}


@pytest.mark.parametrize("task", TASKS)
def test_examples_are_consistent_with_their_tables(specs, task):
    for ex in specs[task].examples:
        by_id = {o["id"]: o for o in ex["objects"]}
        ids = [o["id"] for o in ex["objects"]]
        assert ids == list(range(1, len(ids) + 1))
        # Same ordering as pipelines/core/object_table.py: whole objects first, then parts.
        is_part = ["part_of" in o for o in ex["objects"]]
        assert is_part == sorted(is_part)
        subtypes_seen = set()
        for pair in ex["response"]["pairs"]:
            assert list(pair) == list(ANSWER_FIELDS)
            assert pair["subtype"] in TASK_SUBTYPES[task]
            subtypes_seen.add(pair["subtype"])
            targets = pair["target_ids"]
            assert all(t in by_id for t in targets)
            assert not any(by_id[t].get("crowd") for t in targets)
            assert len(set(targets)) == len(targets)
            if task == "hallucination":
                assert targets == []
            elif task == "multi_object":
                assert len(targets) >= 2
            else:
                assert len(targets) >= 1
            if task == "part":
                assert all("part_of" in by_id[t] for t in targets)
                text = pair["instruction"].lower()
                for parent in {by_id[t]["part_of"] for t in targets}:
                    names = _parent_names(by_id[parent]["category"])
                    assert any(n in text for n in names), (pair["instruction"], names)
            # Ids and coordinates never appear in the text the student model will see.
            for field in ("instruction", "answer"):
                assert " id " not in f" {pair[field].lower()} " and "[" not in pair[field]
        if task == "hallucination":
            assert len(subtypes_seen) >= 2


def test_hallucination_examples_name_absent_categories(specs):
    kn = load_knowledge()
    for ex in specs["hallucination"].examples:
        present = {o["category"] for o in ex["objects"]}
        for pair in ex["response"]["pairs"]:
            if pair["subtype"] == "object":
                # The requested object is the first "the <noun>" of the instruction.
                noun = re.search(r"\bthe (\w+)", pair["instruction"].lower()).group(1)
                assert not any(kn.refers_to(noun, p) or kn.refers_to(p, noun) for p in present), noun
                assert noun in pair["answer"].lower()


def test_hash_changes_only_for_the_edited_file(tmp_path):
    copy = tmp_path / "prompts"
    shutil.copytree(PROMPTS, copy)
    before = {t: load_prompt(str(copy), t).content_hash for t in TASKS}
    assert before == {t: load_prompt(PROMPTS, t).content_hash for t in TASKS}
    path = copy / "reasoning.yaml"
    path.write_text(path.read_text() + "\n# a comment is an edit too\n")
    after = {t: load_prompt(str(copy), t).content_hash for t in TASKS}
    assert after["reasoning"] != before["reasoning"]
    assert {t: h for t, h in after.items() if t != "reasoning"} == {t: h for t, h in before.items() if t != "reasoning"}


def _edit(tmp_path, task, mutate):
    copy = tmp_path / "prompts"
    shutil.copytree(PROMPTS, copy)
    path = copy / f"{task}.yaml"
    doc = yaml.safe_load(path.read_text())
    mutate(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(copy), str(path)


@pytest.mark.parametrize(
    "task,mutate,message",
    [
        ("part", lambda d: d.update(subtypes=["part", "whole"]), "subtypes"),
        ("reasoning", lambda d: d.update(examples=d["examples"][:2]), "at least 3 examples"),
        ("multi_object", lambda d: d["examples"][0]["response"]["pairs"][0].update(target_ids=[1]), "needs 2"),
        ("hallucination", lambda d: d["examples"][1]["response"]["pairs"][0].update(target_ids=[1]), "needs 0"),
        ("part", lambda d: d["examples"][0]["response"]["pairs"][0].update(target_ids=[1]), "not a part"),
        ("multi_granularity", lambda d: d["examples"][2]["response"]["pairs"][0].update(target_ids=[99]), "99"),
        ("multi_object", lambda d: d["examples"][2]["response"]["pairs"][0].update(target_ids=[1, 5]), "crowd"),
        ("reasoning", lambda d: d["examples"][0]["response"]["pairs"][0].update(subtype="vibes"), "subtype"),
    ],
)
def test_bad_prompt_files_name_the_file(tmp_path, task, mutate, message):
    folder, path = _edit(tmp_path, task, mutate)
    with pytest.raises(PromptError) as err:
        load_prompt(folder, task)
    assert path in str(err.value) and message in str(err.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(PromptError, match="not found"):
        load_prompt(str(tmp_path), "part")
    with pytest.raises(PromptError, match="unknown task"):
        load_prompt(PROMPTS, "poetry")


TABLE_A = '{"id": 1, "category": "dog", "box": [0, 0, 10, 10]}'
TABLE_B = '{"id": 1, "category": "cat", "box": [5, 5, 50, 50]}\n{"id": 2, "category": "cup", "box": [1, 1, 9, 9]}'


@pytest.mark.parametrize("with_image", [True, False])
def test_prefix_identical_across_images(specs, with_image):
    for spec in specs.values():
        a = build_messages(spec, TABLE_A, 3, with_image)
        b = build_messages(spec, TABLE_B, 5, with_image)
        assert a[:-1] == b[:-1] == prefix_messages(spec, with_image)
        assert a[-1] != b[-1]
        assert [m["role"] for m in a] == ["system"] + ["user", "assistant"] * 3 + ["user"]
        # Few-shot answers are the examples' JSON, and their tables are rendered one object a line.
        for ex, msg in zip(spec.examples, a[2:-1:2], strict=True):
            assert json.loads(msg["content"]) == ex["response"]
        for ex, msg in zip(spec.examples, a[1:-1:2], strict=True):
            assert json.dumps(ex["objects"][0], separators=(", ", ": ")) in msg["content"]


def test_image_part_after_text(specs):
    spec = specs["part"]
    last = build_messages(spec, TABLE_B, 4, with_image=True)[-1]
    assert last["role"] == "user"
    assert [p["type"] for p in last["content"]] == ["text", "image"]
    assert last["content"][1] == IMAGE_PART
    assert TABLE_B in last["content"][0]["text"] and "4 pairs" in last["content"][0]["text"]
    text_only = build_messages(spec, TABLE_B, 4, with_image=False)[-1]
    assert [p["type"] for p in text_only["content"]] == ["text"]
    assert "NOT see the image" in build_messages(spec, TABLE_B, 4, with_image=False)[0]["content"]


def test_answer_schema_enums():
    s = answer_json_schema("multi_object", ["same_category", "mixed_category"], [3, 1, 2], 4)
    pairs = s["properties"]["pairs"]
    assert pairs["minItems"] == 1 and pairs["maxItems"] == 4
    item = pairs["items"]
    assert item["required"] == list(ANSWER_FIELDS) and item["additionalProperties"] is False
    assert s["additionalProperties"] is False
    assert item["properties"]["target_ids"]["items"]["enum"] == [1, 2, 3]
    assert item["properties"]["target_ids"]["minItems"] == 2
    assert item["properties"]["subtype"]["enum"] == ["same_category", "mixed_category"]
    h = answer_json_schema("hallucination", ["object", "attribute", "relation"], [1, 2], 2)
    assert h["properties"]["pairs"]["items"]["properties"]["target_ids"]["maxItems"] == 0
    empty = answer_json_schema("hallucination", ["object"], [], 1)
    assert "enum" not in empty["properties"]["pairs"]["items"]["properties"]["target_ids"]["items"]


def test_examples_validate_against_their_schema(specs):
    jsonschema = pytest.importorskip("jsonschema")
    for task, spec in specs.items():
        for ex in spec.examples:
            ids = [o["id"] for o in ex["objects"]]
            schema = answer_json_schema(task, list(spec.subtypes), ids, len(ex["response"]["pairs"]))
            jsonschema.validate(ex["response"], schema)
        with pytest.raises(jsonschema.ValidationError):
            bad = {"pairs": [{"instruction": "x", "answer": "y", "target_ids": [42], "subtype": spec.subtypes[0]}]}
            jsonschema.validate(bad, answer_json_schema(task, list(spec.subtypes), [1, 2], 3))
