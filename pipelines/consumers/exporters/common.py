"""What every export format shares: the version's sample rows, the source annotations they point to,
segmentations in the form a format's loaders accept, sentences, and the mask check.

The answer mask of a sample is the union of its targets' source masks, so an export does not carry
our Parquet RLE: it carries (or points to) the *source annotations*, the way gRefCOCO / PSALM files
do, and the trainer's own loader rebuilds the mask. Before anything is written, every sample's mask
is rebuilt from the annotation file the manifest's config names and compared with the Parquet mask
(`check_masks`): a stale or edited annotation file stops the export instead of shipping wrong masks.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.dataset as pads
from pycocotools import mask as mask_utils

from pipelines.consumers.dataset import to_arrow_dataset
from pipelines.core.masks import merge_rles
from pipelines.sources.readers import image_file_name, load_annotation_data
from pipelines.sources.readers.segmentation import InvalidAnnotation, to_compressed_rle
from pipelines.sources.resolve import SourceSpec, source_files
from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage.fs import StorageSpec
from schemas.columns import KIND_SAMPLES, SAMPLE_SCHEMA, TASKS
from schemas.manifest import Manifest

# How annotation segmentations are written (grefcoco instances.json and PSALM `anns`):
#   polygon: every non-crowd segmentation as COCO polygons. Source polygons are copied verbatim;
#            RLE sources become pixel-exact rectangles (one polygon per rectangle), because LISA's
#            gRefCOCO loader and PSALM's polygon mapper cannot read an RLE dict. Default.
#   source:  the source segmentation verbatim (RLE dicts stay RLE): pycocotools / GRES loaders.
#   rle:     every segmentation as a compressed COCO RLE dict {"size": [h, w], "counts": str}.
SEGMENTATION_MODES: tuple[str, ...] = ("polygon", "source", "rle")

# Sample columns an export reads (all of them today; named so a schema change shows up here).
SAMPLE_COLUMNS: list[str] = list(SAMPLE_SCHEMA.names)


class ExportError(RuntimeError):
    """The export cannot be made faithfully (missing source, mask mismatch, bad arguments)."""


@dataclass
class ExportContext:
    """Settings every writer gets."""

    out_dir: str
    split: str = "train"
    segmentation: str = "polygon"
    images: str = "link"  # LISA: link | copy | none
    split_by: str = "unc"  # gRefCOCO refs file name: grefs(<split_by>).json
    store: StorageSpec = field(default_factory=StorageSpec)


@dataclass
class SourceIndex:
    """The part of one source's annotation file that the exported samples touch."""

    spec: SourceSpec
    images: dict[int, dict[str, Any]]  # image id -> image entry (file_name always set)
    anns_by_image: dict[int, list[dict[str, Any]]]  # every annotation of those images, file order
    anns: dict[int, dict[str, Any]]
    categories: list[dict[str, Any]]
    _rles: dict[int, dict[str, Any]] = field(default_factory=dict)

    def rle(self, ann_id: int) -> dict[str, Any]:
        """The annotation's mask as a compressed RLE dict, exactly as the builder's reader made it."""
        if ann_id not in self._rles:
            ann = self.anns[ann_id]
            img = self.images[ann["image_id"]]
            counts = to_compressed_rle(ann["segmentation"], img["height"], img["width"], ann_id)
            self._rles[ann_id] = {"size": [img["height"], img["width"]], "counts": counts}
        return self._rles[ann_id]


def load_source_index(spec: SourceSpec, image_ids: set[int], store: StorageSpec) -> SourceIndex:
    """Parse each annotation file of the source once (one file, a glob or folder of them, or
    per-image record shards + the categories file) and keep only the images the samples use."""
    images: dict[int, dict[str, Any]] = {}
    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    anns: dict[int, dict[str, Any]] = {}
    categories: list[dict[str, Any]] | None = None
    cat_options = store.options_for(spec.categories) if spec.categories else None
    for file in source_files(spec, store):
        data, _ = load_annotation_data(file, spec.categories, store.options_for(file), store.retries, cat_options)
        categories = list(data["categories"]) if categories is None else categories
        found = set()
        for img in data["images"]:
            if img.get("id") in image_ids:
                entry = dict(img)
                entry["file_name"] = image_file_name(img, spec.format, spec.images)
                images[img["id"]] = entry
                anns_by_image[img["id"]] = []
                found.add(img["id"])
        for a in data["annotations"]:
            if a.get("image_id") in found:
                anns_by_image[a["image_id"]].append(a)
                anns[a["id"]] = a
    return SourceIndex(spec=spec, images=images, anns_by_image=anns_by_image, anns=anns,
                       categories=categories or [])


def load_samples(output: str, version: int, tasks: list[str] | None, endpoint_url: str | None) -> list[dict[str, Any]]:
    """The version's sample rows (optionally some tasks), in a stable order: source, image, task, id."""
    dataset = to_arrow_dataset(output, version, KIND_SAMPLES, endpoint_url)
    wanted = list(tasks) if tasks else list(TASKS)
    table = dataset.to_table(columns=SAMPLE_COLUMNS, filter=pads.field("task").isin(wanted))
    order = {t: i for i, t in enumerate(TASKS)}
    rows = table.to_pylist()
    rows.sort(key=lambda r: (r["source"], r["image_id"], order.get(r["task"], 99), r["sample_id"]))
    return rows


def source_indexes(samples: list[dict[str, Any]], sources: list[SourceSpec],
                   store: StorageSpec) -> dict[str, SourceIndex]:
    """One index per source the samples come from; a sample of an unknown source stops the export."""
    by_name = {s.name: s for s in sources}
    wanted: dict[str, set[int]] = {}
    for r in samples:
        wanted.setdefault(r["source"], set()).add(int(r["image_id"]))
    missing = sorted(set(wanted) - set(by_name))
    if missing:
        raise ExportError(f"samples come from sources {missing} that the manifest's config does not name")
    return {name: load_source_index(by_name[name], ids, store) for name, ids in sorted(wanted.items())}


def check_masks(samples: list[dict[str, Any]], indexes: dict[str, SourceIndex], limit: int = 5) -> None:
    """Every sample's Parquet mask must equal the union of its targets' masks in the source file."""
    problems: list[str] = []
    for r in samples:
        why = _mask_problem(r, indexes[r["source"]])
        if why:
            problems.append(f"sample {r['sample_id']} ({r['source']}, image {r['image_id']}): {why}")
    if problems:
        more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
        raise ExportError(
            f"{len(problems)} samples do not match their source annotations; was an annotation file "
            f"changed since the build?\n  " + "\n  ".join(problems[:limit]) + more
        )


def _mask_problem(r: dict[str, Any], index: SourceIndex) -> str | None:
    img = index.images.get(int(r["image_id"]))
    if img is None:
        return "image not in the source file"
    h, w = int(img["height"]), int(img["width"])
    if [h, w] != list(r["mask"]["size"]):
        return f"image size {[h, w]} != mask size {list(r['mask']['size'])}"
    rles = []
    for a in r["target_ids"]:
        ann = index.anns.get(int(a))
        if ann is None or ann.get("image_id") != img["id"]:
            return f"annotation {a} not in this image of the source file"
        try:
            rles.append(index.rle(int(a)))
        except InvalidAnnotation as exc:
            return f"annotation {a}: {exc}"
    union = merge_rles(rles, h, w)
    if union["counts"] == r["mask"]["counts"]:
        return None
    # Two strings can still encode one mask (e.g. a source RLE with empty runs): compare pixels.
    stored = {"size": [h, w], "counts": r["mask"]["counts"].encode()}
    rebuilt = {"size": [h, w], "counts": union["counts"].encode()}
    if np.array_equal(mask_utils.decode(stored), mask_utils.decode(rebuilt)):
        return None
    return "mask differs from the union of its targets"


# --- segmentations ---------------------------------------------------------------------------------


def mask_rectangles(rle: dict[str, Any]) -> np.ndarray:
    """A pixel-exact cover of a mask by disjoint rectangles: int array [n, 4] of (x0, y0, x1, y1), ends
    exclusive. Runs of each column are merged across neighbouring columns with the same run (or of
    each row across rows, whichever gives fewer rectangles)."""
    m = mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"]})
    by_col = _runs_merged(np.ascontiguousarray(m.T))  # rows of m.T are image columns: (x, y) order
    by_row = _runs_merged(np.ascontiguousarray(m))  # (y, x) order: swap back
    if len(by_row) < len(by_col):
        return by_row[:, [1, 0, 3, 2]]
    return by_col


def _runs_merged(a: np.ndarray) -> np.ndarray:
    """Runs of ones along axis 1 of `a`, merged across consecutive rows of `a` when identical.
    Returns [n, 4] of (row0, col0, row1, col1), ends exclusive."""
    if a.size == 0 or not a.any():
        return np.zeros((0, 4), dtype=np.int64)
    padded = np.zeros((a.shape[0], a.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = a != 0
    d = np.diff(padded, axis=1)
    rows, c0 = np.nonzero(d == 1)
    _, c1 = np.nonzero(d == -1)  # same row-major order: the i-th end closes the i-th start
    order = np.lexsort((rows, c1, c0))
    rows, c0, c1 = rows[order], c0[order], c1[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (c0[1:] != c0[:-1]) | (c1[1:] != c1[:-1]) | (rows[1:] != rows[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(rows) - 1]
    out = np.stack([rows[first], c0[first], rows[last] + 1, c1[first]], axis=1).astype(np.int64)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def rectangles_to_coco_polygons(rects: np.ndarray) -> list[list[float]]:
    """COCO polygons for pycocotools' rasteriser, whose integer box polygon [x0,y0,x1,y0,x1,y1,x0,y1]
    covers exactly pixels x0..x1-1, y0..y1-1."""
    return [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]
            for x0, y0, x1, y1 in rects.tolist()]


def rectangles_to_cv2_points(rects: np.ndarray) -> list[list[list[int]]]:
    """Point lists for OpenCV's fillPoly/polylines (LISA's reason-seg reader), which fill the integer
    polygon *inclusive* of its border: the corners are the first and last pixel of each side."""
    return [[[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]] for x0, y0, x1, y1 in rects.tolist()]


def export_annotation(index: SourceIndex, ann_id: int, mode: str) -> dict[str, Any]:
    """A copy of a source annotation for an instances file / PSALM `anns`, segmentation per `mode`.

    `iscrowd` is always present (LVIS files omit it; gRefCOCO's grefer reads it unguarded).
    """
    src = index.anns[ann_id]
    ann = copy.deepcopy(src)
    ann["iscrowd"] = int(bool(src.get("iscrowd", 0)))
    seg = src["segmentation"]
    if mode == "rle":
        rle = index.rle(ann_id)
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    elif mode == "polygon" and isinstance(seg, dict) and not ann["iscrowd"]:
        # Crowd regions stay RLE: every loader skips them, and rectangles of a crowd are huge.
        ann["segmentation"] = rectangles_to_coco_polygons(mask_rectangles(index.rle(ann_id)))
    return ann


# --- text ------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+(?:'\w+)*")


def sentence(raw: str, sent_id: int) -> dict[str, Any]:
    """A RefCOCO-style sentence: `raw` as written, `sent` lower-cased word tokens joined by spaces."""
    tokens = _TOKEN.findall(raw.lower())
    return {"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": " ".join(tokens)}


# --- files -----------------------------------------------------------------------------------------


def write_json(path: str, obj: Any) -> None:
    """Plain write (no fsync): an export is re-creatable, and export.json, written last, marks it done."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, separators=(",", ":"))


class ImagePlacer:
    """Puts source images beside an export's records: a symlink, a copy, or nothing.

    * only files under the sample's source images prefix (`guard.under_prefix`): a crafted
      `image_uri` never copies a credentials file into the export;
    * each source image is stored once: later samples of the same image get a hard link to the
      first copy (an S3 source is downloaded once per image, not once per sample);
    * an image whose EXIF orientation tag is not 1 is never linked or copied as is: LISA's
      `cv2.imread` would rotate it while the masks are in stored pixel order. It is re-encoded from
      the stored pixels without EXIF (`reencoded` counts them).
    """

    def __init__(self, how: str, store: StorageSpec) -> None:
        self.how, self.store = how, store
        self.first: dict[str, str] = {}  # source uri -> the export file holding its bytes
        self.reencoded = 0

    def place(self, src_uri: str, prefix: str, dst: str) -> None:
        if self.how == "none":
            return
        src_uri = guard.under_prefix(src_uri, prefix)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.tmp-{os.getpid()}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if src_uri in self.first:
            os.link(self.first[src_uri], tmp)
        elif self.how == "link" and not storage.is_s3(src_uri) and not _rotated(src_uri):
            os.symlink(src_uri, tmp)
        else:  # copy, an S3 object, or an EXIF-rotated image (never linked)
            data = storage.read_bytes(src_uri, self.store)
            fixed = without_orientation(data)
            self.reencoded += fixed is not data
            with open(tmp, "wb") as fh:
                fh.write(fixed)
            self.first[src_uri] = dst
        os.replace(tmp, dst)  # re-exports replace the previous file or link atomically


def _rotated(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.getexif().get(0x0112, 1) not in (0, 1)
    except OSError:
        return False  # not an image Pillow reads: linked as is (the build decoded it already)


def without_orientation(data: bytes) -> bytes:
    """`data` unchanged unless it carries an EXIF orientation other than 1: then the stored pixels
    re-encoded (same format) without EXIF, so every reader sees the frame the masks are in."""
    import io

    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.getexif().get(0x0112, 1) in (0, 1):
            return data
        fmt = img.format or "JPEG"
        img.load()
        out = io.BytesIO()
        kwargs = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
        img.save(out, format=fmt, **kwargs)  # no exif= argument: the tag is dropped
        return out.getvalue()
    except OSError:
        return data


def count_by(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[str(r[key])] = out.get(str(r[key]), 0) + 1
    return dict(sorted(out.items()))


def manifest_ref(m: Manifest) -> dict[str, Any]:
    """What an export records about the version it came from."""
    return {"version": m.version, "build_id": m.build_id, "created_at": m.created_at,
            "config_hash": m.config_hash, "filters": m.filters.get("version"), "prompts": m.prompts}
