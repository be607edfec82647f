"""Issue 15, readers that must not be tricked and bad values that must stay row-level: crafted
manifests and shards, crafted export rows, symlinks out of the images prefix, EXIF-rotated images
read back with OpenCV (what LISA does), ids beyond int64, a 2,000-pair answer."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.consumers.dataset import to_arrow_dataset
from pipelines.consumers.exporters.common import ImagePlacer
from pipelines.core.knowledge import load_knowledge
from pipelines.filters.check_unit import check_unit
from pipelines.filters.settings import FilterSettings
from pipelines.sources.readers import AnnotationFileError, read_source
from pipelines.storage.fs import StorageSpec
from pipelines.storage.guard import UnsafePath, inside, safe_name
from schemas.columns import KIND_SCHEMAS
from tests.test_filters import coco_unit

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------ 7: crafted manifests / shards
def _output_with(tmp_path: Path, rel: str, sha: str | None = None) -> str:
    out = tmp_path / "out"
    (out / "manifests").mkdir(parents=True)
    table = KIND_SCHEMAS["samples"].empty_table()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    target = (out / rel).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    shard = {"path": rel, "kind": "samples", "task": "part", "rows": 0, "bytes": len(data),
             "sha256": sha if sha is not None else hashlib.sha256(data).hexdigest(), "batch": "b"}
    (out / "manifests" / "v000001.json").write_text(json.dumps({
        "version": 1, "parent_version": None, "created_at": "", "config": {}, "config_hash": "", "teacher": {},
        "prompts": {}, "filters": {}, "shards": [shard], "stats": {}}))
    return str(out)


def test_loader_reads_a_clean_version(tmp_path):
    out = _output_with(tmp_path, "data/samples/part/ab/x.parquet")
    assert to_arrow_dataset(out).to_table().num_rows == 0


@pytest.mark.parametrize("rel", ["../outside.parquet", "data/../../outside.parquet", "/etc/passwd"])
def test_loader_refuses_shard_paths_outside_the_output(tmp_path, rel):
    out = _output_with(tmp_path, "data/samples/part/ab/x.parquet")
    m = json.loads(Path(out, "manifests", "v000001.json").read_text())
    m["shards"][0]["path"] = rel
    Path(out, "manifests", "v000001.json").write_text(json.dumps(m))
    with pytest.raises(UnsafePath, match="not a plain path under data/"):
        to_arrow_dataset(out)


def test_loader_refuses_a_shard_altered_after_the_commit(tmp_path):
    out = _output_with(tmp_path, "data/samples/part/ab/x.parquet", sha="0" * 64)
    with pytest.raises(UnsafePath, match="does not match the manifest"):
        to_arrow_dataset(out)


# ------------------------------------------------------------------ 8: exports stay inside --out
@pytest.mark.parametrize("sample_id", ["../../evil", "a/b", "..", ""])
def test_export_names_from_data_are_single_components(tmp_path, sample_id):
    with pytest.raises(UnsafePath):
        inside(str(tmp_path), f"{safe_name(sample_id, 'sample_id')}.json")


def test_image_copy_refuses_files_outside_the_images_prefix(tmp_path):
    prefix = tmp_path / "images"
    prefix.mkdir()
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key=...")
    placer = ImagePlacer("copy", StorageSpec())
    for uri in (str(secret), f"{prefix}/../credentials"):
        with pytest.raises(UnsafePath, match="not under its source's images prefix"):
            placer.place(uri, str(prefix), str(tmp_path / "out" / "x.jpg"))
    assert not (tmp_path / "out" / "x.jpg").exists()


def test_image_copy_refuses_a_symlink_out_of_the_prefix(tmp_path):
    prefix = tmp_path / "images"
    prefix.mkdir()
    (tmp_path / "credentials").write_text("secret")
    os.symlink(tmp_path / "credentials", prefix / "1.jpg")
    with pytest.raises(UnsafePath, match="symlink"):
        ImagePlacer("copy", StorageSpec()).place(str(prefix / "1.jpg"), str(prefix), str(tmp_path / "o" / "x.jpg"))


# ------------------------------------------------------------------ 9: symlinks in the images prefix
def _coco(file_names: list[str]) -> dict:
    sq = [2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]
    return {"images": [{"id": i + 1, "file_name": f, "width": 20, "height": 10} for i, f in enumerate(file_names)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": [sq], "area": 24.0,
                             "bbox": [2, 2, 6, 4], "iscrowd": 0} for i in range(len(file_names))],
            "categories": [{"id": 1, "name": "cup", "supercategory": "kitchen"}]}


def test_symlink_out_of_the_images_prefix_is_a_row_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (20, 10)).save(images / "ok.png")
    (tmp_path / "credentials").write_text("secret")
    os.symlink(tmp_path / "credentials", images / "evil.png")
    os.symlink(images / "ok.png", images / "alias.png")  # a link inside the prefix is fine
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(_coco(["ok.png", "evil.png", "alias.png"])))
    rows = {r["file_name"]: r for r in read_source("s", "coco", str(ann), str(images)).to_pylist()}
    assert rows["evil.png"]["image_error"] == "unsafe_path" and "outside" in rows["evil.png"]["image_error_detail"]
    assert rows["ok.png"]["image_error"] is None and rows["alias.png"]["image_error"] is None


# ------------------------------------------------------------------ 4: EXIF-rotated image, read by OpenCV
def test_exported_exif_rotated_jpeg_reads_back_in_stored_order(tmp_path):
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (255, 0, 0)  # left half red (stored order)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(images / "r.jpg", exif=exif, quality=95)
    for how in ("link", "copy"):
        out = tmp_path / how
        placer = ImagePlacer(how, StorageSpec())
        placer.place(str(images / "r.jpg"), str(images), str(out / "a.jpg"))
        placer.place(str(images / "r.jpg"), str(images), str(out / "b.jpg"))
        for name in ("a.jpg", "b.jpg"):
            back = cv2.imread(str(out / name))  # applies the EXIF tag, as LISA's loader does
            assert back.shape[:2] == (40, 80), (how, back.shape)
            assert back[20, 10, 2] > 200 and back[20, 70, 2] < 60  # red (BGR) stays on the left
        assert os.stat(out / "a.jpg").st_ino == os.stat(out / "b.jpg").st_ino  # stored once
        assert placer.reencoded == 1


def test_copies_of_one_image_are_stored_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "p.jpg")
    placer = ImagePlacer("copy", StorageSpec())
    for i in range(5):
        placer.place(str(images / "p.jpg"), str(images), str(tmp_path / "o" / f"{i}.jpg"))
    assert len({os.stat(tmp_path / "o" / f"{i}.jpg").st_ino for i in range(5)}) == 1


# ------------------------------------------------------------------ 6: ids beyond int64
UNIT = coco_unit("reasoning")


def test_huge_target_id_is_a_pair_reject_that_can_be_written():
    pair = {"instruction": "the cup", "answer": "Sure, [SEG].", "target_ids": [2**64], "subtype": "function"}
    res = check_unit(UNIT, json.dumps({"pairs": [pair]}), "stop", FilterSettings(), load_knowledge())
    assert not res.accepted and res.rejected[0].reason == "schema"
    assert "64-bit" in res.rejected[0].detail
    pa.array(res.rejected[0].target_local_ids, pa.int64())  # the reject row's ids fit the column


def test_two_thousand_pairs_make_one_surplus_reject_row():
    pair = {"instruction": "x", "answer": "Sure, [SEG].", "target_ids": [], "subtype": "function"}
    res = check_unit(UNIT, json.dumps({"pairs": [pair] * 2000}), "stop", FilterSettings(max_pairs=3), load_knowledge())
    surplus = [r for r in res.rejected if r.pair_index >= 3]
    assert len(surplus) == 1 and "1997 pairs beyond max_pairs=3" in surplus[0].detail


def test_annotation_ids_beyond_int64_name_the_file(tmp_path):
    doc = _coco(["a.png"])
    doc["images"][0]["id"] = 2**64
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(AnnotationFileError, match="big.json.*64-bit"):
        read_source("s", "coco", str(path), str(tmp_path))
    doc = _coco(["a.png"])
    doc["annotations"][0]["id"] = 2**64
    path.write_text(json.dumps(doc))
    row = read_source("s", "coco", str(path), str(tmp_path)).to_pylist()[0]
    assert row["image_error"] == "bad_annotation"


# ------------------------------------------------------------------ 3: LVIS v1 file names
def test_lvis_v1_keeps_the_coco_folder_of_both_splits(tmp_path):
    """LVIS val draws images from train2017 and val2017; with `images:` at the COCO root every image
    must be found (the old rule kept only the last segment of coco_url: all `missing_image`)."""
    root = tmp_path / "coco"
    for split, name in (("train2017", "000000000009.jpg"), ("val2017", "000000000139.jpg")):
        (root / split).mkdir(parents=True)
        Image.new("RGB", (20, 10)).save(root / split / name)
    sq = [2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]
    doc = {"images": [
        {"id": 9, "coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg", "width": 20, "height": 10,
         "neg_category_ids": [], "not_exhaustive_category_ids": []},
        {"id": 139, "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg", "width": 20, "height": 10,
         "neg_category_ids": [], "not_exhaustive_category_ids": []},
        {"id": 5, "file_name": "val2017/000000000139.jpg", "coco_url": "http://x/other/ignored.jpg", "width": 20,
         "height": 10, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
        "annotations": [{"id": i + 1, "image_id": iid, "category_id": 1, "segmentation": [sq], "area": 24.0,
                         "bbox": [2, 2, 6, 4]} for i, iid in enumerate((9, 139, 5))],
        "categories": [{"id": 1, "name": "cup", "synonyms": ["cup"], "frequency": "f"}]}
    ann = tmp_path / "lvis_v1_val.json"
    ann.write_text(json.dumps(doc))
    rows = {r["image_id"]: r for r in read_source("lvis", "lvis", str(ann), str(root)).to_pylist()}
    assert rows[9]["image_uri"] == f"{root}/train2017/000000000009.jpg"
    assert rows[139]["image_uri"] == f"{root}/val2017/000000000139.jpg"
    assert rows[5]["file_name"] == "val2017/000000000139.jpg"  # file_name wins when present
    assert all(os.path.exists(r["image_uri"]) for r in rows.values())
    # `images:` pointing at the split folder itself (older configs) still finds that split's images.
    rows = {r["image_id"]: r for r in read_source("lvis", "lvis", str(ann), str(root / "train2017")).to_pylist()}
    assert rows[9]["image_uri"] == f"{root}/train2017/000000000009.jpg"


# ------------------------------------------------------------------ 13: category names
def test_unicode_absent_category_in_a_hallucination_pair_is_accepted():
    unit = {**coco_unit("hallucination"), "absent_categories": ["寿司", "Pokémon plush"]}
    for name in ("寿司", "Pokémon plush"):
        pair = {"instruction": f"the {name} on the plate", "answer": f"There is no {name}.",
                "target_ids": [], "subtype": "object"}
        res = check_unit(unit, json.dumps({"pairs": [pair]}), "stop", FilterSettings(), load_knowledge())
        assert len(res.accepted) == 1, (name, res.rejected)


def test_colon_in_a_coco_category_is_not_a_paco_part(tmp_path):
    doc = _coco(["a.png"])
    doc["categories"][0]["name"] = "sign: stop"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    obj = read_source("s", "coco", str(path), str(tmp_path)).to_pylist()[0]["objects"][0]
    assert obj["is_part"] is False and obj["name"] == "sign: stop"
