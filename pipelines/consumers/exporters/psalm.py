"""PSALM-style export: the JSON list PSALM's datasets/build_RefCOCO.py / build_gRefCOCO.py produce and
its RefCOCO_dataset trains on.

    <out>/<split>_psalm.json = [
      {"image": file_name, "image_info": {COCO image entry}, "instruction": [sentence, ...],
       "new_img_id": i, "anns": [COCO annotations of the targets]}, ...]

`instruction` is the ref's sentence list (PSALM joins their "sent"), `anns` the target annotations
with their segmentation (polygons by default: PSALM's mapper uses detectron2's `mask_format="polygon"`),
empty for a no-target sample, as PSALM's gRefCOCO builder writes them. Annotations are embedded, so
the ann-id collisions between sources do not matter here and every source goes in one file; each
record also carries its `source` (category ids are the source's own).
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.consumers.exporters.common import (
    ExportContext,
    SourceIndex,
    count_by,
    export_annotation,
    sentence,
    write_json,
)


def file_name(split: str) -> str:
    return f"{split}_psalm.json"


def make_record(r: dict[str, Any], index: SourceIndex, i: int, mode: str) -> dict[str, Any]:
    img = index.images[int(r["image_id"])]
    targets = [int(a) for a in r["target_ids"]]
    return {
        "image": img["file_name"],
        "image_info": img,
        "instruction": [sentence(r["instruction"], i)],
        "new_img_id": i,
        "anns": [export_annotation(index, a, mode) for a in targets],
        "sample_id": r["sample_id"],
        "source": r["source"],
        "task": r["task"],
        "subtype": r["subtype"],
        "answer": r["answer"],
        "target_ids": targets,
    }


def write(samples: list[dict[str, Any]], indexes: dict[str, SourceIndex], ctx: ExportContext) -> dict[str, Any]:
    records = [make_record(r, indexes[r["source"]], i, ctx.segmentation) for i, r in enumerate(samples)]
    write_json(os.path.join(ctx.out_dir, file_name(ctx.split)), records)
    return {"files": [file_name(ctx.split)], "records": len(records),
            "no_target": sum(not rec["anns"] for rec in records), "by_source": count_by(samples, "source")}
