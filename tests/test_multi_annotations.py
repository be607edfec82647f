"""A source given as several annotation files (a glob or a folder): parsed in parallel on Ray,
cached per file, same units and keys as the single file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.build_groundv import main
from pipelines.sources.sample_data import ensure_sample_dataset
from tests.dataset_checks import latest_manifest, read_kind


def split_coco(src: Path, dst: Path, parts: int = 3) -> list[Path]:
    """Split a COCO file into `parts` self-contained files (every category in each; images in order)."""
    data = json.loads(src.read_text())
    dst.mkdir(parents=True, exist_ok=True)
    imgs = data["images"]
    step = -(-len(imgs) // parts)
    out = []
    for i in range(parts):
        chunk = imgs[i * step:(i + 1) * step]
        ids = {im["id"] for im in chunk}
        part = {**data, "images": chunk, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
        p = dst / f"part-{i}.json"
        p.write_text(json.dumps(part))
        out.append(p)
    return out


@pytest.fixture
def coco(tmp_path):
    """The sample's COCO source (a private copy) and the same file split into 3 parts."""
    made = ensure_sample_dataset(str(tmp_path / "sample"), num_images=24, seed=0)
    src = next(m for m in made if m["format"] == "coco")
    parts = split_coco(Path(src["annotations"]), tmp_path / "ann")
    return src, parts


def build(tmp: Path, src: dict, annotations: str, name: str) -> tuple[int, str]:
    out = tmp / name
    cfg = {"data": {"sources": [{**src, "annotations": annotations}]}, "output": {"uri": str(out)}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["--config", str(path)]), str(out)


def cache_files(out: str) -> set[str]:
    return set(os.listdir(os.path.join(out, "cache", "index")))


def keys(out: str, kind: str) -> set[tuple]:
    t = read_kind(out, latest_manifest(out), kind)
    return {(r["gen_key"], r.get("sample_id")) for r in t.to_pylist()} if t.num_columns else set()


def test_split_source_builds_the_same_units_and_keys(ray_session, coco, tmp_path, capsys):
    src, parts = coco
    rc1, single = build(tmp_path, src, src["annotations"], "single")
    rc2, split = build(tmp_path, src, str(parts[0].parent / "part-*.json"), "split")
    assert rc1 == rc2 == 0
    assert "3 annotation files parsed, 0 read from the cache" in capsys.readouterr().out
    assert len(cache_files(single)) == 1 and len(cache_files(split)) == 3  # one cached index per file
    for kind in ("samples", "raw"):
        assert keys(split, kind) == keys(single, kind) and keys(single, kind)
    m1, m2 = latest_manifest(single), latest_manifest(split)
    assert m1["stats"]["teacher_calls"] == m2["stats"]["teacher_calls"] > 0
    # a folder of the same files is the same source
    rc3, folder = build(tmp_path, src, str(parts[0].parent), "folder")
    assert rc3 == 0 and keys(folder, "samples") == keys(single, "samples")


def test_editing_one_file_reindexes_only_that_file(ray_session, coco, tmp_path, capsys):
    src, parts = coco
    glob = str(parts[0].parent / "*.json")
    assert build(tmp_path, src, glob, "out")[0] == 0
    out = str(tmp_path / "out")
    before = cache_files(out)
    raw1 = read_kind(out, latest_manifest(out), "raw").to_pylist()
    data = json.loads(parts[1].read_text())
    ann = next(a for a in data["annotations"] if not a.get("iscrowd") and isinstance(a["segmentation"], list))
    ann["segmentation"][0][0] += 1.0  # move one polygon vertex by one pixel
    parts[1].write_text(json.dumps(data))
    capsys.readouterr()
    assert build(tmp_path, src, glob, "out")[0] == 0
    assert "1 annotation files parsed, 2 read from the cache" in capsys.readouterr().out
    after = cache_files(out)
    assert before < after and len(after - before) == 1  # one new cached index: the edited file's
    units = [r for r in raw1 if r["image_id"] == ann["image_id"]]
    assert units and latest_manifest(out)["stats"]["teacher_calls"] == len(units)


def test_same_image_id_in_two_files_is_a_data_error(ray_session, coco, tmp_path, capsys):
    src, parts = coco
    data = json.loads(parts[2].read_text())
    first = json.loads(parts[0].read_text())["images"][0]
    data["images"].append(first)
    parts[2].write_text(json.dumps(data))
    rc, _ = build(tmp_path, src, str(parts[0].parent), "dup")
    err = capsys.readouterr().err
    assert rc == 2
    assert f"image id {first['id']}" in err and str(parts[0]) in err and str(parts[2]) in err


def test_glob_matching_nothing_is_a_config_error(coco, tmp_path, capsys):
    src, parts = coco
    rc, _ = build(tmp_path, src, str(parts[0].parent / "nope-*.json"), "none")
    assert rc == 2 and "no annotation file matches" in capsys.readouterr().err


def test_single_file_source_keeps_its_cache_key(tmp_path):
    """Existing caches stay valid: a one-file source has the key it had before."""
    from pipelines.sources.resolve import SourceSpec, _file_cache_uri, index_cache_uri
    from pipelines.storage.fs import StorageSpec

    f = tmp_path / "a.json"
    f.write_text("{}")
    spec = SourceSpec("s", "coco", str(f), str(tmp_path), [])
    assert index_cache_uri(spec, StorageSpec(), str(tmp_path / "c")) == _file_cache_uri(
        spec, str(f), StorageSpec(), str(tmp_path / "c"))
    shutil.rmtree(tmp_path / "c", ignore_errors=True)


def _pid_table(i: int):
    import pyarrow as pa

    return pa.table({"i": [i], "pid": [os.getpid()]})


def test_files_are_parsed_as_ray_tasks_in_file_order(ray_session):
    from pipelines.sources.annotation_files import parse_all

    tables = parse_all(_pid_table, [(0,), (1,), (2,)])
    assert [t.column("i")[0].as_py() for t in tables] == [0, 1, 2]
    assert all(t.column("pid")[0].as_py() != os.getpid() for t in tables)  # ran in Ray workers
    # One file too: the parsed JSON lives in a worker, never in the driver (the head node).
    assert parse_all(_pid_table, [(5,)])[0].column("pid")[0].as_py() != os.getpid()


def _bad_file(i: int):
    from pipelines.sources.readers.categories import AnnotationFileError

    raise AnnotationFileError(f"part-{i}.json: not a COCO annotation file")


def test_a_reader_error_in_a_ray_task_is_the_readers_own(ray_session):
    from pipelines.sources.annotation_files import parse_all
    from pipelines.sources.readers.categories import AnnotationFileError

    with pytest.raises(AnnotationFileError) as err:
        parse_all(_bad_file, [(7,)])
    # The message the CLI prints: the reader's, not a remote traceback.
    assert str(err.value) == "part-7.json: not a COCO annotation file"


def test_s3_glob_is_indexed_per_file(s3_bucket, coco, tmp_path):
    import boto3

    from pipelines.sources.resolve import SourceSpec, read_source_cached
    from pipelines.storage.fs import StorageSpec

    endpoint, bucket = s3_bucket
    src, parts = coco
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for p in parts:
        s3.put_object(Bucket=bucket, Key=f"ann/{p.name}", Body=p.read_bytes())
    store = StorageSpec(endpoint, 2)
    cache = f"s3://{bucket}/cache"
    single = read_source_cached(SourceSpec("c", "coco", src["annotations"], src["images"], []), store, None)
    spec = SourceSpec("c", "coco", f"s3://{bucket}/ann/part-*.json", src["images"], [])
    split = read_source_cached(spec, store, cache)
    assert split.column("image_id").to_pylist() == single.column("image_id").to_pylist()
    assert split.column("ann_hash").to_pylist() == single.column("ann_hash").to_pylist()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="cache/")["Contents"]
    assert len(listed) == 3
    assert read_source_cached(spec, store, cache).equals(split)  # from the three cached files
