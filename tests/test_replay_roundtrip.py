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


def _export_and_answer(base: list[str], tmp_path) -> tuple[list[dict], dict[str, str], dict[str, list[int]]]:
    """Export (one line per request), answer every multi_object line that has a correct answer:
    (lines, request_key -> response, gen_key -> the line's ann ids, for every unit of those lines:
    a unit that shares the request has the same objects under its own source's ids)."""
    prompts = tmp_path / "prompts.jsonl"
    assert export_main([*base, "--out", str(prompts)]) == 0
    lines = [json.loads(x) for x in open(prompts)]
    answers, expected = {}, {}
    for line in lines:
        if line["task"] != "multi_object":
            continue
        made = _answer(line)
        if made is None:
            continue
        response, ann_ids = made
        answers[line["request_key"]] = json.dumps(response)
        for u in line["units"]:
            expected[u["gen_key"]] = ann_ids
    return lines, answers, expected


def _write(path, records: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(a) for a in records) + "\n")
    return str(path)


def test_export_then_replay_gives_the_expected_rows(ray_session, sample_dir, tmp_path):
    """One answer per request line reaches every unit of the request; the same pairs are accepted as
    with answers written per unit (the format of earlier exports, still read)."""
    out = tmp_path / "out"
    base = [f"data.sample.dir={sample_dir}", f"output.uri={out}", *REPLAY]
    lines, answers, expected = _export_and_answer(base, tmp_path)
    assert len(expected) > len(answers) >= 5  # some answered requests are shared by several units
    per_request = _write(tmp_path / "answers.jsonl", [{"request_key": k, "response": r} for k, r in answers.items()])
    per_unit = _write(tmp_path / "per_unit.jsonl", [
        {"gen_key": u["gen_key"], "response": answers[x["request_key"]]}
        for x in lines if x["request_key"] in answers for u in x["units"]])

    assert build_main([*base, f"teacher.responses={per_request}"]) == 0
    m = latest_manifest(str(out))
    raw = {r["gen_key"]: r for r in read_kind(str(out), m, "raw").to_pylist()}
    # The build planned exactly the exported units (same keys).
    assert set(raw) == {u["gen_key"] for line in lines for u in line["units"]}
    samples = read_kind(str(out), m, "samples").to_pylist()
    got = {s["gen_key"]: sorted(s["target_ids"]) for s in samples}
    assert set(got) == set(expected)
    leads = {x["gen_key"] for x in lines if x["request_key"] in answers}
    assert all(got[k] == expected[k] for k in leads)  # the exported id map, exactly
    assert all(len(got[k]) == len(expected[k]) for k in got)
    assert all(s["instruction"].startswith("all the ") for s in samples)
    errors = read_kind(str(out), m, "errors").to_pylist()
    assert {e["reason"] for e in errors} == {"no_response"}
    assert {e["gen_key"] for e in errors} == set(raw) - set(expected)
    # one call per answered request; the other units of the request share its answer
    assert m["stats"]["teacher_calls"] == len(answers)
    assert m["stats"]["requests_saved"] == len(expected) - len(answers)

    out_units = tmp_path / "out_per_unit"
    assert build_main([*base, f"output.uri={out_units}", f"teacher.responses={per_unit}"]) == 0
    m2 = latest_manifest(str(out_units))
    pairs = lambda o, mm: sorted((s["sample_id"], s["gen_key"], s["instruction"], tuple(s["target_ids"]))  # noqa: E731
                                 for s in read_kind(str(o), mm, "samples").to_pylist())
    assert pairs(out, m) == pairs(out_units, m2)
    assert m2["stats"]["teacher_calls"] == len(expected)  # every unit had its own line
