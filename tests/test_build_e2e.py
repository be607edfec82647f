"""End to end: the real build (plan -> Ray Data stream -> commit) on local disk and on a real S3."""

from __future__ import annotations

import os

import boto3
import pytest
import yaml

from pipelines.build_groundv import main
from pipelines.sources.sample_data import ensure_sample_dataset
from schemas.columns import TASKS
from tests.dataset_checks import (
    SourceMasks,
    decode_sample_mask,
    keys_of,
    latest_manifest,
    outcomes_by_unit,
    read_kind,
)


def check_build(output: str, sources: list[dict], endpoint: str | None = None) -> dict:
    """Assertions shared by the local and S3 builds. Returns the manifest."""
    m = latest_manifest(output, endpoint)
    assert m["version"] == 1 and m["parent_version"] is None
    assert {
        "version",
        "created_at",
        "config",
        "config_hash",
        "teacher",
        "prompts",
        "filters",
        "shards",
        "stats",
    } <= set(m)
    samples = read_kind(output, m, "samples", endpoint)
    rejects = read_kind(output, m, "rejects", endpoint)
    errors = read_kind(output, m, "errors", endpoint)
    raw = read_kind(output, m, "raw", endpoint)

    # Every planned unit accounted for exactly once.
    outcome = outcomes_by_unit(raw)
    assert len(outcome) == m["stats"]["units_planned"] > 0
    s_keys, r_keys, e_keys = keys_of(samples), keys_of(rejects), keys_of(errors)
    for key, out in outcome.items():
        if out == "accepted":
            assert key in s_keys and key not in e_keys
        elif out == "rejected":
            assert key in r_keys and key not in s_keys and key not in e_keys
        else:
            assert key in e_keys and key not in s_keys and key not in r_keys
    assert set(s_keys) | set(r_keys) | set(e_keys) <= set(outcome)
    sample_ids = samples.column("sample_id").to_pylist()
    assert len(sample_ids) == len(set(sample_ids))

    # Accepted rows for all five tasks.
    tasks = set(samples.column("task").to_pylist())
    assert tasks == set(TASKS), f"accepted tasks: {tasks}"

    # Every mask equals the pycocotools union of the source masks of its target ids.
    masks = {s["name"]: SourceMasks(s["annotations"], endpoint) for s in sources}
    for row in samples.to_pylist():
        got = decode_sample_mask(row["mask"])
        assert got.shape == (row["height"], row["width"])
        want = masks[row["source"]].union(row["target_ids"], row["height"], row["width"])
        assert (got == want).all(), f"mask mismatch for {row['sample_id']} ({row['task']})"
        if row["task"] == "hallucination":
            assert row["target_ids"] == [] and not got.any()
        else:
            assert row["target_ids"] and len(row["bboxes"]) == len(row["target_ids"])
    # Stats agree with the rows.
    per = m["stats"]["tasks"]
    assert sum(v["accepted"] for v in per.values()) == samples.num_rows
    assert sum(v["planned"] for v in per.values()) == len(outcome)
    assert m["stats"]["teacher_calls"] == sum(1 for o in outcome.values() if o != "error")
    return m


def test_default_build_local(ray_session, sample_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([f"data.sample.dir={sample_dir}", f"output.uri={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "manifest v000001" in printed and "TOTAL" in printed
    sources = ensure_sample_dataset(str(sample_dir))
    check_build(str(out), sources)
    assert os.path.exists(out / "manifests" / "v000001.json")
    # Receipts are a crash journal only: a committed build leaves none behind.
    assert list(out.rglob("receipts/**/*.json")) == []
    # The work list the workers read is the build's own: gone when its stream ended.
    assert list((out / "cache" / "work").iterdir()) == []


def _upload_tree(local_root: str, bucket: str, prefix: str, endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for dirpath, _, files in os.walk(local_root):
        for f in files:
            path = os.path.join(dirpath, f)
            key = prefix + "/" + os.path.relpath(path, local_root)
            s3.upload_file(path, bucket, key)


def test_build_on_s3(ray_session, sample_dir, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    sources = ensure_sample_dataset(str(sample_dir))
    _upload_tree(str(sample_dir), bucket, "sample", endpoint)
    s3_sources = []
    for s in sources:
        s3_sources.append(
            {
                "name": s["name"],
                "format": s["format"],
                "annotations": f"s3://{bucket}/sample/" + os.path.relpath(s["annotations"], sample_dir),
                "images": f"s3://{bucket}/sample/" + os.path.relpath(s["images"], sample_dir),
            }
        )
    cfg = {
        "data": {"sources": [dict(x, tasks=_tasks_for(x["format"])) for x in s3_sources]},
        "output": {"uri": f"s3://{bucket}/out"},
        "storage": {"endpoint_url": endpoint},
    }
    cfg_file = tmp_path / "s3.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(cfg_file)]) == 0
    check_build(f"s3://{bucket}/out", s3_sources, endpoint)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
        Bucket=bucket, Prefix="out/").get("Contents", [])]
    assert any(k.startswith("out/data/") for k in keys) and not any(k.startswith("out/cache/work/") for k in keys)


def _tasks_for(fmt: str) -> list[str]:
    from pipelines.sources.resolve import _sample_tasks

    return list(_sample_tasks(fmt))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.nope=1", "data.nope"),
        ("teacher.pairs_per_unit=abc", "teacher.pairs_per_unit"),
        ("tasks=[hallucination,flying]", "flying"),
        ("teacher.backend=gpt", "teacher.backend"),
    ],
)
def test_bad_config_stops_before_work(override, needle, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([override, f"output.uri={out}"]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not out.exists()
