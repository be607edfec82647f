"""Incremental rebuilds: reuse by generation key, one-prompt rebuilds, annotation changes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pipelines.build_groundv import main
from tests.dataset_checks import latest_manifest, read_kind


def rows_by_key(output: str, manifest: dict, kind: str = "samples") -> dict[str, list[dict]]:
    t = read_kind(output, manifest, kind)
    out: dict[str, list[dict]] = {}
    for r in t.to_pylist() if t.num_columns else []:
        out.setdefault(r["gen_key"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r.get("sample_id") or r.get("reason") or "")
    return out


@pytest.fixture
def sample_copy(sample_dir, tmp_path):
    """A private copy of the sample dataset (tests edit it)."""
    dst = tmp_path / "sample"
    shutil.copytree(sample_dir, dst)
    return dst


def build(sample: str, out: str, *extra: str) -> dict:
    assert main([f"data.sample.dir={sample}", f"output.uri={out}", *extra]) == 0
    return latest_manifest(out)


def test_rebuild_is_a_noop_and_reads_no_image(ray_session, sample_copy, tmp_path, capsys):
    out = str(tmp_path / "out")
    v1 = build(str(sample_copy), out)
    # Poison every image while keeping size and mtime (the listing identity): if the rebuild read a
    # single image byte it would fail to decode and show up as an error.
    for dirpath, _, files in os.walk(sample_copy):
        for f in files:
            if f.lower().endswith((".jpg", ".png")):
                p = os.path.join(dirpath, f)
                st = os.stat(p)
                with open(p, "r+b") as fh:
                    fh.write(b"\0" * min(64, st.st_size))
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    v2 = build(str(sample_copy), out)
    # Nothing changed: no unit ran (a poisoned image would have been an error) and no new version.
    assert "nothing changed, v1 is current" in capsys.readouterr().out
    assert v2 == v1
    assert sorted(os.listdir(os.path.join(out, "manifests"))) == ["v000001.json"]


def test_one_prompt_edit_regenerates_only_that_task(ray_session, sample_copy, tmp_path):
    out = str(tmp_path / "out")
    prompts = tmp_path / "prompts"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "teachers", "prompts"), prompts)
    v1 = build(str(sample_copy), out, f"teacher.prompts_dir={prompts}")
    with open(prompts / "reasoning.yaml", "a") as fh:
        fh.write("\n# a clarified rule\n")
    v2 = build(str(sample_copy), out, f"teacher.prompts_dir={prompts}")
    per = v2["stats"]["tasks"]
    assert (
        per["reasoning"]["teacher_calls"] == per["reasoning"]["planned"] == v1["stats"]["tasks"]["reasoning"]["planned"]
    )
    assert per["reasoning"]["generate_reasons"] == {"prompt changed": per["reasoning"]["planned"]}
    assert per["reasoning"]["dropped"] == per["reasoning"]["planned"]
    for task, s in per.items():
        if task != "reasoning":
            assert s["teacher_calls"] == 0 and s["reused"] == s["planned"]
    r1, r2 = rows_by_key(out, v1), rows_by_key(out, v2)
    other1 = {k: v for k, v in r1.items() if v[0]["task"] != "reasoning"}
    other2 = {k: v for k, v in r2.items() if v[0]["task"] != "reasoning"}
    assert other1 == other2 and other1
    new_reasoning = {k for k, v in r2.items() if v[0]["task"] == "reasoning"}
    old_reasoning = {k for k, v in r1.items() if v[0]["task"] == "reasoning"}
    assert new_reasoning and not (new_reasoning & old_reasoning)
    assert v2["prompts"]["reasoning"] != v1["prompts"]["reasoning"]
    assert {t: h for t, h in v2["prompts"].items() if t != "reasoning"} == {
        t: h for t, h in v1["prompts"].items() if t != "reasoning"
    }


def test_annotation_change_regenerates_only_that_image(ray_session, sample_copy, tmp_path):
    out = str(tmp_path / "out")
    v1 = build(str(sample_copy), out)
    coco_file = next(
        p for p in sample_copy.rglob("*.json") if "coco" in p.name.lower() and "paco" not in p.name.lower()
    )
    data = json.loads(coco_file.read_text())
    ann = next(a for a in data["annotations"] if not a.get("iscrowd") and isinstance(a["segmentation"], list))
    ann["segmentation"][0][0] += 1.0  # move one polygon vertex by one pixel
    coco_file.write_text(json.dumps(data))
    v2 = build(str(sample_copy), out)
    raw1 = read_kind(out, v1, "raw").to_pylist()
    units_of_image = [r for r in raw1 if r["image_id"] == ann["image_id"] and r["source"].startswith("coco")]
    assert units_of_image
    assert v2["stats"]["teacher_calls"] == len(units_of_image)
    regenerated = {t: s["generate_reasons"] for t, s in v2["stats"]["tasks"].items() if s["generate_reasons"]}
    assert all(
        reasons == {"annotations changed": reasons.get("annotations changed")} for reasons in regenerated.values()
    )
    raw2 = {r["gen_key"]: r for r in read_kind(out, v2, "raw").to_pylist()}
    assert len(raw2) == len(raw1)
    changed = [r for r in raw2.values() if r["image_id"] == ann["image_id"] and r["source"].startswith("coco")]
    assert {r["gen_key"] for r in changed}.isdisjoint({r["gen_key"] for r in units_of_image})


def test_dry_run_writes_nothing(ray_session, sample_copy, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([f"data.sample.dir={sample_copy}", f"output.uri={out}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "new unit" in printed and "dry run" in printed
    assert not out.exists()


def test_filter_change_rechecks_stored_responses_without_teacher(ray_session, sample_copy, tmp_path):
    out = str(tmp_path / "out")
    v1 = build(str(sample_copy), out)
    v2 = build(str(sample_copy), out, "filters.min_mask_area=1000000")
    assert v2["stats"]["teacher_calls"] == 0
    assert v2["filters"]["version"] != v1["filters"]["version"]
    assert v2["stats"]["totals"]["refiltered"] == v1["stats"]["units_planned"]
    samples2 = read_kind(out, v2, "samples")
    # Every pair with a target is now too small; only target-less hallucination pairs survive.
    assert set(samples2.column("task").to_pylist()) == {"hallucination"}
    rejects2 = read_kind(out, v2, "rejects").to_pylist()
    assert sum(r["reason"] == "mask_too_small" for r in rejects2) > 0
    assert {r["filter_version"] for r in rejects2} == {v2["filters"]["version"]}
    # Back to the defaults: again no teacher call, and the dataset equals v1's pair for pair.
    v3 = build(str(sample_copy), out)
    assert v3["stats"]["teacher_calls"] == 0 and v3["filters"]["version"] == v1["filters"]["version"]
    strip = lambda rows: {k: [{c: x for c, x in r.items()} for r in v] for k, v in rows.items()}  # noqa: E731
    assert strip(rows_by_key(out, v3)) == strip(rows_by_key(out, v1))
    raw3 = read_kind(out, v3, "raw").column("gen_key").to_pylist()
    assert len(raw3) == len(set(raw3)) == v1["stats"]["units_planned"]
