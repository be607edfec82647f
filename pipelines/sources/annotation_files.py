"""A source's `annotations` as a list of files: one file, a glob (`s3://b/ann/part-*.json`) or a
folder of `*.json` files in the same format (or of per-image record files, `*.jsonl[.gz]` /
`*.parquet`: readers/records.py), and the parsing of the files that are not cached yet:
in parallel as Ray tasks when Ray is up and more than one file needs parsing, else in process.

Each file is a self-contained COCO-style JSON (its own images / annotations / categories), or a
shard of per-image records (categories from the source's `categories` file), indexed and cached on
its own, so editing one file re-indexes only that file.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.tasks import imap_tasks, ray_up
from pipelines.sources.readers.categories import AnnotationFileError
from pipelines.sources.readers.records import is_record_file
from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec

GLOB_CHARS = ("*", "?", "[")


def is_glob(uri: str) -> bool:
    return any(c in uri for c in GLOB_CHARS)


def expand_annotations(uri: str, store: StorageSpec) -> list[str]:
    """The annotation files of `uri`, sorted by name (the order their images are concatenated in).
    A single file stays itself (whether or not it exists: the reader reports a missing one)."""
    fs, path = storage.fs_and_path(uri, store)
    if is_glob(uri):
        found = storage.with_retries(lambda: fs.glob(path), store, f"glob {uri}")
    elif storage.with_retries(lambda: fs.isdir(path), store, f"stat {uri}"):
        listed = storage.with_retries(lambda: fs.find(path), store, f"list {uri}")
        # a folder of record shards may hold the source's categories JSON too: then only the shards
        found = [p for p in listed if is_record_file(str(p))] or [p for p in listed if p.lower().endswith(".json")]
    else:
        return [uri]
    files = sorted(str(p) for p in found if not str(p).endswith("/"))
    if not files:
        raise FileNotFoundError(f"annotations {uri}: no annotation file matches")
    return [fs.unstrip_protocol(p) if storage.is_s3(uri) else p for p in files]


def parse_all(parse: Callable[..., pa.Table], jobs: list[tuple[Any, ...]]) -> list[pa.Table]:
    """`parse(*job)` for every job, in job order. Ray initialised (the build starts it in plan() when
    a file needs parsing): one Ray task per file (num_cpus=1), the tables come back through the
    object store, so the parsed JSON (Python objects, several GB for COCO train2017 + LVIS) lives in
    a worker, never in the driver. Otherwise in this process, one after the other."""
    if jobs and ray_up() is not None:
        out: list[pa.Table | None] = [None] * len(jobs)
        for i, table in imap_tasks(parse, jobs):  # every file at once: a handful, each a whole parse
            out[i] = table
        return out  # type: ignore[return-value]
    return [parse(*job) for job in jobs]


def check_unique_ids(tables: list[pa.Table], files: list[str], source: str) -> None:
    """The same image id in two files of one source is a data error naming both files."""
    if len(tables) < 2:
        return
    seen: dict[int, int] = {}
    for i, t in enumerate(tables):
        ids = t.column("image_id")
        dup = pc.is_in(ids, value_set=pa.array(list(seen), pa.int64())) if seen else None
        if dup is not None and pc.any(dup).as_py():
            image_id = ids.filter(dup)[0].as_py()
            raise AnnotationFileError(f"source {source!r}: image id {image_id} is in both {files[seen[image_id]]} and "
                             f"{files[i]}; an image may be in one annotation file of a source only")
        for image_id in ids.to_pylist():
            seen.setdefault(image_id, i)
