"""The embedded sample dataset: deterministic, realistic in structure, annotations equal to pixels."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipelines.sources.sample_data import BACKGROUND_COLOURS, MARKER_NAME, OBJECT_COLOURS, ensure_sample_dataset


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("sample")
    return {
        s["format"]: {**s, "doc": json.loads(Path(s["annotations"]).read_text())}
        for s in ensure_sample_dataset(str(root))
    }


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(seg: Any, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
    if isinstance(seg["counts"], list):
        seg = mask_utils.frPyObjects(seg, h, w)
    return mask_utils.decode(seg).astype(bool)


def _is_object_colour(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: is it nearer an object colour than a background colour; distance to the nearest."""
    px = pixels.astype(np.int32)[..., None, :]
    d_obj = np.abs(px - np.array(list(OBJECT_COLOURS.values()))).max(-1).min(-1)
    d_bg = np.abs(px - np.array(list(BACKGROUND_COLOURS.values()))).max(-1).min(-1)
    return d_obj < d_bg, np.minimum(d_obj, d_bg)


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    ensure_sample_dataset(str(tmp_path / "a"))
    ensure_sample_dataset(str(tmp_path / "b"))
    ensure_sample_dataset(str(tmp_path / "c"), seed=1)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_marker_skips_regeneration_and_tracks_parameters(tmp_path: Path) -> None:
    sources = ensure_sample_dataset(str(tmp_path), num_images=4)
    assert json.loads((tmp_path / MARKER_NAME).read_text())["num_images"] == 4
    image = tmp_path / "images" / "000000000001.png"
    image.write_bytes(b"touched")
    assert ensure_sample_dataset(str(tmp_path), num_images=4) == sources
    assert image.read_bytes() == b"touched"  # existing dataset: nothing regenerated
    ensure_sample_dataset(str(tmp_path), num_images=5)  # other parameters: regenerated
    assert image.read_bytes() != b"touched"
    assert len(json.loads(Path(sources[0]["annotations"]).read_text())["images"]) == 5


def test_sources(sample: dict[str, dict[str, Any]]) -> None:
    assert [s["name"] for s in sample.values()] == ["coco_sample", "paco_sample", "lvis_sample"]
    for s in sample.values():
        assert Path(s["annotations"]).is_file() and Path(s["images"]).is_dir()


def test_images_and_vocabulary(sample: dict[str, dict[str, Any]]) -> None:
    doc = sample["coco"]["doc"]
    assert len(doc["images"]) >= 24
    formats = {Image.open(Path(sample["coco"]["images"]) / i["file_name"]).format for i in doc["images"]}
    assert formats == {"PNG", "JPEG"}
    cats = {c["id"]: c for c in doc["categories"]}
    used = {a["category_id"] for a in doc["annotations"]}
    assert len(used) >= 8 and len({cats[c]["supercategory"] for c in used}) >= 3
    per_image = Counter((a["image_id"], a["category_id"]) for a in doc["annotations"])
    assert sum(n >= 2 for n in per_image.values()) >= 10  # "all the cups", "the leftmost cup"
    assert max(per_image.values()) >= 3
    for cid in used:  # instances of one category come in different sizes
        areas = [a["area"] for a in doc["annotations"] if a["category_id"] == cid and not a["iscrowd"]]
        assert max(areas) > 1.5 * min(areas), cats[cid]["name"]


def test_coco_crowd_and_multi_polygon(sample: dict[str, dict[str, Any]]) -> None:
    doc = sample["coco"]["doc"]
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"]["counts"], list)
    sizes = {i["id"]: (i["height"], i["width"]) for i in doc["images"]}
    disjoint = 0
    for a in doc["annotations"]:
        if a["iscrowd"]:
            continue
        polys = a["segmentation"]
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
        if len(polys) >= 2:
            h, w = sizes[a["image_id"]]
            counts = sum(mask_utils.area(mask_utils.frPyObjects([p], h, w))[0] for p in polys)
            disjoint += counts == a["area"]
    assert disjoint >= 1  # an object split in two by a post


def test_paco_structure(sample: dict[str, dict[str, Any]]) -> None:
    doc = sample["paco"]["doc"]
    cats = {c["id"]: c for c in doc["categories"]}
    anns = {a["id"]: a for a in doc["annotations"]}
    parts = [a for a in anns.values() if a["obj_ann_id"] != a["id"]]
    assert parts and all(a["category_id"] >= 2000 and ":" in cats[a["category_id"]]["name"] for a in parts)
    assert all(anns[p["obj_ann_id"]]["obj_ann_id"] == p["obj_ann_id"] for p in parts)  # parent is an object
    assert all(anns[p["obj_ann_id"]]["image_id"] == p["image_id"] for p in parts)
    with_parts = {cats[anns[p["obj_ann_id"]]["category_id"]]["name"] for p in parts}
    assert {"cup", "chair", "car_(automobile)"} <= with_parts
    assert {"cup:handle", "cup:rim", "chair:seat", "car_(automobile):wheel"} <= {c["name"] for c in cats.values()}
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns.values())
    assert len(doc["attributes"]) == 59 and doc["attributes"][0] == {"supercategory": "ATTR", "id": 0, "name": "black"}
    labelled = [a for a in anns.values() if a["attribute_ids"]]
    assert 0 < len(labelled) < len(anns)
    assert 0 < len(doc["images"]) < len(sample["coco"]["doc"]["images"])  # a subset, like PACO-LVIS
    assert any(i["neg_category_ids"] for i in doc["images"])
    assert any(i["not_exhaustive_category_ids"] for i in doc["images"])


def test_lvis_structure(sample: dict[str, dict[str, Any]]) -> None:
    doc = sample["lvis"]["doc"]
    assert all("iscrowd" not in a and isinstance(a["segmentation"], list) for a in doc["annotations"])
    assert all("file_name" not in i and i["coco_url"].startswith("http") for i in doc["images"])
    names = {c["name"]: c for c in doc["categories"]}
    assert "car_(automobile)" in names and "automobile" in names["car_(automobile)"]["synonyms"]
    assert any(i["neg_category_ids"] for i in doc["images"])
    assert any(i["not_exhaustive_category_ids"] for i in doc["images"])


def test_masks_match_drawn_pixels(sample: dict[str, dict[str, Any]]) -> None:
    doc = sample["coco"]["doc"]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for img in doc["images"]:
        h, w = img["height"], img["width"]
        pixels = np.asarray(Image.open(Path(sample["coco"]["images"]) / img["file_name"]).convert("RGB"))
        assert pixels.shape == (h, w, 3)
        union = np.zeros((h, w), dtype=bool)
        for a in by_image[img["id"]]:
            m = _decode(a["segmentation"], h, w)
            assert not (m & union).any()  # objects never overlap: each pixel has one owner
            union |= m
        is_obj, dist = _is_object_colour(pixels)
        if img["file_name"].endswith(".png"):
            assert (dist == 0).all()  # only palette colours: nothing else was drawn
            assert np.array_equal(is_obj, union), img["file_name"]
        else:  # JPEG: exact away from edges, where compression blurs colours
            inside, outside = ~_grow(~union, 2), ~_grow(union, 2)
            # Inside, pieces of different colours meet and JPEG blends them (blue + black looks like
            # the navy post): a few percent of such pixels are expected, never outside.
            assert is_obj[inside].mean() > 0.93 and (~is_obj[outside]).mean() > 0.999, img["file_name"]


def test_paco_parts_inside_parent_and_uniform(sample: dict[str, dict[str, Any]]) -> None:
    doc = sample["paco"]["doc"]
    images = {i["id"]: i for i in doc["images"]}
    anns = {a["id"]: a for a in doc["annotations"]}
    checked = 0
    for a in anns.values():
        if a["obj_ann_id"] == a["id"]:
            continue
        img = images[a["image_id"]]
        part = _decode(a["segmentation"], img["height"], img["width"])
        parent = _decode(anns[a["obj_ann_id"]]["segmentation"], img["height"], img["width"])
        assert part.any() and not (part & ~parent).any()
        if img["file_name"].endswith(".png"):
            pixels = np.asarray(Image.open(Path(sample["paco"]["images"]) / img["file_name"]).convert("RGB"))
            assert len(np.unique(pixels[part], axis=0)) == 1  # one drawn piece colour per part
            checked += 1
    assert checked >= 10
