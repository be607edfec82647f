"""gRefCOCO-style export (GRES / ReLA, LISA's gRefCOCO loader, PSALM's build_gRefCOCO.py).

gRefCOCO ships `grefcoco/grefs(unc).json` (a list of refs) next to `grefcoco/instances.json` (COCO:
images, annotations, categories) and is read with `G_REFER(data_root, "grefcoco", "unc")`. A ref names
its targets by annotation id (`ann_id` a list; `[-1]` and `no_target: true` for a no-target
expression) and the loaders rebuild the mask from instances.json.

Our target ids are source annotation ids, and COCO, LVIS and PACO number their annotations (and
categories) independently, so ids collide across sources. Rather than renumber (which would break
the link back to the source files), each source gets its own pair:

    <out>/<source>/grefcoco/grefs(<split_by>).json
    <out>/<source>/grefcoco/instances.json

so `G_REFER(f"{out}/{source}", "grefcoco", "unc")` reads one source. One ref per sample, one sentence
per ref; extra keys (sample_id, task, subtype, answer, source) are ignored by the loaders.
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
from pipelines.storage import guard


def refs_file_name(split_by: str) -> str:
    return f"grefs({split_by}).json"


def make_ref(r: dict[str, Any], index: SourceIndex, ref_id: int, split: str) -> dict[str, Any]:
    """One gRefCOCO ref for one sample (sent_id == ref_id: one sentence per ref)."""
    targets = [int(a) for a in r["target_ids"]]
    no_target = not targets
    img = index.images[int(r["image_id"])]
    return {
        "ref_id": ref_id,
        "image_id": int(r["image_id"]),
        "ann_id": targets or [-1],
        # gRefCOCO lists one category per target ([-1] with no target); grefer accepts int or list.
        "category_id": [int(index.anns[a]["category_id"]) for a in targets] or [-1],
        "split": split,
        "sentences": [sentence(r["instruction"], ref_id)],
        "sent_ids": [ref_id],
        "no_target": no_target,
        "file_name": img["file_name"],
        "sample_id": r["sample_id"],
        "task": r["task"],
        "subtype": r["subtype"],
        "answer": r["answer"],
        "source": r["source"],
    }


def instances(refs: list[dict[str, Any]], index: SourceIndex, mode: str) -> dict[str, Any]:
    """COCO instances of the referenced images: every annotation of each image (as gRefCOCO's file has
    the full object table of its images), the source's whole category table."""
    image_ids = sorted({ref["image_id"] for ref in refs})
    annotations = [
        export_annotation(index, int(a["id"]), mode) for i in image_ids for a in index.anns_by_image[i]
    ]
    return {
        "info": {"description": f"Ground-V export of source {index.spec.name} ({index.spec.format})"},
        "images": [index.images[i] for i in image_ids],
        "annotations": annotations,
        "categories": index.categories,
    }


def write(samples: list[dict[str, Any]], indexes: dict[str, SourceIndex], ctx: ExportContext) -> dict[str, Any]:
    files: list[str] = []
    per_source: dict[str, Any] = {}
    for name, index in indexes.items():
        rows = [r for r in samples if r["source"] == name]
        refs = [make_ref(r, index, i, ctx.split) for i, r in enumerate(rows)]
        folder = guard.inside(ctx.out_dir, guard.safe_name(name, "source name"), "grefcoco")
        inst = instances(refs, index, ctx.segmentation)
        write_json(os.path.join(folder, "instances.json"), inst)
        write_json(os.path.join(folder, refs_file_name(ctx.split_by)), refs)
        files += [os.path.join(name, "grefcoco", "instances.json"),
                  os.path.join(name, "grefcoco", refs_file_name(ctx.split_by))]
        per_source[name] = {"refs": len(refs), "no_target": sum(r["no_target"] for r in refs),
                            "images": len(inst["images"]), "annotations": len(inst["annotations"]),
                            "by_task": count_by(rows, "task")}
    return {"files": files, "records": sum(s["refs"] for s in per_source.values()), "sources": per_source}
