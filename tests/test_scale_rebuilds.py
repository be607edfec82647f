"""Real-scale rebuild rules (issue 14): images without annotations are no units, final errors are
not retried until their inputs change, image identity has no path, a no-op commits nothing, files
are readable by the team."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from pipelines.build_groundv import main
from pipelines.core.keys import image_identity, is_final_error
from pipelines.storage import fs as storage
from tests.dataset_checks import latest_manifest, read_kind


@pytest.fixture
def coco_copy(sample_dir, tmp_path) -> dict:
    """The sample's COCO source copied (images with their mtimes) to a private folder, plus one
    image without annotations and one image whose only annotation has a bad polygon."""
    src = Path(sample_dir)
    shutil.copytree(src / "images", tmp_path / "images")  # copy2: size and mtime kept
    data = json.loads((src / "annotations" / "coco_sample.json").read_text())
    first = data["images"][0]
    for new_id, name in ((90001, "empty.jpg"), (90002, "badpoly.jpg")):
        shutil.copy2(tmp_path / "images" / first["file_name"], tmp_path / "images" / name)
        data["images"].append({**first, "id": new_id, "file_name": name})
    data["annotations"].append({"id": 990002, "image_id": 90002, "category_id": data["categories"][0]["id"],
                                "segmentation": [[1.0, 1.0, 5.0]], "bbox": [1, 1, 4, 4], "area": 8.0,
                                "iscrowd": 0})
    ann = tmp_path / "coco.json"
    ann.write_text(json.dumps(data))
    return {"annotations": ann, "images": tmp_path / "images", "data": data, "root": tmp_path}


def _build(case: dict, out: Path, images: Path | None = None) -> int:
    source = {"name": "coco_copy", "format": "coco", "annotations": str(case["annotations"]),
              "images": str(images or case["images"])}
    cfg = {"data": {"sources": [source]}, "output": {"uri": str(out)}}
    path = case["root"] / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["--config", str(path)])


@pytest.mark.ray
def test_final_errors_and_empty_images_make_a_noop_rebuild(ray_session, coco_copy, tmp_path, capsys):
    out = tmp_path / "out"
    assert _build(coco_copy, out) == 0
    v1 = latest_manifest(str(out))
    assert v1["stats"]["images_no_annotations"] == 1
    errors = v1["stats"]["errors_by_reason"]
    assert "no_annotations" not in json.dumps(errors)  # not an error of five tasks
    # the bad polygon: one error per task a COCO image can have; never `part` (COCO has no parts)
    assert v1["stats"]["tasks"]["part"]["planned"] == 0
    assert sum(t["errors"] for t in v1["stats"]["tasks"].values()) == 4
    capsys.readouterr()
    assert _build(coco_copy, out) == 0
    assert "nothing changed, v1 is current" in capsys.readouterr().out
    assert sorted(os.listdir(out / "manifests")) == ["v000001.json"]
    # Fix the annotation: exactly that image's units run again.
    data = coco_copy["data"]
    bad = next(a for a in data["annotations"] if a["id"] == 990002)
    bad["segmentation"] = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]]
    coco_copy["annotations"].write_text(json.dumps(data))
    assert _build(coco_copy, out) == 0
    v2 = latest_manifest(str(out))
    assert v2["version"] == 2
    reasons = {t: s["generate_reasons"] for t, s in v2["stats"]["tasks"].items() if s["generate_reasons"]}
    assert reasons and all(r == {"annotations changed": 1} for r in reasons.values())
    assert v2["stats"]["teacher_calls"] == sum(s["generated"] for s in v2["stats"]["tasks"].values()) > 0


@pytest.mark.ray
def test_moved_images_folder_reruns_nothing_and_rows_name_the_new_place(ray_session, coco_copy, tmp_path, capsys):
    """A moved images folder keeps every key (identity has no path), so no unit runs again; but the
    version's rows must name where the images are now, or loaders open files that are gone."""
    from PIL import Image

    from pipelines.consumers.dataset import to_arrow_dataset

    out = tmp_path / "out"
    assert _build(coco_copy, out) == 0
    v1 = latest_manifest(str(out))
    moved = tmp_path / "elsewhere" / "images"
    moved.parent.mkdir()
    shutil.move(str(coco_copy["images"]), str(moved))  # a rename: same bytes, same mtimes
    capsys.readouterr()
    assert _build(coco_copy, out, images=moved) == 0
    said = capsys.readouterr().out
    v2 = latest_manifest(str(out))
    assert v2["version"] == 2  # the rows changed (their image_uri): a new version, with 0 units run
    st = v2["stats"]
    assert st["teacher_calls"] == 0 and st["totals"]["generated"] == 0 and st["totals"]["dropped"] == 0
    assert st["units_reused"] == st["units_planned"] == st["units_relocated"] == v1["stats"]["units_planned"]
    n_images = len({(r["source"], r["image_id"]) for r in read_kind(str(out), v2, "raw").to_pylist()})
    assert st["images_moved"] == n_images > 0
    assert f"{n_images} images moved" in said
    for kind in ("samples", "errors", "raw"):
        rows = read_kind(str(out), v2, kind).to_pylist()
        assert rows and all(r["image_uri"].startswith(str(moved) + "/") and os.path.exists(r["image_uri"])
                            for r in rows), kind
    # The same rows otherwise: every column but image_uri is what v1 had.
    for kind in ("samples", "errors", "rejects"):
        def strip(rows):
            return sorted(json.dumps({k: v for k, v in r.items() if k != "image_uri"}, sort_keys=True, default=str)
                           for r in rows)
        assert strip(read_kind(str(out), v1, kind).to_pylist()) == strip(read_kind(str(out), v2, kind).to_pylist())
    samples = to_arrow_dataset(str(out)).to_table()
    assert samples.num_rows == sum(s["rows"] for s in v2["shards"] if s["kind"] == "samples") > 0
    for uri in set(samples.column("image_uri").to_pylist()):
        with Image.open(uri) as im:
            im.load()
    assert _build(coco_copy, out, images=moved) == 0
    assert "nothing changed, v2 is current" in capsys.readouterr().out


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(Path(d) / f): ((Path(d) / f).stat().st_mtime_ns, (Path(d) / f).stat().st_size)
            for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.ray
def test_noop_writes_nothing_and_runs_on_a_read_only_output(ray_session, coco_copy, tmp_path, capsys):
    out = tmp_path / "out"
    assert _build(coco_copy, out) == 0
    before = _files(out)
    assert _build(coco_copy, out) == 0
    assert _files(out) == before  # not a file created, replaced or touched (cache included)
    if os.geteuid() == 0:
        return  # root ignores file modes: "writes nothing" above is the proof
    modes = {}
    for dirpath, _, _ in os.walk(out):
        modes[dirpath] = os.stat(dirpath).st_mode
        os.chmod(dirpath, 0o555)
    try:
        capsys.readouterr()
        assert _build(coco_copy, out) == 0
        assert "nothing changed, v1 is current" in capsys.readouterr().out
    finally:
        for d, m in modes.items():
            os.chmod(d, stat.S_IMODE(m))


@pytest.mark.ray
def test_output_files_are_group_and_world_readable(ray_session, coco_copy, tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert _build(coco_copy, out) == 0
    finally:
        os.umask(old)
    files = [Path(d) / f for d, _, fs in os.walk(out) for f in fs]
    assert files and {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o644)}


@pytest.mark.unit
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_follows_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        storage.write_bytes(str(tmp_path / "a" / "f.bin"), b"x", storage.StorageSpec())
        assert storage.create_if_absent(str(tmp_path / "b.json"), b"{}", storage.StorageSpec())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "f.bin").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == mode


@pytest.mark.unit
def test_image_identity_has_no_path_and_errors_are_classed():
    a = {"name": "/a/x.jpg", "size": 10, "mtime": 1.5}
    assert image_identity(a) == image_identity({**a, "name": "/b/x.jpg"}) != image_identity({**a, "mtime": 2})
    s3 = {"name": "bucket/x.jpg", "ETag": '"abc"', "size": 10}
    assert image_identity(s3) == image_identity({**s3, "name": "other/y.jpg"})
    assert is_final_error("annotation:bad_polygon") and is_final_error("missing_image")
    assert is_final_error("truncated_image") and not is_final_error("teacher:teacher_failed")
    assert not is_final_error("read_failed") and not is_final_error(None)


def _images(tmp_path) -> tuple:
    """The sample's COCO + PACO index plus an image without annotations and one in error."""
    import pyarrow as pa

    from pipelines.core.keys import annotation_hash
    from pipelines.sources.resolve import SourceSpec, load_images
    from pipelines.sources.sample_data import ensure_sample_dataset

    made = [m for m in ensure_sample_dataset(str(tmp_path / "s"), num_images=12, seed=1) if m["format"] != "lvis"]
    specs = [SourceSpec(m["name"], m["format"], m["annotations"], m["images"], []) for m in made]
    imgs = load_images(specs, set(), None, storage.StorageSpec())
    extra = imgs.images.slice(0, 2).to_pylist()
    extra[0].update(image_id=900001, image_error="no_annotations", objects=[])
    extra[1].update(image_id=900002, image_error="bad_polygon")
    for r in extra:
        r["ann_hash"] = annotation_hash(r)
    t = pa.concat_tables([imgs.images, pa.Table.from_pylist(extra, schema=imgs.images.schema)])
    tasks = {"coco_sample": ["hallucination", "multi_object", "reasoning", "multi_granularity", "part"],
             "paco_sample": ["part", "multi_granularity"]}
    return t, tasks, imgs.identities


@pytest.mark.unit
def test_columnar_plan_rules(tmp_path):
    import pyarrow as pa

    from pipelines.build.plan import make_plan
    from pipelines.storage.output import LEDGER_COLUMNS
    from schemas.columns import RAW_SCHEMA, TASKS

    images, tasks, idents = _images(tmp_path)
    prompts = {t: f"p-{t}" for t in TASKS}
    empty = RAW_SCHEMA.empty_table().select(LEDGER_COLUMNS).append_column("batch", pa.array([], pa.string()))
    p = make_plan(images, tasks, idents, prompts, "T", empty, filter_version="F")
    assert p.no_annotations == 1
    work = p.work.to_pylist()
    assert 900001 not in {w["image_id"] for w in work}
    err = [w for w in work if w["image_id"] == 900002]
    assert [u["task"] for u in err[0]["units"]] == ["hallucination", "multi_object", "reasoning", "multi_granularity"]
    assert p.tasks["part"].planned == sum(1 for w in work for u in w["units"] if u["task"] == "part") > 0
    # the ledger of that build: the error units final, one teacher failure transient
    rows = []
    for w in work:
        for u in w["units"]:
            er = "annotation:bad_polygon" if w["image_error"] else None
            if w is work[0] and u is w["units"][0]:
                er = "teacher:teacher_failed"
            rows.append({**{k: u[k] for k in ("gen_key", "task", "image_identity", "ann_hash", "prompt_hash",
                                              "teacher_hash")}, "source": w["source"], "image_id": w["image_id"],
                         "outcome": "error" if er else "accepted", "error_reason": er, "filter_version": "F",
                         "batch": "b1"})
    ledger = pa.Table.from_pylist(rows, schema=empty.schema)
    p2 = make_plan(images, tasks, idents, prompts, "T", ledger, filter_version="F")
    assert p2.units_to_generate == 1 and not p2.unchanged  # only the teacher failure is retried
    # --dry-run reads only PLAN_COLUMNS of the index (no objects): same decisions
    from pipelines.sources.resolve import PLAN_COLUMNS

    slim = make_plan(images.select(PLAN_COLUMNS), tasks, idents, prompts, "T", ledger, filter_version="F")
    assert {t: vars(s) for t, s in slim.tasks.items()} == {t: vars(s) for t, s in p2.tasks.items()}
    assert slim.reuse_from == p2.reuse_from and slim.units_total == p2.units_total
    assert sum(t.generate_reasons["retry of an error"] for t in p2.tasks.values()) == 1
    fixed = images.to_pylist()
    bad = next(r for r in fixed if r["image_id"] == 900002)
    bad.update(image_error=None, ann_hash="new")
    p3 = make_plan(pa.Table.from_pylist(fixed, schema=images.schema), tasks, idents, prompts, "T", ledger,
                   filter_version="F")
    assert sum(t.generate_reasons["annotations changed"] for t in p3.tasks.values()) >= 1
    assert {u["task"] for w in p3.work.to_pylist() if w["image_id"] == 900002 for u in w["units"]}


@pytest.mark.unit
def test_plan_relocates_reused_units_whose_image_moved(tmp_path):
    """Keys ignore the path, so a moved image is reused; the plan lists its units with the current
    uri (the commit rewrites that column), counts the images, and a ledger written before image_uri
    was recorded (null) is relocated once as 'unrecorded'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.build.commit import relocated
    from pipelines.build.plan import make_plan
    from pipelines.storage.output import LEDGER_COLUMNS, _read_ledger_columns
    from schemas.columns import RAW_SCHEMA, TASKS

    images, tasks, idents = _images(tmp_path)
    prompts = {t: f"p-{t}" for t in TASKS}
    schema = RAW_SCHEMA.empty_table().select(LEDGER_COLUMNS).append_column("batch", pa.array([], pa.string())).schema
    work = make_plan(images, tasks, idents, prompts, "T", schema.empty_table(), filter_version="F").work.to_pylist()

    def ledger(uri_of) -> pa.Table:
        return pa.Table.from_pylist([
            {**{k: u[k] for k in ("gen_key", "task", "image_identity", "ann_hash", "prompt_hash", "teacher_hash")},
             "source": w["source"], "image_id": w["image_id"], "image_uri": uri_of(w),
             "outcome": "error" if w["image_error"] else "accepted",
             "error_reason": f"annotation:{w['image_error']}" if w["image_error"] else None,
             "filter_version": "F", "batch": "b1"} for w in work for u in w["units"]], schema=schema)

    def plan(led):
        return make_plan(images, tasks, idents, prompts, "T", led, filter_version="F")

    same = plan(ledger(lambda w: w["image_uri"]))
    assert same.unchanged and same.relocate == {} and same.units_to_run == 0
    moved_image = work[0]
    p = plan(ledger(lambda w: "/old/place/x.jpg" if w is moved_image else w["image_uri"]))
    assert p.units_to_run == 0 and not p.unchanged and p.images_moved == 1 and p.locations_unrecorded == 0
    assert p.relocate == {u["gen_key"]: moved_image["image_uri"] for u in moved_image["units"]}
    assert sum(t.relocated for t in p.tasks.values()) == len(moved_image["units"])
    legacy = plan(ledger(lambda w: None))
    assert legacy.images_moved == 0 and legacy.locations_unrecorded == len(legacy.relocate) == legacy.units_total
    # the commit's rewrite: only image_uri of the moved units changes
    t = pa.table({"gen_key": ["a", "b"], "image_uri": ["/old/a.jpg", "/old/b.jpg"], "x": [1, 2]})
    assert relocated(t, {"b": "/new/b.jpg"}).to_pylist() == [
        {"gen_key": "a", "image_uri": "/old/a.jpg", "x": 1}, {"gen_key": "b", "image_uri": "/new/b.jpg", "x": 2}]
    # a raw shard written before image_uri / error_reason existed reads them as null
    old = pa.Table.from_pylist([{"gen_key": "k", "outcome": "error"}], schema=RAW_SCHEMA)
    pq.write_table(old.drop_columns(["image_uri", "error_reason"]), tmp_path / "old.parquet")
    got = _read_ledger_columns(str(tmp_path / "old.parquet"), None).to_pylist()
    assert list(got[0]) == LEDGER_COLUMNS and got[0]["gen_key"] == "k"
    assert got[0]["image_uri"] is None and got[0]["error_reason"] is None


@pytest.mark.ray
def test_moved_images_prefix_on_s3(ray_session, coco_copy, s3_bucket, tmp_path, capsys):
    """S3: identity = ETag + size, which a server-side copy keeps; the rows follow the new prefix."""
    import boto3

    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint)
    names = sorted(os.listdir(coco_copy["images"]))
    for n in names:
        s3.upload_file(str(coco_copy["images"] / n), bucket, f"a/images/{n}")

    def build(prefix: str) -> int:
        source = {"name": "coco_copy", "format": "coco", "annotations": str(coco_copy["annotations"]),
                  "images": f"s3://{bucket}/{prefix}"}
        cfg = {"data": {"sources": [source]}, "output": {"uri": f"s3://{bucket}/out"},
               "storage": {"endpoint_url": endpoint}}
        (tmp_path / "s3.yaml").write_text(yaml.safe_dump(cfg))
        return main(["--config", str(tmp_path / "s3.yaml")])

    assert build("a/images") == 0
    for n in names:  # "move": server-side copy (same ETag), then delete the old objects
        s3.copy_object(Bucket=bucket, Key=f"b/images/{n}", CopySource={"Bucket": bucket, "Key": f"a/images/{n}"})
        s3.delete_object(Bucket=bucket, Key=f"a/images/{n}")
    capsys.readouterr()
    assert build("b/images") == 0
    assert "images moved" in capsys.readouterr().out
    m = latest_manifest(f"s3://{bucket}/out", endpoint)
    assert m["version"] == 2 and m["stats"]["teacher_calls"] == 0 and m["stats"]["totals"]["generated"] == 0
    uris = {r["image_uri"] for k in ("samples", "errors", "raw")
            for r in read_kind(f"s3://{bucket}/out", m, k, endpoint).to_pylist()}
    assert uris and all(u.startswith(f"s3://{bucket}/b/images/") for u in uris)
    for u in uris:
        s3.head_object(Bucket=bucket, Key=u.split(f"s3://{bucket}/", 1)[1])  # exists
