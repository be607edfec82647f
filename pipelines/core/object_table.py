"""The object table a teacher sees, and the local-id <-> annotation-id map.

Local ids are small integers 1..K so a teacher never sees (or leaks) source annotation ids:
  * whole objects (non-parts) first, in ascending source annotation id -> 1..M
  * then parts, ordered by (their parent's local id, their own annotation id) -> M+1..K
Crowd regions are listed with ``"crowd": true`` so a teacher knows the category is present
(important for hallucination), and the filters reject any pair that targets one.

Boxes are shown as integer ``[x1, y1, x2, y2]``. ``box_format`` picks the frame:
  * ``xyxy``       pixels of the source image (default; what the annotations use)
  * ``xyxy_resized`` pixels of the image as resized for the teacher (Qwen2.5-VL's absolute
                   coordinates refer to the image it was given)
  * ``xyxy_1000``  normalised to 0..1000 (Qwen2-VL / Qwen3-VL convention)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

BOX_FORMATS = ("xyxy", "xyxy_resized", "xyxy_1000")


@dataclass(frozen=True)
class TableRow:
    local_id: int
    ann_id: int
    name: str  # clean category name; for a part, the part name ("handle")
    supercategory: str
    is_part: bool
    parent_local_id: int | None
    bbox: tuple[float, float, float, float]  # COCO x, y, w, h in source pixels
    area: float
    iscrowd: bool
    attributes: tuple[str, ...] = field(default_factory=tuple)


def build_object_table(objects: Iterable[Mapping[str, Any]]) -> list[TableRow]:
    """Assign local ids to the objects of one image (see module doc for the order)."""
    objs = list(objects)
    wholes = sorted((o for o in objs if not o["is_part"]), key=lambda o: int(o["ann_id"]))
    local_of: dict[int, int] = {int(o["ann_id"]): i + 1 for i, o in enumerate(wholes)}
    parts = [o for o in objs if o["is_part"]]
    parts.sort(key=lambda o: (local_of.get(_parent(o), 10**9), int(o["ann_id"])))
    rows: list[TableRow] = []
    for i, o in enumerate(wholes + parts):
        local_id = i + 1
        parent_local = local_of.get(_parent(o)) if o["is_part"] else None
        rows.append(
            TableRow(
                local_id=local_id,
                ann_id=int(o["ann_id"]),
                name=str(o["name"]),
                supercategory=str(o.get("supercategory") or ""),
                is_part=bool(o["is_part"]),
                parent_local_id=parent_local,
                bbox=tuple(float(v) for v in o["bbox"]),  # type: ignore[arg-type]
                area=float(o.get("area") or 0.0),
                iscrowd=bool(o.get("iscrowd")),
                attributes=tuple(o.get("attributes") or ()),
            )
        )
    return rows


def _parent(o: Mapping[str, Any]) -> int:
    p = o.get("parent_ann_id")
    return int(p) if p is not None else -1


def format_box(
    bbox: tuple[float, float, float, float],
    box_format: str,
    width: int,
    height: int,
    teacher_width: int | None = None,
    teacher_height: int | None = None,
) -> list[int]:
    """Convert a COCO xywh box to the table's integer xyxy convention."""
    x, y, w, h = bbox
    x1, y1, x2, y2 = x, y, x + w, y + h
    if box_format == "xyxy":
        sx = sy = 1.0
    elif box_format == "xyxy_resized":
        sx = (teacher_width or width) / width
        sy = (teacher_height or height) / height
    elif box_format == "xyxy_1000":
        sx, sy = 1000.0 / width, 1000.0 / height
    else:
        raise ValueError(f"unknown box_format {box_format!r}; expected one of {BOX_FORMATS}")
    return [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]


def table_entries(
    rows: list[TableRow],
    box_format: str,
    width: int,
    height: int,
    teacher_width: int | None = None,
    teacher_height: int | None = None,
) -> list[dict[str, Any]]:
    """The table as plain dicts (what the prompt shows, one JSON object per line)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        e: dict[str, Any] = {"id": r.local_id, "category": r.name}
        if r.is_part:
            e["part_of"] = r.parent_local_id
        e["box"] = format_box(r.bbox, box_format, width, height, teacher_width, teacher_height)
        if r.attributes:
            e["attributes"] = list(r.attributes)
        if r.iscrowd:
            e["crowd"] = True
        out.append(e)
    return out


def render_object_table(entries: list[dict[str, Any]]) -> str:
    """One compact JSON object per line; unambiguous for any LLM and stable for hashing."""
    return "\n".join(json.dumps(e, separators=(", ", ": ")) for e in entries)


def local_to_ann(rows: list[TableRow]) -> dict[int, int]:
    return {r.local_id: r.ann_id for r in rows}
