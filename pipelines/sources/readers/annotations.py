"""COCO / LVIS / PACO-LVIS annotation JSON -> one IMAGE_SCHEMA row per image.

The file is parsed once (it is one JSON object, not a dataset), annotations are grouped by image
once, and every image becomes a row. Whole-file problems (malformed JSON, missing sections, broken
image or category tables) raise `AnnotationFileError` before any row is built; a bad annotation
only turns its image into an error record (`image_error` = a code of `REASON_CODES`), so one broken
polygon among 860K never stops a build and never drops an image silently.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
from pycocotools import mask as mask_utils

from pipelines.sources.readers.categories import (
    AnnotationFileError,
    Category,
    parse_attribute_names,
    parse_categories,
)
from pipelines.sources.readers.records import is_record_file, load_record_data
from pipelines.sources.readers.segmentation import InvalidAnnotation, bbox_problem, to_compressed_rle
from pipelines.storage import fs as storage
from pipelines.storage import guard
from schemas.columns import IMAGE_SCHEMA, is_int64

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("coco", "lvis", "paco")

# Stable reason codes of `image_error` (documented in docs/, counted in the manifest's errors_by_reason).
REASON_CODES: tuple[str, ...] = (
    "bad_polygon",  # a polygon with < 6 numbers, an odd count, or non-numeric / non-finite numbers
    "rle_size_mismatch",  # RLE size != [image height, width]
    "unknown_category",  # category_id (or a neg / not-exhaustive id) not in the file's categories
    "bbox_outside",  # bbox outside the image by more than 1 px
    "duplicate_ann_id",  # an annotation id used more than once in the file
    "bad_parent",  # PACO part whose obj_ann_id is not an object of the same image
    "unsafe_path",  # file name absolute, a URL, or containing ".."
    "no_annotations",  # image without any annotation
    "bad_annotation",  # anything else malformed in an annotation (missing keys, corrupt RLE, ...)
    "bad_image",  # the image entry itself is malformed (size, file name or negative lists missing)
)

_REQUIRED_KEYS = ("id", "category_id", "segmentation", "bbox")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def load_annotation_json(uri: str, storage_options: dict[str, Any] | None = None, retries: int = 5) -> dict[str, Any]:
    """Parse an annotation file (local path or s3://...) and check its top-level sections."""
    # Retried like every other store read (pipelines/storage/fs.py); a missing file raises
    # FileNotFoundError, a store that stays down StorageError naming the uri.
    fs, path = storage.open_fs(uri, storage_options)
    raw = storage.with_retries(lambda: fs.cat_file(path), storage.StorageSpec(retries=retries), f"read {uri}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AnnotationFileError(
            f"{uri}: malformed JSON at line {exc.lineno}, column {exc.colno} (char {exc.pos}): {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise AnnotationFileError(f"{uri}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(data, dict):
        raise AnnotationFileError(f"{uri}: top level is a {type(data).__name__}, expected a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationFileError(f"{uri}: missing or non-list '{key}' section")
    return data


def load_annotation_data(uri: str, categories_uri: str | None = None, storage_options: dict[str, Any] | None = None,
                         retries: int = 5, categories_options: dict[str, Any] | None = None
                         ) -> tuple[dict[str, Any], str]:
    """The COCO dict of one annotation file (a JSON file, or a record shard + the categories file)
    and the uri its categories come from (what category errors name)."""
    if is_record_file(uri):
        data = load_record_data(uri, categories_uri, storage_options, retries, categories_options)
        return data, categories_uri or uri
    return load_annotation_json(uri, storage_options, retries), uri


@dataclass(frozen=True)
class _Context:
    source: str
    fmt: str
    prefix: str
    cats: dict[int, Category]
    attrs: dict[int, str | None]
    duplicates: frozenset[int]
    coco_names: tuple[tuple[int, str], ...]  # (id, name) of non-part categories, sorted by name


def read_source(
    name: str,
    fmt: str,
    annotations_uri: str,
    images_uri: str,
    storage_options: dict[str, Any] | None = None,
    retries: int = 5,
    categories_uri: str | None = None,
    categories_options: dict[str, Any] | None = None,
) -> pa.Table:
    """Read one source's annotation file into an IMAGE_SCHEMA table, one row per image (file order).

    `retries`: store retries of the file read (`storage.retries`). A file of per-image records
    (`.jsonl`, `.jsonl.gz`, `.parquet`: records.py) takes its categories from `categories_uri` and
    then goes the same way as a COCO JSON file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    data, cats_uri = load_annotation_data(annotations_uri, categories_uri, storage_options, retries,
                                          categories_options)
    cats = parse_categories(data, cats_uri, fmt)
    images = _checked_images(data["images"], annotations_uri)
    by_image, duplicates = _group_annotations(data["annotations"], {img["id"] for img in images})
    ctx = _Context(
        source=name,
        fmt=fmt,
        prefix=images_uri.rstrip("/"),
        cats=cats,
        attrs=parse_attribute_names(data, cats_uri) if fmt == "paco" else {},
        duplicates=frozenset(duplicates),
        coco_names=tuple(sorted(((c.id, c.name) for c in cats.values() if not c.is_part), key=lambda t: t[1])),
    )
    del data
    # Popping each image's annotations as its row is built frees the parsed JSON (GBs for COCO/LVIS
    # train) progressively instead of holding it next to the finished rows.
    rows = [_image_row(img, by_image.pop(img["id"], []), ctx) for img in images]
    return pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)


def _checked_images(images: list[Any], uri: str) -> list[dict[str, Any]]:
    # An image without a usable id cannot even be an error record (rows are keyed by it).
    seen: set[int] = set()
    for i, img in enumerate(images):
        if not (isinstance(img, dict) and _is_int(img.get("id"))):
            got = str(img.get("id") if isinstance(img, dict) else img)[:40]
            raise AnnotationFileError(f"{uri}: images[{i}] has no integer 'id' (a whole number within "
                                      f"the 64-bit range), got {got}")
        if img["id"] in seen:
            raise AnnotationFileError(f"{uri}: image id {img['id']} appears twice (images[{i}])")
        seen.add(img["id"])
    return images


def _group_annotations(
    anns: list[Any], image_ids: set[int]
) -> tuple[dict[int, list[dict[str, Any]]], set[int]]:
    """Annotations by image id (one pass) and the annotation ids used more than once in the file."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    id_counts: Counter[Any] = Counter()
    unattributed = 0
    for a in anns:
        iid = a.get("image_id") if isinstance(a, dict) else None
        if not _is_int(iid):
            unattributed += 1
            continue
        by_image[iid].append(a)
        ann_id = a.get("id")
        if _is_int(ann_id):
            id_counts[ann_id] += 1
    orphans = sum(len(v) for k, v in by_image.items() if k not in image_ids)
    if unattributed or orphans:
        # Not an image, so not a row: reported here rather than silently ignored.
        log.warning(
            "%d annotations without an integer image_id and %d for unknown images were skipped",
            unattributed,
            orphans,
        )
    return by_image, {k for k, n in id_counts.items() if n > 1}


def _image_row(img: dict[str, Any], anns: list[dict[str, Any]], ctx: _Context) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source": ctx.source,
        "dataset_format": ctx.fmt,
        "image_id": img["id"],
        "file_name": None,
        "image_uri": None,
        "width": None,
        "height": None,
        "objects": [],
        "absent_categories": [],
        "not_exhaustive_categories": [],
        "image_error": None,
        "image_error_detail": None,
    }
    try:
        file_name = image_file_name(img, ctx.fmt, ctx.prefix)
        row["file_name"] = file_name
        _check_safe(file_name, img["id"])
        row["image_uri"] = f"{ctx.prefix}/{file_name}"
        _check_link(ctx.prefix, row["image_uri"])
        width, height = _size(img)
        row["width"], row["height"] = width, height
        if not anns:
            raise InvalidAnnotation("no_annotations", "no annotations in the file")
        objects = _objects(anns, height, width, ctx)
        absent, not_exhaustive = _negatives(img, objects, ctx)
    except InvalidAnnotation as exc:
        row["image_error"] = exc.code
        row["image_error_detail"] = f"image {img['id']}: {exc.detail}"
        return row
    row["objects"] = objects
    row["absent_categories"] = absent
    row["not_exhaustive_categories"] = not_exhaustive
    return row


def image_file_name(img: dict[str, Any], fmt: str, prefix: str) -> str:
    """The image's file name relative to the source's images prefix (the one rule; exports use it too).

    `file_name` wins when present. LVIS v1 entries carry only `coco_url`
    (`http://images.cocodataset.org/train2017/000000391895.jpg`): the name keeps its COCO folder
    (`train2017/...`, `val2017/...`: LVIS val draws images from both), so `images:` is the COCO root.
    An `images:` that is itself that folder (`.../train2017`) still works: the folder is not repeated.
    """
    name = img.get("file_name")
    if isinstance(name, str) and name:
        return name
    url = img.get("coco_url") if fmt == "lvis" else None
    if not isinstance(url, str) or not url.strip("/"):
        raise InvalidAnnotation("bad_image", "no file name (neither file_name nor an LVIS coco_url)")
    path = urlparse(url).path if "://" in url else url
    parts = [p for p in path.split("/") if p]
    folder, base = (parts[-2] if len(parts) >= 2 else ""), parts[-1]
    if not folder or prefix.rstrip("/").rsplit("/", 1)[-1] == folder:
        return base
    return f"{folder}/{base}"


def _check_safe(file_name: str, image_id: int) -> None:
    # The name is joined under the images prefix; it must not be able to escape it.
    parts = re.split(r"[/\\]", file_name)
    if (
        not file_name
        or file_name.startswith(("/", "\\"))
        or "://" in file_name
        or _WINDOWS_DRIVE.match(file_name)
        or ".." in parts
        or "\x00" in file_name
    ):
        raise InvalidAnnotation(
            "unsafe_path", f"unsafe file name {file_name!r} (absolute, a URL or '..': could escape the images prefix)"
        )


def _check_link(prefix: str, uri: str) -> None:
    why = guard.escapes_prefix(prefix, uri)  # a symlink in the images folder pointing outside it
    if why:
        raise InvalidAnnotation("unsafe_path", why)


def _size(img: dict[str, Any]) -> tuple[int, int]:
    w, h = img.get("width"), img.get("height")
    if not (_is_int(w) and _is_int(h) and 0 < w < 2**31 and 0 < h < 2**31):
        raise InvalidAnnotation("bad_image", f"invalid size {w!r}x{h!r}")
    if w * h >= 2**32:
        # pycocotools stores RLE runs as 32-bit unsigned ints: a longer run would silently wrap.
        raise InvalidAnnotation("bad_image", f"size {w}x{h}: over 2^32 pixels, beyond COCO RLE")
    return w, h


def _objects(anns: list[dict[str, Any]], height: int, width: int, ctx: _Context) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    rles: list[dict[str, Any]] = []
    is_paco = ctx.fmt == "paco"
    for a in anns:
        ann_id = a.get("id")
        missing = [k for k in _REQUIRED_KEYS if k not in a]
        if missing or not _is_int(ann_id):
            raise InvalidAnnotation("bad_annotation", f"annotation {ann_id}: missing or invalid {missing or 'id'}")
        if ann_id in ctx.duplicates:
            raise InvalidAnnotation("duplicate_ann_id", f"annotation id {ann_id} is used more than once")
        cat_id = a["category_id"]
        cat = ctx.cats.get(cat_id) if _is_int(cat_id) else None
        if cat is None:
            raise InvalidAnnotation("unknown_category", f"annotation {ann_id}: unknown category_id {cat_id!r}")
        problem = bbox_problem(a["bbox"], height, width, ann_id)
        if problem is not None:
            raise problem
        if is_paco and not cat.is_part and a.get("obj_ann_id", ann_id) not in (ann_id, None):
            # PACO marks an object with obj_ann_id == its own id; anything else is a broken link.
            raise InvalidAnnotation(
                "bad_parent", f"object annotation {ann_id} has obj_ann_id {a.get('obj_ann_id')!r}"
            )
        counts = to_compressed_rle(a["segmentation"], height, width, ann_id)
        rles.append({"size": [height, width], "counts": counts})
        objects.append(
            {
                "ann_id": ann_id,
                "category_id": cat_id,
                "category_name": cat.raw_name,
                "name": cat.name,
                "supercategory": cat.supercategory,
                "is_part": is_paco and cat.is_part,
                "parent_ann_id": a.get("obj_ann_id") if is_paco and cat.is_part else None,
                "bbox": [float(v) for v in a["bbox"]],
                "area": 0.0,
                "iscrowd": bool(a.get("iscrowd", 0)),
                "rle_counts": counts.decode("ascii"),
                "attributes": _attributes(a, ann_id, ctx) if is_paco else [],
            }
        )
    # One C call for the whole image instead of one per annotation.
    for obj, area in zip(objects, mask_utils.area(rles), strict=True):
        obj["area"] = float(area)
    if is_paco:
        _check_parents(objects)
    return objects


def _attributes(a: dict[str, Any], ann_id: int, ctx: _Context) -> list[str]:
    ids = a.get("attribute_ids") or []
    if not isinstance(ids, list):
        raise InvalidAnnotation("bad_annotation", f"annotation {ann_id}: attribute_ids is not a list")
    names: list[str] = []
    for i in ids:
        if not _is_int(i) or i not in ctx.attrs:
            raise InvalidAnnotation("bad_annotation", f"annotation {ann_id}: unknown attribute id {i!r}")
        name = ctx.attrs[i]
        if name is not None and name not in names:
            names.append(name)
    return names


def _check_parents(objects: list[dict[str, Any]]) -> None:
    wholes = {o["ann_id"] for o in objects if not o["is_part"]}
    for o in objects:
        parent = o["parent_ann_id"]
        if o["is_part"] and (not _is_int(parent) or parent not in wholes):
            raise InvalidAnnotation(
                "bad_parent",
                f"part annotation {o['ann_id']}: obj_ann_id {parent!r} is not an object of this image",
            )


def _negatives(img: dict[str, Any], objects: list[dict[str, Any]], ctx: _Context) -> tuple[list[str], list[str]]:
    """(absent category names, not-exhaustive category names) of one image."""
    # A name shared by a present category ("bat" of bat_(sports)) is never declared absent.
    present_names = {ctx.cats[o["category_id"]].absent_name for o in objects}
    if ctx.fmt == "coco":
        # COCO is exhaustive: every category without an annotation in the image is absent.
        present = {o["category_id"] for o in objects}
        absent = [n for cid, n in ctx.coco_names if cid not in present and n not in present_names]
        return list(dict.fromkeys(absent)), []
    neg = _category_names(img, "neg_category_ids", ctx)
    not_exhaustive = _category_names(img, "not_exhaustive_category_ids", ctx)
    return sorted(set(neg) - present_names), sorted(set(not_exhaustive))


def _category_names(img: dict[str, Any], key: str, ctx: _Context) -> list[str]:
    ids = img.get(key) or []
    if not isinstance(ids, list):
        raise InvalidAnnotation("bad_image", f"{key} is not a list")
    names = []
    for cid in ids:
        cat = ctx.cats.get(cid) if _is_int(cid) else None
        if cat is None:
            raise InvalidAnnotation("unknown_category", f"{key} references unknown category {cid!r}")
        names.append(cat.absent_name)
    return names


def _is_int(v: Any) -> bool:
    return is_int64(v)  # an id beyond int64 is as unusable as a missing one
