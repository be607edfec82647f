"""Per-image records: an annotation file given as JSONL (`.jsonl`, `.jsonl.gz`) or Parquet
(`.parquet`), one record per image, plus the source's categories file.

A record is `{"image": <COCO image object>, "annotations": [<COCO annotation objects>]}`. Sources
past ~10M images keep their annotations sharded like this rather than as one COCO JSON. The
categories (and PACO `attributes`) are not repeated per record: they come once per source from the
`categories:` JSON file. This module only rebuilds the COCO `data` dict (images, annotations,
categories, attributes) from one record file + the categories file; the reader then takes the same
path as for a JSON file, so the index (ann_hash included) is row for row the JSON source's.

In Parquet, `image` and `annotations` may be JSON strings (a segmentation is a polygon list or an
RLE dict: a union Parquet cannot type) or native structs / lists.
"""

from __future__ import annotations

import gzip
import io
import json
from typing import Any, Iterator

from pipelines.sources.readers.categories import AnnotationFileError
from pipelines.storage import fs as storage
from schemas.columns import is_int64

RECORD_SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".parquet")


def is_record_file(uri: str) -> bool:
    """Whether `uri` names a file of per-image records (by its name)."""
    return uri.lower().endswith(RECORD_SUFFIXES)


def load_categories_json(uri: str, storage_options: dict[str, Any] | None = None, retries: int = 5
                         ) -> dict[str, Any]:
    """The source's categories file: a JSON object with a `categories` list (COCO) and, for PACO,
    an `attributes` list. Other sections are ignored."""
    raw = _read(uri, storage_options, retries)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AnnotationFileError(
            f"{uri}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise AnnotationFileError(f"{uri}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise AnnotationFileError(f"{uri}: a categories file needs a JSON object with a 'categories' list")
    if data.get("attributes") is not None and not isinstance(data["attributes"], list):
        raise AnnotationFileError(f"{uri}: 'attributes' must be a list")
    return {"categories": data["categories"], "attributes": data.get("attributes") or []}


def load_record_data(uri: str, categories_uri: str | None, storage_options: dict[str, Any] | None = None,
                     retries: int = 5, categories_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One record file + the categories file -> the COCO `data` dict the JSON reader builds from."""
    if not categories_uri:
        raise AnnotationFileError(f"{uri}: per-image records need the source's 'categories' file "
                                  "(set data.sources[].categories)")
    data = load_categories_json(categories_uri, categories_options, retries)
    images: list[dict[str, Any]] = []
    anns: list[Any] = []
    seen: dict[int, str] = {}
    for where, image, image_anns in _records(uri, storage_options, retries):
        if image["id"] in seen:
            raise AnnotationFileError(f"{where}: image id {image['id']} appears twice (first at {seen[image['id']]})")
        seen[image["id"]] = where
        images.append(image)
        for a in image_anns:
            anns.append(_owned(a, image["id"], where))
    data["images"], data["annotations"] = images, anns
    return data


def _records(uri: str, options: dict[str, Any] | None, retries: int
             ) -> Iterator[tuple[str, dict[str, Any], list[Any]]]:
    """(where, image, annotations) per record, `where` = "file:line" (JSONL) or "file:row N"."""
    raw = _read(uri, options, retries)
    if uri.lower().endswith(".parquet"):
        yield from _parquet_records(uri, raw)
        return
    stream = gzip.GzipFile(fileobj=io.BytesIO(raw)) if uri.lower().endswith(".gz") else io.BytesIO(raw)
    del raw
    lineno = 0
    try:
        for lineno, line in enumerate(stream, 1):  # one line at a time: never the whole text as one str
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AnnotationFileError(f"{uri}:{lineno}: malformed JSON (column {exc.colno}): {exc.msg}") from None
            except UnicodeDecodeError as exc:
                raise AnnotationFileError(f"{uri}:{lineno}: not UTF-8 text (byte {exc.start})") from None
            where = f"{uri}:{lineno}"
            yield where, *_split(rec, where)
    except (OSError, EOFError) as exc:  # a corrupt or truncated .gz
        raise AnnotationFileError(f"{uri}:{lineno + 1}: cannot decompress ({exc})") from None


def _parquet_records(uri: str, raw: bytes) -> Iterator[tuple[str, dict[str, Any], list[Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(raw))
    except (pa.ArrowInvalid, OSError) as exc:
        raise AnnotationFileError(f"{uri}: not a readable Parquet file ({exc})") from None
    missing = [c for c in ("image", "annotations") if c not in pf.schema_arrow.names]
    if missing:
        raise AnnotationFileError(f"{uri}: Parquet records need the columns 'image' and 'annotations'; "
                                  f"missing {missing}")
    row = 0
    for batch in pf.iter_batches(batch_size=4096, columns=["image", "annotations"]):
        for image, anns in zip(*(batch.column(c).to_pylist() for c in ("image", "annotations")), strict=True):
            row += 1
            where = f"{uri}:row {row}"
            rec = {"image": _decoded(image, where, "image"), "annotations": _decoded(anns, where, "annotations")}
            yield where, *_split(rec, where)


def _decoded(value: Any, where: str, column: str) -> Any:
    """A Parquet cell: a JSON string, or a native struct / list (its null fields read as absent)."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise AnnotationFileError(f"{where}: column '{column}' is not valid JSON ({exc})") from None
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_decoded(v, where, column) if isinstance(v, dict) else v for v in value]
    return value


def _split(rec: Any, where: str) -> tuple[dict[str, Any], list[Any]]:
    """The record's image (with an integer id) and its annotation list; anything else is a file error."""
    if not isinstance(rec, dict) or not isinstance(rec.get("image"), dict):
        raise AnnotationFileError(f"{where}: a record needs an 'image' object (and an 'annotations' list)")
    image, anns = rec["image"], rec.get("annotations")
    if anns is None:
        anns = []  # an image without annotations is still an image (an error record downstream)
    if not isinstance(anns, list):
        raise AnnotationFileError(f"{where}: 'annotations' must be a list, got {type(anns).__name__}")
    if not is_int64(image.get("id")):
        raise AnnotationFileError(f"{where}: the record's image has no integer 'id', got {str(image.get('id'))[:40]}")
    return image, anns


def _owned(a: Any, image_id: int, where: str) -> Any:
    """An annotation of the record's image: its image_id is the image's (set when absent)."""
    if not isinstance(a, dict):
        return {"image_id": image_id, "_malformed": a}  # becomes the image's bad_annotation error
    if "image_id" not in a:
        return {**a, "image_id": image_id}
    if a["image_id"] != image_id:
        raise AnnotationFileError(f"{where}: annotation {a.get('id')} has image_id {a['image_id']}, "
                                  f"not the record's image {image_id}")
    return a


def _read(uri: str, options: dict[str, Any] | None, retries: int) -> bytes:
    fs, path = storage.open_fs(uri, options)
    return storage.with_retries(lambda: fs.cat_file(path), storage.StorageSpec(retries=retries), f"read {uri}")
