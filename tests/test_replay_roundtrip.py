"""Export prompts -> answer them by hand -> build with the replay teacher -> the expected rows."""

from __future__ import annotations

import json
from collections import defaultdict

from pipelines.build_groundv import main as build_main
from pipelines.cli.export_prompts import main as export_main
from tests.dataset_checks import latest_manifest, read_kind

REPLAY = ["teacher.backend=replay", "teacher.replay_source=hand-made-1"]


def _answer(line: dict) -> tuple[dict, list[int]] | None:
    """A correct multi_object answer: every instance of a category with >= 2 instances."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for o in line["objects"]:
        by_cat[o["category"]].append(o)
    for cat, objs in sorted(by_cat.items()):
        if cat != "person" and len(objs) >= 2 and not any(o.get("part_of") for o in objs):
            ids = [o["id"] for o in objs]
            pair = {"instruction": f"all the {cat}s in the picture", "answer": f"All the {cat}s.",
                    "target_ids": ids, "subtype": "same_category"}
            return {"pairs": [pair]}, sorted(o["ann_id"] for o in objs)
    return None


def test_export_then_replay_gives_the_expected_rows(ray_session, sample_dir, tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.jsonl"
    base = [f"data.sample.dir={sample_dir}", f"output.uri={out}", *REPLAY]
    assert export_main([*base, "--out", str(prompts)]) == 0
    lines = [json.loads(x) for x in open(prompts)]
    answers, expected = [], {}
    for line in lines:
        if line["task"] != "multi_object":
            continue
        made = _answer(line)
        if made is None:
            continue
        response, ann_ids = made
        answers.append({"gen_key": line["gen_key"], "response": json.dumps(response)})
        expected[line["gen_key"]] = ann_ids
    assert len(expected) >= 5
    responses = tmp_path / "answers.jsonl"
    responses.write_text("\n".join(json.dumps(a) for a in answers) + "\n")

    assert build_main([*base, f"teacher.responses={responses}"]) == 0
    m = latest_manifest(str(out))
    raw = {r["gen_key"]: r for r in read_kind(str(out), m, "raw").to_pylist()}
    # The build planned exactly the exported units (same keys).
    assert set(raw) == {line["gen_key"] for line in lines}
    samples = read_kind(str(out), m, "samples").to_pylist()
    got = {s["gen_key"]: sorted(s["target_ids"]) for s in samples}
    assert got == expected
    assert all(s["instruction"].startswith("all the ") for s in samples)
    errors = read_kind(str(out), m, "errors").to_pylist()
    assert {e["reason"] for e in errors} == {"no_response"}
    assert {e["gen_key"] for e in errors} == set(raw) - set(expected)
    assert m["stats"]["teacher_calls"] == len(expected)
