"""Annotation readers: COCO / PACO / LVIS JSON -> IMAGE_SCHEMA, error records, S3 reads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import boto3
import numpy as np
import pyarrow as pa
import pytest
from pycocotools import mask as mask_utils

from pipelines.sources.readers import REASON_CODES, AnnotationFileError, clean_name, read_source
from pipelines.sources.sample_data import ensure_sample_dataset
from schemas.columns import IMAGE_SCHEMA


@pytest.fixture(scope="module")
def sources(sample_dir: Path) -> dict[str, dict[str, str]]:
    return {s["format"]: s for s in ensure_sample_dataset(str(sample_dir))}


@pytest.fixture(scope="module")
def tables(sources: dict[str, dict[str, str]]) -> dict[str, pa.Table]:
    return {f: read_source(s["name"], f, s["annotations"], s["images"]) for f, s in sources.items()}


def _doc(sources: dict[str, dict[str, str]], fmt: str) -> dict[str, Any]:
    return json.loads(Path(sources[fmt]["annotations"]).read_text())


def _rows(table: pa.Table) -> dict[int, dict[str, Any]]:
    return {r["image_id"]: r for r in table.to_pylist()}


def _decode(counts: str, h: int, w: int) -> np.ndarray:
    return mask_utils.decode({"size": [h, w], "counts": counts}).astype(bool)


def _poly_mask(poly: list[float], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([poly], h, w)[0]).astype(bool)


# ------------------------------------------------------------------ the sample sources ---------
def test_tables_follow_the_contract(sources: dict[str, dict[str, str]], tables: dict[str, pa.Table]) -> None:
    for fmt, table in tables.items():
        doc = _doc(sources, fmt)
        assert table.schema.equals(IMAGE_SCHEMA)
        assert table.column("image_id").to_pylist() == [i["id"] for i in doc["images"]]
        assert table.column("image_error").null_count == table.num_rows
        assert set(table.column("source").to_pylist()) == {f"{fmt}_sample"}
        for r in table.to_pylist():
            assert r["image_uri"] == f"{sources[fmt]['images']}/{r['file_name']}"
            assert Path(r["image_uri"]).is_file()
        n_objects = sum(len(o) for o in table.column("objects").to_pylist())
        assert n_objects == len(doc["annotations"])


def test_polygon_masks_are_the_union_of_their_polygons(
    sources: dict[str, dict[str, str]], tables: dict[str, pa.Table]
) -> None:
    doc = _doc(sources, "coco")
    anns = {a["id"]: a for a in doc["annotations"]}
    disjoint = overlapping = 0
    for row in tables["coco"].to_pylist():
        h, w = row["height"], row["width"]
        for obj in row["objects"]:
            ann = anns[obj["ann_id"]]
            if obj["iscrowd"]:
                continue
            masks = [_poly_mask(p, h, w) for p in ann["segmentation"]]
            union = np.logical_or.reduce(masks)
            assert np.array_equal(_decode(obj["rle_counts"], h, w), union)
            assert obj["area"] == union.sum()
            if len(masks) >= 2:
                summed = sum(int(m.sum()) for m in masks)
                disjoint += obj["area"] == summed
                overlapping += obj["area"] < summed
            assert obj["bbox"] == ann["bbox"] and obj["category_name"] == obj["name"]
            assert obj["supercategory"] and not obj["is_part"] and obj["parent_ann_id"] is None
    assert disjoint >= 1 and overlapping >= 1  # the post-split object; pieces of one shape


def test_crowd_uncompressed_rle(sources: dict[str, dict[str, str]], tables: dict[str, pa.Table]) -> None:
    crowd = [a for a in _doc(sources, "coco")["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1
    ann = crowd[0]
    row = _rows(tables["coco"])[ann["image_id"]]
    h, w = ann["segmentation"]["size"]
    runs = ann["segmentation"]["counts"]
    values = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)  # runs alternate 0s and 1s
    expected = values.reshape((w, h)).T  # column-major
    (obj,) = [o for o in row["objects"] if o["ann_id"] == ann["id"]]
    assert obj["iscrowd"] and obj["name"] == "person"
    assert np.array_equal(_decode(obj["rle_counts"], h, w), expected)
    assert obj["area"] == expected.sum()


def test_coco_absent_categories_are_all_missing_ones(
    sources: dict[str, dict[str, str]], tables: dict[str, pa.Table]
) -> None:
    names = {c["name"] for c in _doc(sources, "coco")["categories"]}
    for row in tables["coco"].to_pylist():
        present = {o["name"] for o in row["objects"]}
        assert set(row["absent_categories"]) == names - present
        assert "horse" in row["absent_categories"]
        assert row["not_exhaustive_categories"] == []


def test_paco_parts(sources: dict[str, dict[str, str]], tables: dict[str, pa.Table]) -> None:
    doc = _doc(sources, "paco")
    neg_names = {c["id"]: c["name"] for c in doc["categories"]}
    parts = 0
    for row in tables["paco"].to_pylist():
        h, w = row["height"], row["width"]
        by_id = {o["ann_id"]: o for o in row["objects"]}
        for obj in row["objects"]:
            assert obj["supercategory"] is None  # PACO's "OBJECT"/"PART" placeholders carry nothing
            assert not any(a.startswith("other") or "_" in a for a in obj["attributes"])
            if not obj["is_part"]:
                assert obj["parent_ann_id"] is None
                continue
            parts += 1
            parent = by_id[obj["parent_ann_id"]]
            assert not parent["is_part"]
            assert obj["category_name"] == f"{parent['category_name']}:{obj['name'].replace(' ', '_')}"
            part_mask, parent_mask = _decode(obj["rle_counts"], h, w), _decode(parent["rle_counts"], h, w)
            assert part_mask.any() and not (part_mask & ~parent_mask).any()
        img = next(i for i in doc["images"] if i["id"] == row["image_id"])
        expected_neg = {
            clean_name(neg_names[c].split(":")[0]) + (" " + neg_names[c].split(":")[1] if ":" in neg_names[c] else "")
            for c in img["neg_category_ids"]
        }
        assert set(row["absent_categories"]) == expected_neg
    assert parts >= 20
    objects = [o for r in tables["paco"].to_pylist() for o in r["objects"]]
    handle = next(o for o in objects if o["category_name"] == "cup:handle")
    assert handle["name"] == "handle" and handle["is_part"]
    car = next(o for o in objects if o["category_name"] == "car_(automobile)")
    assert car["name"] == "car"
    assert any({"metal", "opaque"} <= set(o["attributes"]) for o in objects if o["name"] == "car")
    assert any("light blue" in o["attributes"] for o in objects if o["name"] == "window")


def test_lvis_names_and_negatives(sources: dict[str, dict[str, str]], tables: dict[str, pa.Table]) -> None:
    doc = _doc(sources, "lvis")
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    rows = _rows(tables["lvis"])
    for img in doc["images"]:
        row = rows[img["id"]]
        assert row["file_name"] == img["coco_url"].rsplit("/", 1)[-1]
        assert set(row["absent_categories"]) == {clean_name(cats[c]) for c in img["neg_category_ids"]}
        not_exhaustive = {clean_name(cats[c]) for c in img["not_exhaustive_category_ids"]}
        assert set(row["not_exhaustive_categories"]) == not_exhaustive
    objects = [o for r in rows.values() for o in r["objects"]]
    car = next(o for o in objects if o["category_name"] == "car_(automobile)")
    assert car["name"] == "car" and car["supercategory"] is None and not car["iscrowd"]
    assert any("person" in r["not_exhaustive_categories"] for r in rows.values())  # the skipped crowd


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("car_(automobile)", "car"),
        ("trash_can", "trash can"),
        ("tape_(sticky_cloth_or_paper)", "tape"),
        ("glass_(drink_container)", "glass"),
        ("person", "person"),
        ("hair dryer", "hair dryer"),
    ],
)
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


# ------------------------------------------------------------------ invalid annotations --------
_SQUARE = [2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]


def _tiny(fmt: str) -> dict[str, Any]:
    """Two 20x10 images with one cup each (PACO: plus a handle part on image 1); all valid."""
    images: list[dict[str, Any]] = [{"id": i, "file_name": f"{i}.png", "width": 20, "height": 10} for i in (1, 2)]
    if fmt == "lvis":
        images = [
            {
                "id": i["id"],
                "coco_url": f"http://host/images/{i['file_name']}",  # the COCO folder = the prefix
                "width": 20,
                "height": 10,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
            for i in images
        ]
    anns: list[dict[str, Any]] = [
        {
            "id": i,
            "image_id": i,
            "category_id": 1,
            "segmentation": [list(_SQUARE)],
            "bbox": [2.0, 2.0, 6.0, 4.0],
            "area": 24.0,
            "iscrowd": 0,
        }
        for i in (1, 2)
    ]
    cats: list[dict[str, Any]] = [{"id": 1, "name": "cup", "supercategory": "kitchen"}]
    doc: dict[str, Any] = {"images": images, "annotations": anns, "categories": cats}
    if fmt == "paco":
        for a in anns:
            a["obj_ann_id"] = a["id"]
        cats.append({"id": 2000, "name": "cup:handle", "supercategory": "PART"})
        anns.append(
            {
                "id": 3,
                "image_id": 1,
                "category_id": 2000,
                "segmentation": [[6, 3, 8, 3, 8, 5, 6, 5]],
                "bbox": [6.0, 3.0, 2.0, 2.0],
                "obj_ann_id": 1,
                "attribute_ids": [0],
            }
        )
        doc["attributes"] = [{"supercategory": "ATTR", "id": 0, "name": "red"}]
    return doc


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Mutation: set doc[section][index][key] (path "section.index.key"); value None deletes the key."""
    section, index, key = path.split(".")

    def apply(doc: dict[str, Any]) -> None:
        if value is None:
            del doc[section][int(index)][key]
        else:
            doc[section][int(index)][key] = value

    return apply


def _drop_ann(doc: dict[str, Any]) -> None:
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 1]


_BAD_COUNTS = mask_utils.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))["counts"].decode()[:-1] + "3"
CASES = [  # (format, mutation, reason code, what the detail must name)
    ("coco", _set("annotations.0.segmentation", [[1, 1, 5, 1]]), "bad_polygon", "annotation 1"),
    ("coco", _set("annotations.0.segmentation", [_SQUARE, [1, 1, 5, 1, 5, 5, 1]]), "bad_polygon", "polygon 1"),
    ("lvis", _set("annotations.0.segmentation", [[1, 1, "x", 1, 5, 5]]), "bad_polygon", "annotation 1"),
    (
        "coco",
        _set("annotations.0.segmentation", {"size": [11, 20], "counts": [220]}),
        "rle_size_mismatch",
        "annotation 1",
    ),
    (
        "paco",
        _set("annotations.0.segmentation", {"size": [10, 21], "counts": "PD"}),
        "rle_size_mismatch",
        "annotation 1",
    ),
    ("coco", _set("annotations.0.category_id", 99), "unknown_category", "annotation 1"),
    ("lvis", _set("images.0.neg_category_ids", [42]), "unknown_category", "neg_category_ids"),
    ("coco", _set("annotations.0.bbox", [15.0, 2.0, 10.0, 4.0]), "bbox_outside", "annotation 1"),
    ("lvis", _set("annotations.0.bbox", [-3.0, 2.0, 4.0, 4.0]), "bbox_outside", "annotation 1"),
    ("coco", _set("annotations.1.id", 1), "duplicate_ann_id", "annotation id 1"),
    ("paco", _set("annotations.2.obj_ann_id", 2), "bad_parent", "annotation 3"),  # parent in another image
    ("paco", _set("annotations.2.obj_ann_id", 3), "bad_parent", "annotation 3"),  # a part of itself
    ("paco", _set("annotations.2.obj_ann_id", None), "bad_parent", "annotation 3"),
    ("paco", _set("annotations.0.obj_ann_id", 2), "bad_parent", "annotation 1"),  # object pointing elsewhere
    ("coco", _set("images.0.file_name", "../../etc/passwd"), "unsafe_path", "etc/passwd"),
    ("paco", _set("images.0.file_name", "/abs/1.png"), "unsafe_path", "/abs/1.png"),
    ("lvis", _set("images.0.coco_url", "http://host/x/.."), "unsafe_path", "'..'"),
    ("coco", _set("images.0.file_name", "s3://other-bucket/1.png"), "unsafe_path", "other-bucket"),
    ("coco", _drop_ann, "no_annotations", "no annotations"),
    ("coco", _set("annotations.0.bbox", None), "bad_annotation", "annotation 1"),
    (
        "coco",
        _set("annotations.0.segmentation", {"size": [10, 20], "counts": [100, 100, 1]}),
        "bad_annotation",
        "annotation 1",
    ),
    (
        "paco",
        _set("annotations.0.segmentation", {"size": [10, 20], "counts": _BAD_COUNTS}),
        "bad_annotation",
        "annotation 1",
    ),
    ("paco", _set("annotations.2.attribute_ids", [7]), "bad_annotation", "annotation 3"),
    ("coco", _set("annotations.0.segmentation", "polygon"), "bad_annotation", "annotation 1"),
    ("coco", _set("images.0.width", None), "bad_image", "size"),
]


@pytest.mark.parametrize(
    ("fmt", "mutate", "code", "names"), CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)]
)
def test_invalid_annotation_makes_an_error_record(
    tmp_path: Path, fmt: str, mutate: Callable[[dict[str, Any]], None], code: str, names: str
) -> None:
    doc = _tiny(fmt)
    mutate(doc)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    table = read_source("tiny", fmt, str(path), str(tmp_path / "images"))
    assert table.schema.equals(IMAGE_SCHEMA) and table.num_rows == 2  # never dropped, never a crash
    rows = _rows(table)
    assert rows[1]["image_error"] == code and code in REASON_CODES
    assert rows[1]["objects"] == [] and rows[1]["image_error_detail"].startswith("image 1")
    assert names in rows[1]["image_error_detail"]
    if code == "duplicate_ann_id":
        assert rows[2]["image_error"] == code
    else:  # the other image of the file is unaffected
        assert rows[2]["image_error"] is None and len(rows[2]["objects"]) == 1


def test_valid_tiny_files(tmp_path: Path) -> None:
    for fmt in ("coco", "lvis", "paco"):
        path = tmp_path / f"{fmt}.json"
        path.write_text(json.dumps(_tiny(fmt)))
        rows = _rows(read_source("tiny", fmt, str(path), "s3://bucket/images/"))
        assert rows[1]["image_error"] is None and rows[1]["image_uri"] == "s3://bucket/images/1.png"
        assert rows[1]["objects"][0]["area"] == 24.0
    assert [o["attributes"] for o in rows[1]["objects"]] == [[], ["red"]]


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [\n    {"id": 1,, "width": 3}\n  ]\n}\n')
    with pytest.raises(AnnotationFileError, match=r"broken\.json: malformed JSON at line 3, column 14"):
        read_source("x", "coco", str(path), str(tmp_path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "top level"),
        ('{"images": [], "annotations": []}', "'categories'"),
        ('{"images": [{"file_name": "a"}], "annotations": [], "categories": []}', r"images\[0\]"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', r"categories\[0\]"),
    ],
)
def test_broken_file_structure(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(AnnotationFileError, match=message):
        read_source("x", "coco", str(path), str(tmp_path))


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="coco, lvis, paco"):
        read_source("x", "openimages", str(tmp_path / "a.json"), str(tmp_path))


# ------------------------------------------------------------------ S3 (moto server) -----------
def test_read_from_s3(
    s3_bucket: tuple[str, str], sources: dict[str, dict[str, str]], tables: dict[str, pa.Table]
) -> None:
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    for fmt, src in sources.items():
        client.upload_file(src["annotations"], bucket, f"annotations/{fmt}.json")
    options: list[dict[str, Any]] = [{"client_kwargs": {"endpoint_url": endpoint}}, {"endpoint_url": endpoint}]
    for fmt, opts in zip(sources, options + options[:1], strict=True):
        table = read_source(
            f"{fmt}_sample", fmt, f"s3://{bucket}/annotations/{fmt}.json", f"s3://{bucket}/images", copy.deepcopy(opts)
        )
        local = tables[fmt]
        assert table.drop_columns(["image_uri"]).equals(local.drop_columns(["image_uri"]))
        assert all(u.startswith(f"s3://{bucket}/images/") for u in table.column("image_uri").to_pylist())
