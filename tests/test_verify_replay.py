"""The verifier through replay, end to end on the sample data (real Ray, real shards):
export verifier prompts -> answers made by hand (some agree, some not, some missing) -> replay ->
exactly the expected accepted / rejected rows; changing only the verifier prompt re-verifies every
stored pair with zero teacher calls; turning verification off restores every pair."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.build_groundv import main as build_main
from pipelines.cli.export_prompts import main as export_main
from teachers.verifier import default_prompt_path
from tests.dataset_checks import latest_manifest, read_kind

pytestmark = pytest.mark.ray


def _export(base: list[str], out_file, extra: list[str]) -> list[dict]:
    assert export_main([*base, *extra, "--verify", "--out", str(out_file)]) == 0
    return [json.loads(x) for x in open(out_file)]


def _hand_answers(lines: list[dict], samples: dict[str, dict]) -> tuple[list[dict], dict[str, str]]:
    """Every third pair: the listener finds nothing (disagrees); every seventh: no answer at all;
    the rest: exactly the teacher's targets (agrees). Returns answers and sample_id -> expectation."""
    answers, expect = [], {}
    for i, line in enumerate(lines):
        ann_to_local = {o["ann_id"]: o["id"] for o in line["objects"]}
        targets = sorted(ann_to_local[a] for a in samples[line["sample_id"]]["target_ids"])
        if i % 7 == 6:
            expect[line["sample_id"]] = "unverified"
            continue
        agree = i % 3 != 2 or not targets  # an empty answer agrees with a hallucination pair
        ids = targets if agree else []
        answers.append({"verify_key": line["verify_key"], "response": json.dumps({"target_ids": ids})})
        expect[line["sample_id"]] = "pass" if agree else "fail"
    return answers, expect


def test_replay_round_trip_prompt_change_and_off(ray_session, sample_dir, tmp_path):
    out = tmp_path / "out"
    base = [f"data.sample.dir={sample_dir}", f"output.uri={out}", "data.limit=6"]
    assert build_main(base) == 0
    m1 = latest_manifest(str(out))
    samples = {s["sample_id"]: s for s in read_kind(str(out), m1, "samples").to_pylist()}
    n_accepted = len(samples)
    assert n_accepted >= 20

    replay = ["verify.backend=replay", "verify.replay_source=hand-1"]
    lines = _export(base, tmp_path / "verify_prompts.jsonl", replay)
    assert sorted(line["sample_id"] for line in lines) == sorted(samples)
    assert all(line["output_constraint"]["json"] for line in lines)
    answers, expect = _hand_answers(lines, samples)
    assert {"pass", "fail", "unverified"} == set(expect.values())
    verdicts = tmp_path / "verdicts.jsonl"
    verdicts.write_text("".join(json.dumps(a) + "\n" for a in answers))

    assert build_main([*base, *replay, f"verify.verdicts={verdicts}"]) == 0
    m2 = latest_manifest(str(out))
    assert m2["stats"]["teacher_calls"] == 0
    v = m2["stats"]["verify"]
    assert v["verifier_calls"] == n_accepted and v["verdicts_reused"] == 0
    got = {s["sample_id"]: s["verify_verdict"] for s in read_kind(str(out), m2, "samples").to_pylist()}
    assert got == {k: (None if e == "unverified" else e) for k, e in expect.items() if e != "fail"}
    failed = {s["sample_id"] for s in read_kind(str(out), m2, "verify_failed").to_pylist()}
    assert failed == {k for k, e in expect.items() if e == "fail"}
    vrej = [r for r in read_kind(str(out), m2, "rejects").to_pylist() if r["reason"].startswith("verify_")]
    assert len(vrej) == len(failed) and {r["reason"] for r in vrej} == {"verify_no_match"}
    assert all(r["raw_response"] == '{"target_ids": []}' and "hand-1" in r["detail"] for r in vrej)
    assert v["passed"] == sum(e == "pass" for e in expect.values()) and v["failed"] == len(failed)
    assert sum(t["rows_in_dataset"] for t in m2["stats"]["tasks"].values()) == n_accepted - len(failed)

    # Same verifier again: every verdict is stored; the unanswered pairs are asked again.
    assert build_main([*base, *replay, f"verify.verdicts={verdicts}"]) == 0
    v3 = latest_manifest(str(out))["stats"]["verify"]
    assert v3["verdicts_reused"] == len(answers) and v3["verifier_calls"] == n_accepted - len(answers)

    # Only the verifier prompt changes: every stored pair (failed ones included) is re-verified.
    prompt = tmp_path / "listener_v2.yaml"
    shutil.copy(default_prompt_path("listener"), prompt)
    prompt.write_text(prompt.read_text() + "\n# v2: same words, new hash\n")
    replay2 = [*replay, f"verify.prompt_file={prompt}"]
    lines2 = _export(base, tmp_path / "verify_prompts2.jsonl", replay2)
    assert len(lines2) == n_accepted and not {x["verify_key"] for x in lines2} & {x["verify_key"] for x in lines}
    verdicts2 = tmp_path / "verdicts2.jsonl"  # this time the listener agrees with everything
    verdicts2.write_text("".join(json.dumps({"verify_key": x["verify_key"], "response": json.dumps(
        {"target_ids": sorted({o["ann_id"]: o["id"] for o in x["objects"]}[a]
                              for a in samples[x["sample_id"]]["target_ids"])})}) + "\n" for x in lines2))
    assert build_main([*base, *replay2, f"verify.verdicts={verdicts2}", "--dry-run"]) == 0
    assert build_main([*base, *replay2, f"verify.verdicts={verdicts2}"]) == 0
    m4 = latest_manifest(str(out))
    assert m4["stats"]["teacher_calls"] == 0
    assert m4["stats"]["verify"]["verifier_calls"] == n_accepted
    assert not read_kind(str(out), m4, "verify_failed").num_rows
    assert {s["verify_verdict"] for s in read_kind(str(out), m4, "samples").to_pylist()} == {"pass"}
    assert not [r for r in read_kind(str(out), m4, "rejects").to_pylist() if r["reason"].startswith("verify_")]

    # Verification off: every pair back in samples, unverified.
    assert build_main(base) == 0
    m5 = latest_manifest(str(out))
    rows = read_kind(str(out), m5, "samples").to_pylist()
    assert len(rows) == n_accepted and {r["verify_verdict"] for r in rows} == {None}
    assert build_main(base) == 0  # off twice: the stored verdicts are still carried
    # ... so turning the second verifier back on asks nothing again.
    assert build_main([*base, *replay2, f"verify.verdicts={verdicts2}"]) == 0
    m7 = latest_manifest(str(out))
    assert m7["stats"]["verify"]["verifier_calls"] == 0
    assert m7["stats"]["verify"]["verdicts_reused"] == n_accepted
    assert {s["verify_verdict"] for s in read_kind(str(out), m7, "samples").to_pylist()} == {"pass"}
