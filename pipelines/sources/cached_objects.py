"""The index's `objects` column kept where it already is: in the cached index files.

The plan needs every image's keys and counts, never its objects (polygons, RLEs: 70 % of the index,
290 MB in memory at COCO train2017 size, ~1 GB with LVIS and PACO). A build's index therefore
holds, per image, a reference to its objects — which file (`OBJECTS_FILE`, a code into
`CachedObjects`) and which row of it (`OBJECTS_ROW`) — and the objects are read back one row group
at a time when the work list is written (pipelines/build/work_list.py), the only place that needs
them. A file whose index could not be cached (the cache is an optimisation; its write may fail)
keeps its objects in memory under the same kind of reference.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec
from schemas.columns import IMAGE_SCHEMA

OBJECTS = "objects"
OBJECTS_FILE, OBJECTS_ROW = "objects_file", "objects_row"
OBJECTS_TYPE = IMAGE_SCHEMA.field(OBJECTS).type


class CachedObjects:
    """Objects of image rows, by reference: entry `code` is a cached index file (read by row group,
    a few row groups kept) or an in-memory objects array."""

    def __init__(self, store: StorageSpec, keep_row_groups: int = 4) -> None:
        self.store = store
        self.entries: list[str | pa.Array] = []
        self._files: dict[int, Any] = {}  # code -> open ParquetFile
        self._starts: dict[int, np.ndarray] = {}  # code -> first row of each row group (+ total)
        self._groups: OrderedDict[tuple[int, int], pa.Array] = OrderedDict()
        self._keep = max(1, keep_row_groups)

    def add(self, entry: str | pa.Array) -> int:
        self.entries.append(entry)
        return len(self.entries) - 1

    def refer(self, table: pa.Table, cache_uri: str | None) -> pa.Table:
        """`table` without its objects, with references to them (row i -> row i): in the cached
        index at `cache_uri` when the table has no objects column, else held here."""
        in_memory = OBJECTS in table.column_names
        if not in_memory and cache_uri is None:
            raise ValueError("a table without objects needs the cached index that has them")
        code = self.add(table.column(OBJECTS).combine_chunks() if in_memory else cache_uri)
        n = table.num_rows
        if in_memory:
            table = table.drop_columns([OBJECTS])
        return (table.append_column(OBJECTS_FILE, pa.array(np.full(n, code, np.int32)))
                .append_column(OBJECTS_ROW, pa.array(np.arange(n, dtype=np.int32))))

    def take(self, codes: np.ndarray, rows: np.ndarray) -> pa.Array:
        """The objects of (file code, row) pairs, in that order."""
        if not len(codes):
            return pa.array([], OBJECTS_TYPE)
        pieces: list[pa.Array] = []
        offsets: dict[tuple[int, int], int] = {}
        pos = np.empty(len(codes), dtype=np.int64)
        base = 0
        for code in np.unique(codes):
            sel = np.flatnonzero(codes == code)
            entry = self.entries[int(code)]
            if not isinstance(entry, str):
                pieces.append(entry)
                pos[sel] = base + rows[sel]
                base += len(entry)
                continue
            starts = self._row_group_starts(int(code))
            groups = np.searchsorted(starts, rows[sel], side="right") - 1
            for g in np.unique(groups):
                key = (int(code), int(g))
                if key not in offsets:
                    offsets[key] = base
                    arr = self._row_group(*key)
                    pieces.append(arr)
                    base += len(arr)
                hit = sel[groups == g]
                pos[hit] = offsets[key] + rows[hit] - starts[g]
        pool = pa.concat_arrays(pieces) if len(pieces) > 1 else pieces[0]
        return pool.take(pa.array(pos))

    def _parquet(self, code: int) -> Any:
        if code not in self._files:
            uri = self.entries[code]
            fs, path = storage.fs_and_path(uri, self.store)
            fh = storage.with_retries(lambda: fs.open(path, "rb"), self.store, f"open {uri}")
            self._files[code] = pq.ParquetFile(fh)
        return self._files[code]

    def _row_group_starts(self, code: int) -> np.ndarray:
        if code not in self._starts:
            meta = self._parquet(code).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self._starts[code] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return self._starts[code]

    def _row_group(self, code: int, group: int) -> pa.Array:
        key = (code, group)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        uri = self.entries[code]
        t = storage.with_retries(lambda: self._parquet(code).read_row_group(group, columns=[OBJECTS]),
                                 self.store, f"read {uri} row group {group}")
        arr = t.column(OBJECTS).combine_chunks().cast(OBJECTS_TYPE)
        self._groups[key] = arr
        while len(self._groups) > self._keep:
            self._groups.popitem(last=False)
        return arr


def with_objects(images: pa.Table, objects: CachedObjects | None) -> pa.Table:
    """`images` (some rows of an index) with their `objects` column, whether held or referenced."""
    if objects is None or OBJECTS_FILE not in images.column_names:
        return images
    arr = objects.take(images.column(OBJECTS_FILE).to_numpy(), images.column(OBJECTS_ROW).to_numpy())
    return images.drop_columns([OBJECTS_FILE, OBJECTS_ROW]).append_column(OBJECTS, arr)
