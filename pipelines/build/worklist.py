"""The work list on storage: the plan writes the images to generate (IMAGE_WORK_SCHEMA) as Parquet
under the output's scratch area and the stream reads it with `ray.data.read_parquet`, so image
records reach the read tasks from storage instead of being pushed from the driver's object store
(and a cluster's workers read it in parallel). Removed once the round's stream has run.
"""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec


def scratch_uri(output: str, build_id: str) -> str:
    return storage.join(output, "scratch", build_id)


def write_work_list(output: str, store: StorageSpec, build_id: str, name: str, work: pa.Table,
                    rows_per_group: int) -> str:
    """`work` as one Parquet file whose row groups are stream blocks (`rows_per_group` images)."""
    buf = io.BytesIO()
    pq.write_table(work, buf, compression="zstd", row_group_size=max(1, rows_per_group))
    uri = storage.join(scratch_uri(output, build_id), f"{name}.parquet")
    storage.write_bytes(uri, buf.getvalue(), store)
    return uri


def arrow_filesystem(uri: str, store: StorageSpec) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem + path for Ray's Parquet reader: native locally; on S3 the project's
    fsspec filesystem wrapped (keeps the endpoint and retry settings, pickles to read tasks)."""
    fs, path = storage.fs_and_path(uri, store)
    if not storage.is_s3(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_work_list(uri: str, store: StorageSpec):  # -> ray.data.Dataset
    import ray.data

    from schemas.columns import IMAGE_WORK_SCHEMA

    fs, path = arrow_filesystem(uri, store)
    # one block per row group: as many read tasks as the in-memory split made blocks
    n = pq.ParquetFile(path, filesystem=fs).num_row_groups
    return ray.data.read_parquet(path, filesystem=fs, schema=IMAGE_WORK_SCHEMA, partitioning=None,
                                 override_num_blocks=max(1, n))


def remove_scratch(output: str, store: StorageSpec, build_id: str) -> None:
    """Best effort: a leftover scratch folder is never read again (build ids are unique)."""
    folder = scratch_uri(output, build_id)
    try:
        for uri in storage.list_files(folder, store):
            storage.delete(uri, store)
        if not storage.is_s3(folder):
            os.rmdir(folder)
            os.rmdir(os.path.dirname(folder))  # the scratch area itself, when no other build uses it
    except OSError:
        pass
