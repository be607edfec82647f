"""The work list: the images to generate, written as Parquet by the driver and read by the workers.

The driver builds the stream's blocks one at a time from the plan and writes each as one row group
of `<output>/cache/work/<build_id>.parquet`; the stream reads it back with one Ray read task per
row group (`WorkListDatasource`). So the image records (objects, polygons) reach the workers
through storage, never through the object store from the driver: a `ray.put` from the driver maps
every block's pages into the driver's memory for the rest of the job (0.9 GB of its RSS at COCO
train2017 size, issue 14). One row group is one block is one batch of the image stages, so the
records of one image stay together and the teacher sends their identical requests once
(teachers/requests.py). The file is the build's own: removed when its stream ends; one left by a
killed build is removed by `manifest.py gc` once older than its grace period.
"""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageError, StorageSpec
from schemas.columns import IMAGE_WORK_SCHEMA


def write_work_list(blocks: Iterable[pa.Table], uri: str, store: StorageSpec) -> list[tuple[int, int]]:
    """Each block as one row group of a new Parquet file at `uri`; returns (rows, in-memory bytes)
    per row group. Written streaming (one block in memory at a time) into a local file: beside the
    target (renamed into place: it appears whole), or in the machine's temp folder for S3, then
    uploaded with the store's retries (a flaky store must not fail the build here)."""
    fs, path = storage.fs_and_path(uri, store)
    s3 = storage.is_s3(uri)
    target = os.path.join(tempfile.gettempdir(), f"groundv-work-{uuid.uuid4().hex}.parquet") if s3 \
        else f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    sizes: list[tuple[int, int]] = []
    try:
        if not s3:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(target, "wb") as fh, pq.ParquetWriter(fh, IMAGE_WORK_SCHEMA, compression="zstd") as writer:
            for block in blocks:
                writer.write_table(block, row_group_size=max(1, block.num_rows))
                sizes.append((block.num_rows, block.nbytes))
        if s3:
            storage.with_retries(lambda: fs.put_file(target, path), store, f"write {uri}")
        else:
            os.replace(target, path)
    except StorageError:
        raise  # the store's own message (S3 upload after its retries)
    except OSError as exc:  # the local file: disk full, read-only, permissions (fs.py says which and what to do)
        raise storage.local_write_error(uri if not s3 else target, exc) from exc
    finally:
        if os.path.exists(target):
            os.remove(target)
    return sizes


def remove_work_list(uri: str, store: StorageSpec) -> None:
    """Best effort: a leftover costs disk only, and gc removes it."""
    try:
        storage.delete(uri, store)
    except (OSError, StorageError):
        pass


def read_block(uri: str, store: StorageSpec, row_group: int) -> list[pa.Table]:
    fs, path = storage.fs_and_path(uri, store)

    def read() -> pa.Table:
        with fs.open(path, "rb") as fh:
            return pq.ParquetFile(fh).read_row_group(row_group)

    table = storage.with_retries(read, store, f"read {uri} row group {row_group}")
    return [table.cast(IMAGE_WORK_SCHEMA)]


class WorkListDatasource(Datasource):
    """One read task per row group, each returning its row group as one block (the plan's block)."""

    def __init__(self, uri: str, store: StorageSpec, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.uri, self.store, self.sizes = uri, store, sizes

    def estimate_inmemory_data_size(self) -> int:
        return sum(b for _, b in self.sizes)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object | None = None) -> list[ReadTask]:
        # `parallelism` is ignored: a block must stay whole (its records of one image together)
        return [ReadTask(functools.partial(read_block, self.uri, self.store, i),
                         BlockMetadata(num_rows=rows, size_bytes=nbytes, input_files=None, exec_stats=None),
                         schema=IMAGE_WORK_SCHEMA)
                for i, (rows, nbytes) in enumerate(self.sizes)]
