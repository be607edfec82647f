"""Sources given as per-image records (JSONL / Parquet shards + one categories file): the same
index (ann_hash included) and the same build as the equivalent COCO / LVIS / PACO JSON, one cached
index and one parse job per record file, clear errors for a missing categories file or a bad line."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.build_groundv import main
from pipelines.sources.resolve import INDEX_COUNTERS, SourceSpec, _file_cache_uri, read_source_cached
from pipelines.sources.sample_data import ensure_sample_dataset
from pipelines.storage.fs import StorageSpec
from tests.dataset_checks import latest_manifest, read_kind


def to_records(src: Path, dst: Path, kind: str = "jsonl", parts: int = 3) -> list[Path]:
    """Convert a COCO-style JSON into `parts` record shards (`kind`: jsonl | jsonl.gz | parquet,
    `image` and `annotations` as JSON strings in Parquet) + dst/categories.json (categories and
    attributes). Images keep their file order; annotations their order within an image."""
    data = json.loads(src.read_text())
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "categories.json").write_text(json.dumps(
        {"categories": data["categories"], **({"attributes": data["attributes"]} if "attributes" in data else {})}))
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    imgs = data["images"]
    step = -(-len(imgs) // parts)
    out = []
    for i in range(parts):
        recs = [{"image": im, "annotations": by_image.get(im["id"], [])} for im in imgs[i * step:(i + 1) * step]]
        p = dst / f"part-{i}.{kind}"
        if kind == "parquet":
            pq.write_table(pa.table({"image": [json.dumps(r["image"]) for r in recs],
                                     "annotations": [json.dumps(r["annotations"]) for r in recs]}), p)
        else:
            text = "".join(json.dumps(r) + "\n" for r in recs).encode()
            p.write_bytes(gzip.compress(text) if kind.endswith(".gz") else text)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    return {m["format"]: m for m in ensure_sample_dataset(str(root), num_images=24, seed=0)}


def spec(src: dict, annotations: str, categories: str | None = None) -> SourceSpec:
    return SourceSpec(src["name"], src["format"], annotations, src["images"], [], categories)


@pytest.mark.unit
@pytest.mark.parametrize("fmt,kind", [("coco", "jsonl"), ("lvis", "parquet"), ("paco", "jsonl.gz"),
                                      ("paco", "parquet")])
def test_record_index_equals_the_json_index(sample, tmp_path, fmt, kind):
    src = sample[fmt]
    to_records(Path(src["annotations"]), tmp_path / "rec", kind)
    store = StorageSpec()
    single = read_source_cached(spec(src, src["annotations"]), store, None)
    # the folder holds the shards and categories.json: the shards are the annotations
    records = read_source_cached(spec(src, str(tmp_path / "rec"), str(tmp_path / "rec" / "categories.json")),
                                 store, None)
    assert records.num_rows == single.num_rows > 0
    # every column, ann_hash and objects included (values: the category names' dictionaries differ per file)
    assert records.to_pylist() == single.to_pylist()
    errors = [e for e in single.column("image_error").to_pylist() if e]
    assert len(errors) < single.num_rows  # mostly images with objects: the equality is about them


@pytest.mark.unit
def test_native_parquet_image_struct_is_accepted(sample, tmp_path):
    src = sample["lvis"]
    data = json.loads(Path(src["annotations"]).read_text())
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    (tmp_path / "cats.json").write_text(json.dumps({"categories": data["categories"]}))
    pq.write_table(pa.table({"image": data["images"],  # a struct column (LVIS lists included)
                             "annotations": [json.dumps(by_image.get(i["id"], [])) for i in data["images"]]}),
                   tmp_path / "r.parquet")
    got = read_source_cached(spec(src, str(tmp_path / "r.parquet"), str(tmp_path / "cats.json")), StorageSpec(), None)
    assert got.to_pylist() == read_source_cached(spec(src, src["annotations"]), StorageSpec(), None).to_pylist()


@pytest.mark.unit
def test_cache_key_covers_the_categories_file_and_json_keys_are_unchanged(sample, tmp_path):
    import hashlib

    from pipelines.core.keys import image_identity
    from pipelines.sources.resolve import _reader_code_hash

    src = sample["coco"]
    parts = to_records(Path(src["annotations"]), tmp_path / "rec")
    cats = tmp_path / "rec" / "categories.json"
    store, cache = StorageSpec(), str(tmp_path / "cache")
    s = spec(src, str(tmp_path / "rec" / "*.jsonl"), str(cats))
    before = _file_cache_uri(s, str(parts[0]), store, cache)
    cats.write_text(cats.read_text().replace('"name": "', '"name": "x', 1))
    os.utime(cats, (1, 1))
    assert _file_cache_uri(s, str(parts[0]), store, cache) != before  # edited categories: re-index
    # a JSON source keeps the key it always had (with or without a categories field)
    f = src["annotations"]
    want = hashlib.sha256(json.dumps(
        {"v": 3, "src": [src["name"], "coco", f, src["images"]],
         "file": image_identity({"size": os.stat(f).st_size, "mtime": os.stat(f).st_mtime}),
         "code": _reader_code_hash()}, sort_keys=True).encode()).hexdigest()
    assert _file_cache_uri(spec(src, f), f, store, cache).endswith(f"/{want}.parquet")
    assert _file_cache_uri(spec(src, f, str(cats)), f, store, cache).endswith(f"/{want}.parquet")


@pytest.mark.unit
def test_exporters_read_record_sources(sample, tmp_path):
    from pipelines.consumers.exporters.common import load_source_index

    src = sample["paco"]
    to_records(Path(src["annotations"]), tmp_path / "rec", "jsonl", parts=3)
    ids = {im["id"] for im in json.loads(Path(src["annotations"]).read_text())["images"]}
    want = load_source_index(spec(src, src["annotations"]), ids, StorageSpec())
    got = load_source_index(spec(src, str(tmp_path / "rec"), str(tmp_path / "rec" / "categories.json")), ids,
                            StorageSpec())
    assert got.images == want.images and got.anns_by_image == want.anns_by_image and want.anns
    assert got.anns == want.anns and got.categories == want.categories


def build(tmp: Path, sources: list[dict], name: str, *extra: str) -> tuple[int, str]:
    out = tmp / name
    cfg = {"data": {"sources": sources}, "output": {"uri": str(out)}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["--config", str(path), *extra]), str(out)


def keys(out: str, kind: str) -> set[tuple]:
    t = read_kind(out, latest_manifest(out), kind)
    return {(r["gen_key"], r.get("sample_id")) for r in t.to_pylist()} if t.num_columns else set()


@pytest.mark.unit
def test_records_without_categories_is_a_config_error(sample, tmp_path, capsys):
    src = sample["coco"]
    to_records(Path(src["annotations"]), tmp_path / "rec")
    rc, _ = build(tmp_path, [{**src, "annotations": str(tmp_path / "rec" / "part-*.jsonl")}], "nocats")
    err = capsys.readouterr().err
    assert rc == 2 and "data.sources[0] ('coco_sample')" in err and "data.sources[0].categories" in err
    # a folder of shards: found when the folder is listed, before anything is parsed
    rc, _ = build(tmp_path, [{**src, "annotations": str(tmp_path / "rec")}], "nocats2")
    err = capsys.readouterr().err
    assert rc == 2 and "source 'coco_sample'" in err and "data.sources[].categories" in err


@pytest.mark.unit
def test_missing_categories_file_fails_preflight(sample, tmp_path, capsys):
    src = sample["coco"]
    to_records(Path(src["annotations"]), tmp_path / "rec")
    rc, _ = build(tmp_path, [{**src, "annotations": str(tmp_path / "rec"),
                              "categories": str(tmp_path / "nope.json")}], "gone")
    assert rc == 2 and "data.sources[0].categories" in capsys.readouterr().err


@pytest.mark.ray
def test_record_build_equals_json_build(ray_session, sample, tmp_path, capsys):
    coco, paco = sample["coco"], sample["paco"]
    to_records(Path(coco["annotations"]), tmp_path / "coco_rec", "jsonl", parts=3)
    to_records(Path(paco["annotations"]), tmp_path / "paco_rec", "parquet", parts=2)
    rc1, js = build(tmp_path, [coco, paco], "json")
    rec = [{**coco, "annotations": str(tmp_path / "coco_rec" / "part-*.jsonl"),
            "categories": str(tmp_path / "coco_rec" / "categories.json")},
           {**paco, "annotations": str(tmp_path / "paco_rec"),
            "categories": str(tmp_path / "paco_rec" / "categories.json")}]
    capsys.readouterr()
    rc2, rs = build(tmp_path, rec, "records")
    assert rc1 == rc2 == 0
    assert "5 annotation files parsed, 0 read from the cache" in capsys.readouterr().out
    assert len(os.listdir(os.path.join(rs, "cache", "index"))) == 5  # one cached index per record file
    for kind in ("samples", "raw"):
        assert keys(rs, kind) == keys(js, kind) and keys(js, kind)
    s1 = sorted(read_kind(js, latest_manifest(js), "samples").to_pylist(), key=lambda r: r["sample_id"])
    s2 = sorted(read_kind(rs, latest_manifest(rs), "samples").to_pylist(), key=lambda r: r["sample_id"])
    assert s1 == s2
    # converting JSON -> records under an existing output changes nothing: a no-op
    rc3, _ = build(tmp_path, rec, "json")
    assert rc3 == 0 and "nothing changed" in capsys.readouterr().out


@pytest.mark.ray
def test_malformed_line_is_an_input_error_naming_file_and_line(ray_session, sample, tmp_path, capsys):
    src = sample["coco"]
    parts = to_records(Path(src["annotations"]), tmp_path / "rec")
    good = parts[1].read_text()
    lines = good.splitlines()
    lines[2] = lines[2][:-5]  # a truncated record on line 3
    parts[1].write_text("\n".join(lines) + "\n")
    no_image = json.loads(lines[0])
    del no_image["image"]
    parts[2].write_text(json.dumps(no_image) + "\n")
    cfg = {**src, "annotations": str(tmp_path / "rec"), "categories": str(tmp_path / "rec" / "categories.json")}
    rc, _ = build(tmp_path, [cfg], "bad")
    err = capsys.readouterr().err
    assert rc == 2 and "input error" in err and "Traceback" not in err
    assert f"{parts[1]}:3: malformed JSON" in err or f"{parts[2]}:1: a record needs an 'image'" in err
    parts[1].write_text(good)  # one bad file left: its message
    rc, _ = build(tmp_path, [cfg], "bad")
    err = capsys.readouterr().err
    assert rc == 2 and f"{parts[2]}:1: a record needs an 'image'" in err


@pytest.mark.ray
def test_editing_one_record_file_reparses_only_that_file(ray_session, sample, tmp_path, capsys):
    src = sample["coco"]
    parts = to_records(Path(src["annotations"]), tmp_path / "rec")
    cfg = {**src, "annotations": str(tmp_path / "rec"), "categories": str(tmp_path / "rec" / "categories.json")}
    assert build(tmp_path, [cfg], "out")[0] == 0
    out = str(tmp_path / "out")
    raw1 = read_kind(out, latest_manifest(out), "raw").to_pylist()
    before = set(os.listdir(os.path.join(out, "cache", "index")))
    recs = [json.loads(line) for line in parts[1].read_text().splitlines()]
    rec = next(r for r in recs if any(not a.get("iscrowd") and isinstance(a["segmentation"], list)
                                      for a in r["annotations"]))
    ann = next(a for a in rec["annotations"] if not a.get("iscrowd") and isinstance(a["segmentation"], list))
    ann["segmentation"][0][0] += 1.0  # move one polygon vertex by one pixel
    parts[1].write_text("".join(json.dumps(r) + "\n" for r in recs))
    capsys.readouterr()
    parsed = INDEX_COUNTERS["files_parsed"]
    assert build(tmp_path, [cfg], "out")[0] == 0
    assert "1 annotation files parsed, 2 read from the cache" in capsys.readouterr().out
    assert INDEX_COUNTERS["files_parsed"] - parsed == 1
    after = set(os.listdir(os.path.join(out, "cache", "index")))
    assert before < after and len(after - before) == 1
    units = [r for r in raw1 if r["image_id"] == rec["image"]["id"]]
    assert units and latest_manifest(out)["stats"]["teacher_calls"] == len(units)


@pytest.mark.s3
def test_s3_record_shards_and_categories(s3_bucket, sample, tmp_path):
    import boto3

    endpoint, bucket = s3_bucket
    src = sample["paco"]
    parts = to_records(Path(src["annotations"]), tmp_path / "rec", "parquet", parts=2)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for p in [*parts, tmp_path / "rec" / "categories.json"]:
        s3.put_object(Bucket=bucket, Key=f"ann/{p.name}", Body=p.read_bytes())
    store, cache = StorageSpec(endpoint, 2), f"s3://{bucket}/cache"
    s = spec(src, f"s3://{bucket}/ann", f"s3://{bucket}/ann/categories.json")
    got = read_source_cached(s, store, cache)
    assert got.to_pylist() == read_source_cached(spec(src, src["annotations"]), store, None).to_pylist()
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix="cache/")["Contents"]) == 2
    assert read_source_cached(s, store, cache).to_pylist() == got.to_pylist()  # from the two cached files
