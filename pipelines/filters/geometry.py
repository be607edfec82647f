"""Mask facts the checks need, computed in COCO RLE space (never decoding a mask).

One `RleGeometry` per unit: areas and boxes of every object come from one vectorised
`pycocotools.mask.area` / `toBbox` call, part-in-parent fractions from an RLE intersection
(`merge(..., intersect=1)`), answer masks from `merge`. Positions ("leftmost", "at the top") use
the bbox centre, not the true mask centroid: the centroid would need a decode (~10x dearer) and
the spatial check already treats near-ties as ties (`FilterSettings.spatial_tolerance`), which
absorbs the small centre/centroid difference of ordinary object shapes.

The check code only talks to the small interface below, so a benchmark can swap in a
decode-everything implementation and measure the same decisions (bench/filters.py).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pycocotools import mask as mask_utils

from pipelines.core.masks import merge_rles, rle_of


class RleGeometry:
    """Areas, boxes, containment and unions of one image's object masks, keyed by local id."""

    def __init__(self, rle_counts: Mapping[int, str | bytes], height: int, width: int) -> None:
        self.height = int(height)
        self.width = int(width)
        missing = [lid for lid, c in rle_counts.items() if c is None or c == ""]
        if missing:
            raise ValueError(f"objects with local ids {missing} have no rle_counts")
        self._ids = list(rle_counts)
        self._rles = {lid: rle_of(c, self.height, self.width) for lid, c in rle_counts.items()}
        self._area: dict[int, float] = {}
        self._bbox: dict[int, list[float]] = {}
        if self._ids:
            rles = [self._rles[i] for i in self._ids]
            for lid, a, b in zip(
                self._ids, mask_utils.area(rles).tolist(), mask_utils.toBbox(rles).tolist(), strict=True
            ):
                self._area[lid] = float(a)
                self._bbox[lid] = [float(v) for v in b]
        self._inside: dict[tuple[int, int], float] = {}

    def area(self, local_id: int) -> float:
        return self._area[local_id]

    def bbox(self, local_id: int) -> list[float]:
        return self._bbox[local_id]

    def center(self, local_id: int) -> tuple[float, float]:
        x, y, w, h = self._bbox[local_id]
        return x + w / 2.0, y + h / 2.0

    def inside_fraction(self, part_id: int, parent_id: int) -> float:
        """area(part AND parent) / area(part); 0 for an empty part."""
        key = (part_id, parent_id)
        got = self._inside.get(key)
        if got is None:
            a = self._area[part_id]
            if a <= 0:
                got = 0.0
            else:
                inter = mask_utils.merge([self._rles[part_id], self._rles[parent_id]], intersect=1)
                got = float(mask_utils.area(inter)) / a
            self._inside[key] = got
        return got

    def union(self, local_ids: Sequence[int]) -> dict[str, Any]:
        return merge_rles([self._rles[i] for i in dict.fromkeys(local_ids)], self.height, self.width)

    def bboxes(self, local_ids: Sequence[int]) -> list[list[float]]:
        return [list(self._bbox[i]) for i in local_ids]
