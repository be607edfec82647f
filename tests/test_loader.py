"""The version loader: pyarrow / Ray / Hugging Face readers over exactly one manifest's shards."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from pipelines.build_groundv import main as build_main
from pipelines.consumers.dataset import (
    VersionNotFound,
    load_manifest,
    shard_uris,
    to_arrow_dataset,
    to_hf_dataset,
    to_ray_dataset,
)
from schemas.columns import ERROR_SCHEMA, SAMPLE_SCHEMA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manifest_json(out: str, version: int) -> dict:
    with open(os.path.join(out, "manifests", f"v{version:06d}.json")) as fh:
        return json.load(fh)


def rows_of(m: dict, kind: str, task: str | None = None) -> int:
    return sum(s["rows"] for s in m["shards"] if s["kind"] == kind and (task is None or s["task"] == task))


def sample_ids(out: str, m: dict) -> set[str]:
    """Independent read: pyarrow.parquet on the paths the manifest names."""
    ids: set[str] = set()
    for s in m["shards"]:
        if s["kind"] == "samples":
            ids.update(pq.read_table(os.path.join(out, s["path"]), columns=["sample_id"])["sample_id"].to_pylist())
    return ids


@pytest.fixture(scope="module")
def two_versions(ray_session, sample_dir, tmp_path_factory):
    """v1 and v2 of one output; v2 after a reasoning prompt edit. A stray, uncommitted shard sits in
    data/samples/ so every count below also proves that no loader lists data/."""
    base = tmp_path_factory.mktemp("loader")
    out, prompts = str(base / "out"), base / "prompts"
    shutil.copytree(os.path.join(ROOT, "teachers", "prompts"), prompts)
    args = [f"data.sample.dir={sample_dir}", f"output.uri={out}", f"teacher.prompts_dir={prompts}"]
    assert build_main(args) == 0
    with open(prompts / "reasoning.yaml", "a") as fh:
        fh.write("\n# a clarified rule: prefer the everyday function of an object\n")
    assert build_main(args) == 0
    m1, m2 = manifest_json(out, 1), manifest_json(out, 2)
    first = next(s for s in m2["shards"] if s["kind"] == "samples")
    stray = os.path.join(out, "data", "samples", "reasoning", "zz", "uncommitted.parquet")
    os.makedirs(os.path.dirname(stray))
    shutil.copy(os.path.join(out, first["path"]), stray)
    return out, m1, m2


def test_manifest_versions_differ_by_the_prompt_edit(two_versions):
    out, m1, m2 = two_versions
    latest, old = load_manifest(out), load_manifest(out, version=1)
    assert (latest.version, latest.parent_version, old.version) == (2, 1, 1)
    assert [t for t in latest.prompts if latest.prompts[t] != old.prompts[t]] == ["reasoning"]
    ids1, ids2 = sample_ids(out, m1), sample_ids(out, m2)
    assert len(ids1) == rows_of(m1, "samples") and len(ids2) == rows_of(m2, "samples")
    assert ids1 != ids2 and len(ids1 & ids2) == rows_of(m2, "samples") - rows_of(m2, "samples", "reasoning")


def test_unknown_version_and_empty_output(two_versions, tmp_path):
    out, _, _ = two_versions
    with pytest.raises(VersionNotFound, match=r"version 7 not found.*\[1, 2\]"):
        load_manifest(out, version=7)
    with pytest.raises(VersionNotFound, match="no committed version"):
        to_arrow_dataset(str(tmp_path / "nothing"))


def test_shard_uris_are_the_manifest_paths(two_versions):
    out, _, m2 = two_versions
    m = load_manifest(out)
    want = [os.path.join(out, s["path"]) for s in m2["shards"] if s["kind"] == "samples"]
    assert shard_uris(m, out) == want
    parts = [os.path.join(out, s["path"]) for s in m2["shards"] if s["kind"] == "samples" and s["task"] == "part"]
    assert parts and shard_uris(m, out, task="part") == parts
    assert all("uncommitted" not in u for u in shard_uris(m, out, kind="raw"))
    with pytest.raises(ValueError, match="unknown shard kind"):
        shard_uris(m, out, kind="bogus")


def test_arrow_dataset_reads_exactly_each_versions_rows(two_versions):
    out, m1, m2 = two_versions
    for version, m in ((1, m1), (2, m2), (None, m2)):
        ds = to_arrow_dataset(out, version=version)
        assert ds.schema.names == SAMPLE_SCHEMA.names
        table = ds.to_table()
        assert table.num_rows == rows_of(m, "samples")
        assert set(table["sample_id"].to_pylist()) == sample_ids(out, m)
    part = to_arrow_dataset(out, task="part").to_table(columns=["task"])
    assert part.num_rows == rows_of(m2, "samples", "part") and set(part["task"].to_pylist()) == {"part"}
    assert to_arrow_dataset(out, kind="raw").count_rows() == rows_of(m2, "raw")
    errors = to_arrow_dataset(out, kind="errors")
    assert errors.count_rows() == 0 and errors.schema.names == ERROR_SCHEMA.names


def test_ray_dataset_reads_exactly_each_versions_rows(two_versions):
    out, m1, m2 = two_versions
    ds = to_ray_dataset(out)
    rows = ds.take_all()
    assert len(rows) == rows_of(m2, "samples")
    assert {r["sample_id"] for r in rows} == sample_ids(out, m2)
    assert list(rows[0]) == SAMPLE_SCHEMA.names
    old = to_ray_dataset(out, version=1, columns=["sample_id"])
    assert {r["sample_id"] for r in old.take_all()} == sample_ids(out, m1)
    assert to_ray_dataset(out, task="reasoning").count() == rows_of(m2, "samples", "reasoning")
    assert to_ray_dataset(out, kind="errors").count() == 0


def test_loaders_over_s3(two_versions, s3_bucket, tmp_path):
    import boto3

    out, m1, m2 = two_versions
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    for dirpath, _, files in os.walk(out):
        for f in files:
            path = os.path.join(dirpath, f)
            client.upload_file(path, bucket, "gv/" + os.path.relpath(path, out))
    uri = f"s3://{bucket}/gv"
    assert load_manifest(uri, endpoint_url=endpoint).version == 2
    assert to_arrow_dataset(uri, endpoint_url=endpoint).count_rows() == rows_of(m2, "samples")
    old = to_arrow_dataset(uri, version=1, endpoint_url=endpoint).to_table(columns=["sample_id"])
    assert set(old["sample_id"].to_pylist()) == sample_ids(out, m1)
    ray_ds = to_ray_dataset(uri, endpoint_url=endpoint, columns=["sample_id"])
    assert {r["sample_id"] for r in ray_ds.take_all()} == sample_ids(out, m2)
    try:
        import datasets  # noqa: F401  (optional: see pipelines/consumers/dataset.py HF_DATASETS_PIN)
    except ImportError:
        return
    hf = to_hf_dataset(uri, version=1, endpoint_url=endpoint, cache_dir=str(tmp_path / "hf"))
    assert set(hf["sample_id"]) == sample_ids(out, m1)


def test_hugging_face_dataset(two_versions, tmp_path):
    pytest.importorskip("datasets")
    out, m1, _ = two_versions
    hf = to_hf_dataset(out, version=1, cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == rows_of(m1, "samples")
    assert hf.column_names == SAMPLE_SCHEMA.names
    assert set(hf["sample_id"]) == sample_ids(out, m1)
    row = hf[0]
    assert set(row["mask"]) == {"size", "counts"} and row["mask"]["size"] == [row["height"], row["width"]]
    empty = to_hf_dataset(out, kind="errors", cache_dir=str(tmp_path / "hf"))
    assert empty.num_rows == 0 and empty.column_names == ERROR_SCHEMA.names
