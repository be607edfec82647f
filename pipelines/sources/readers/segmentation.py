"""Annotation segmentations (polygons, uncompressed or compressed RLE) -> one compressed RLE.

Every object leaves the readers as a compressed COCO RLE string of the image size, so later stages
work in RLE space only. pycocotools trusts its input completely: a 4-number "polygon" is read as a
box, an odd-length one is silently truncated, and a compressed string whose runs do not add up to
h*w makes `decode` write past its buffer. So everything is validated here, before pycocotools sees it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


class InvalidAnnotation(Exception):
    """An annotation that makes its image an error record: a stable `code` plus a short `detail`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def compressed_counts_valid(counts: bytes, n_pixels: int) -> bool:
    """True when a compressed RLE string decodes to non-negative runs that sum to `n_pixels`.

    Vectorised port of pycocotools' `rleFrString` (5-bit groups, 0x20 = continuation, 0x10 = sign
    of the last group, runs from the third on delta-coded against the run two before): ~30 us for
    a typical string, against a Python loop over every character.
    """
    if not counts:
        return n_pixels == 0
    raw = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if raw.min() < 0 or raw.max() > 63:
        return False
    ends = np.flatnonzero((raw & 0x20) == 0)
    if ends.size == 0 or ends[-1] != raw.size - 1:
        return False  # the string stops in the middle of a number
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 11:
        return False  # > 55 bits: not a run length of any real image, and would overflow int64
    shift = 5 * (np.arange(raw.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((raw & 0x1F) << shift, starts)
    negative = (raw[ends] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * lengths)), values)
    # Runs i > 2 are stored as the difference to run i-2: undo with a cumsum per parity.
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return bool(runs.min() >= 0 and int(runs.sum()) == n_pixels)


def to_compressed_rle(segmentation: Any, height: int, width: int, ann_id: Any) -> bytes:
    """The compressed RLE counts (bytes) of an annotation's segmentation at the image size.

    Raises `InvalidAnnotation` with code `bad_polygon`, `rle_size_mismatch` or `bad_annotation`.
    """
    if isinstance(segmentation, list):
        return _polygons_to_rle(segmentation, height, width, ann_id)
    if isinstance(segmentation, dict):
        return _rle_to_compressed(segmentation, height, width, ann_id)
    raise InvalidAnnotation(
        "bad_annotation", f"annotation {ann_id}: segmentation is {type(segmentation).__name__}"
    )


def _polygons_to_rle(polygons: list[Any], height: int, width: int, ann_id: Any) -> bytes:
    if not polygons:
        raise InvalidAnnotation("bad_polygon", f"annotation {ann_id}: empty polygon list")
    for i, poly in enumerate(polygons):
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            n = len(poly) if isinstance(poly, list) else type(poly).__name__
            raise InvalidAnnotation(
                "bad_polygon", f"annotation {ann_id}: polygon {i} has {n} numbers (need an even count >= 6)"
            )
        try:
            coords = np.asarray(poly, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidAnnotation("bad_polygon", f"annotation {ann_id}: polygon {i} is not numeric") from None
        # NaN/inf coordinates are undefined behaviour in the C rasteriser.
        if not np.isfinite(coords).all():
            raise InvalidAnnotation("bad_polygon", f"annotation {ann_id}: polygon {i} has non-finite numbers")
    rles = mask_utils.frPyObjects(polygons, height, width)
    rle = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=0)
    return rle["counts"]


def _rle_to_compressed(rle: dict[str, Any], height: int, width: int, ann_id: Any) -> bytes:
    size = rle.get("size")
    counts = rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise InvalidAnnotation("bad_annotation", f"annotation {ann_id}: RLE size {size!r} is not [h, w]")
    if size[0] != height or size[1] != width:
        raise InvalidAnnotation(
            "rle_size_mismatch", f"annotation {ann_id}: RLE size {size} != image size [{height}, {width}]"
        )
    n_pixels = height * width
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != n_pixels:
            raise InvalidAnnotation(
                "bad_annotation", f"annotation {ann_id}: uncompressed RLE runs do not cover {n_pixels} pixels"
            )
        return mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if isinstance(counts, bytes):
        if not compressed_counts_valid(counts, n_pixels):
            raise InvalidAnnotation("bad_annotation", f"annotation {ann_id}: corrupt compressed RLE counts")
        return counts
    raise InvalidAnnotation("bad_annotation", f"annotation {ann_id}: RLE counts is {type(counts).__name__}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def bbox_problem(bbox: Any, height: int, width: int, ann_id: Any) -> InvalidAnnotation | None:
    """Why a COCO [x, y, w, h] box is unusable (malformed, or outside the image by > 1 px), or None."""
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return InvalidAnnotation("bad_annotation", f"annotation {ann_id}: bbox {bbox!r} is not [x, y, w, h]")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return InvalidAnnotation("bad_annotation", f"annotation {ann_id}: bbox {bbox!r} is not numeric")
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        return InvalidAnnotation("bad_annotation", f"annotation {ann_id}: bbox {bbox!r} is degenerate")
    # 1 px of tolerance: COCO boxes are polygon extents and may touch the far border (x + w == W + 0.5).
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        return InvalidAnnotation(
            "bbox_outside", f"annotation {ann_id}: bbox {bbox} outside the {width}x{height} image"
        )
    return None
