"""LISA-style export: the ReasonSeg layout LISA's ReasonSegDataset reads.

LISA globs `<base>/reason_seg/<Name>/<split>/*.jpg` and reads, beside each image, a `.json` with
`text` (instructions), `is_sentence` and labelme-style `shapes` (polygons drawn with OpenCV's
fillPoly; label "ignore" marks pixels to ignore). All texts of one file share the one mask, so we
write one image + json pair per sample:

    <out>/<split>/<sample_id>.jpg    the source image (symlink, copy, or left out: --images)
    <out>/<split>/<sample_id>.json   {"text": [instruction], "is_sentence": true, "shapes": [...]}
    <out>/explanatory/<split>.json   [{"image": "<sample_id>.jpg", "query", "outputs": answer}]

The answer mask becomes pixel-exact rectangles in OpenCV's inclusive convention, so LISA's reader
rebuilds exactly the Parquet mask (a no-target sample has no shapes: an all-zero mask). The image file
keeps its bytes: a PNG source is a PNG named .jpg, which OpenCV decodes by content. Extra keys
(answer, task, source_image, mask as COCO RLE, ...) are ignored by LISA.
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.consumers.exporters.common import (
    ExportContext,
    ImagePlacer,
    SourceIndex,
    count_by,
    mask_rectangles,
    rectangles_to_cv2_points,
    write_json,
)
from pipelines.storage import guard

TARGET_LABEL = "target"


def shapes(mask: dict[str, Any]) -> list[dict[str, Any]]:
    """labelme-style polygon shapes whose OpenCV fill is exactly the mask."""
    rle = {"size": list(mask["size"]), "counts": mask["counts"].encode("ascii")}
    return [
        {"label": TARGET_LABEL, "points": pts, "group_id": None, "shape_type": "polygon", "flags": {}}
        for pts in rectangles_to_cv2_points(mask_rectangles(rle))
    ]


def make_record(r: dict[str, Any], index: SourceIndex) -> dict[str, Any]:
    img = index.images[int(r["image_id"])]
    return {
        "text": [r["instruction"]],
        # Teacher instructions are full sentences: LISA then uses its long-question templates.
        "is_sentence": True,
        "shapes": shapes(r["mask"]),
        "image": f"{r['sample_id']}.jpg",
        "source_image": r["image_uri"],
        "file_name": img["file_name"],
        "height": int(r["height"]),
        "width": int(r["width"]),
        "answer": r["answer"],
        "sample_id": r["sample_id"],
        "source": r["source"],
        "image_id": int(r["image_id"]),
        "task": r["task"],
        "subtype": r["subtype"],
        "target_ids": [int(a) for a in r["target_ids"]],
        "mask": {"size": list(r["mask"]["size"]), "counts": r["mask"]["counts"]},
    }


def write(samples: list[dict[str, Any]], indexes: dict[str, SourceIndex], ctx: ExportContext) -> dict[str, Any]:
    folder = guard.inside(ctx.out_dir, guard.safe_name(ctx.split, "split"))
    explanatory = []
    placer = ImagePlacer(ctx.images, ctx.store)
    for r in samples:
        rec = make_record(r, indexes[r["source"]])
        stem = guard.safe_name(str(r["sample_id"]), "sample_id")  # a crafted shard must not write outside --out
        write_json(guard.inside(folder, f"{stem}.json"), rec)
        placer.place(r["image_uri"], indexes[r["source"]].spec.images, guard.inside(folder, rec["image"]))
        explanatory.append({"image": rec["image"], "query": r["instruction"], "outputs": r["answer"]})
    write_json(os.path.join(ctx.out_dir, "explanatory", f"{ctx.split}.json"), explanatory)
    return {"files": [f"{ctx.split}/<sample_id>.json", f"explanatory/{ctx.split}.json"],
            "records": len(samples), "images": ctx.images, "images_stored": len(placer.first),
            "images_reencoded_without_exif_rotation": placer.reencoded,
            "no_target": sum(not r["target_ids"] for r in samples), "by_source": count_by(samples, "source")}
