"""Union masks in RLE space: decoding the union equals the OR of the decoded sources, for polygon,
multi-polygon and RLE (incl. crowd-style uncompressed) sources; no target -> all-zero mask."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.core.masks import empty_rle, merge_rles, target_bboxes, union_rle

H, W = 123, 257  # odd, non-square: catches h/w swaps and column-major mistakes


def compress(rle: dict) -> str:
    return rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]


def from_polygons(polys: list[list[float]], h: int = H, w: int = W) -> str:
    return compress(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))


def from_array(m: np.ndarray) -> str:
    return compress(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))


def decode(counts: str, h: int = H, w: int = W) -> np.ndarray:
    return mask_utils.decode({"size": [h, w], "counts": counts})


def objects(counts: list[str]) -> dict[int, dict]:
    return {100 + i: {"ann_id": 100 + i, "rle_counts": c, "bbox": [0.0, 0.0, 1.0, 1.0]} for i, c in enumerate(counts)}


def check_exact(by_ann: dict[int, dict], ids: list[int], h: int = H, w: int = W) -> np.ndarray:
    u = union_rle(by_ann, ids, h, w)
    assert u["size"] == [h, w] and isinstance(u["counts"], str)
    want = np.zeros((h, w), dtype=np.uint8)
    for a in ids:
        want |= decode(by_ann[a]["rle_counts"], h, w)
    got = decode(u["counts"], h, w)
    assert got.shape == (h, w)
    assert np.array_equal(got, want)
    return got


def test_union_of_polygons_is_exact():
    tri = [[10, 10, 80, 15, 30, 90]]
    quad = [[60, 20, 200, 30, 190, 110, 70, 100]]
    star = [[150, 5, 160, 40, 250, 45, 170, 60, 200, 120, 150, 75, 100, 120, 130, 60, 50, 45, 140, 40]]
    by = objects([from_polygons(tri), from_polygons(quad), from_polygons(star)])
    got = check_exact(by, [100, 101, 102])
    assert got.sum() > 0


def test_multi_polygon_objects_union_is_exact():
    two_parts = [[5, 5, 40, 5, 40, 40, 5, 40], [100, 60, 140, 60, 140, 100, 100, 100]]
    overlapping = [[30, 30, 120, 30, 120, 80, 30, 80], [110, 70, 250, 70, 250, 120, 110, 120]]
    by = objects([from_polygons(two_parts), from_polygons(overlapping)])
    check_exact(by, [100, 101])
    check_exact(by, [101])


def test_union_of_rle_sources_is_exact():
    rng = np.random.default_rng(0)
    arrays = [(rng.random((H, W)) < p).astype(np.uint8) for p in (0.05, 0.3, 0.7)]
    # A crowd-style uncompressed RLE, converted the way readers store it (compressed string).
    crowd = mask_utils.frPyObjects({"size": [H, W], "counts": [500, 300, 2000, 1000, H * W - 3800]}, H, W)
    by = objects([from_array(a) for a in arrays] + [compress(crowd)])
    got = check_exact(by, [100, 101, 102, 103])
    assert np.array_equal(got, (arrays[0] | arrays[1] | arrays[2] | decode(compress(crowd))).astype(np.uint8))


def test_union_is_order_and_repeat_insensitive():
    by = objects([from_polygons([[1, 1, 50, 1, 50, 50]]), from_polygons([[60, 60, 200, 60, 200, 100]])])
    a = union_rle(by, [100, 101], H, W)
    assert a == union_rle(by, [101, 100], H, W) == union_rle(by, [101, 100, 101], H, W)


def test_single_target_keeps_the_stored_rle():
    c = from_polygons([[1, 1, 50, 1, 50, 50]])
    assert union_rle(objects([c]), [100], H, W) == {"size": [H, W], "counts": c}


def test_no_target_is_an_all_zero_mask_of_the_image_size():
    u = union_rle({}, [], H, W)
    m = decode(u["counts"])
    assert u["size"] == [H, W] and m.shape == (H, W) and m.sum() == 0
    assert empty_rle(480, 640)["size"] == [480, 640]
    assert decode(empty_rle(480, 640)["counts"], 480, 640).shape == (480, 640)


def test_image_size_is_respected_and_checked():
    c = from_polygons([[1, 1, 50, 1, 50, 50]])
    with pytest.raises(ValueError, match="does not match"):
        merge_rles([{"size": [W, H], "counts": c}, {"size": [H, W], "counts": c}], H, W)


def test_unknown_ann_id_raises():
    with pytest.raises(KeyError):
        union_rle(objects([from_polygons([[1, 1, 50, 1, 50, 50]])]), [999], H, W)


def test_target_bboxes_from_mask_and_stored():
    m = np.zeros((H, W), dtype=np.uint8)
    m[20:50, 30:100] = 1
    by = objects([from_array(m)])
    assert target_bboxes(by, [100], H, W) == [[30.0, 20.0, 70.0, 30.0]]
    assert target_bboxes(by, [100], H, W, from_mask=False) == [[0.0, 0.0, 1.0, 1.0]]
    assert target_bboxes(by, [], H, W) == []
