"""Writer stage: unit results -> immutable Parquet shards + one receipt per batch.

* One shard per (kind, task) per batch, so a prompt change drops whole shards of one task.
* Shard names are content addressed (`data/<kind>/<task>/<sha256>.parquet`): a retried task
  rewrites the same bytes under the same name, so retries never duplicate rows.
* Each file is written whole (local: temp + fsync + rename; S3: one PUT), then the batch's
  receipt (`receipts/<build_id>/<batch>.json`) is written last. A receipt means "every row of these
  units is durable"; the next build picks up receipts no manifest names (resume after a crash).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.build.stats import batch_stats
from pipelines.core.resources import Resources
from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec
from schemas.columns import KIND_ERRORS, KIND_RAW, KIND_REJECTS, KIND_SCHEMAS, RECEIPT_SCHEMA, SHARD_KINDS


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def conform(table: pa.Table, kind: str) -> pa.Table:
    """A shard's rows in its kind's current schema: columns added since it was written read as
    null (a rewritten old shard then has every column a new one has)."""
    schema = KIND_SCHEMAS.get(kind)
    if schema is None:
        return table
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def shard_path(kind: str, task: str, digest: str) -> str:
    return f"data/{kind}/{task}/{digest[:2]}/{digest}.parquet"


def write_shard(output: str, store: StorageSpec, kind: str, task: str, rows: list[dict]) -> dict:
    """Write one shard, return its manifest entry (without the batch id)."""
    table = pa.Table.from_pylist(rows, schema=KIND_SCHEMAS[kind])
    data = parquet_bytes(table)
    digest = hashlib.sha256(data).hexdigest()
    path = shard_path(kind, task, digest)
    storage.write_bytes(storage.join(output, path), data, store)
    return {"path": path, "kind": kind, "task": task, "rows": table.num_rows, "bytes": len(data),
            "sha256": digest}


def batch_id(shard_digests: list[str]) -> str:
    """Content-addressed: the same rows give the same id (a retried task), and different rows for the
    same units (e.g. re-checked under new filter settings) never share one."""
    return hashlib.sha256("\n".join(sorted(shard_digests)).encode()).hexdigest()[:24]


class ShardWriter:
    """Ray Data stage: a batch of UNIT_RESULT rows -> shards + receipt -> one RECEIPT row."""

    # I/O bound (Parquet encode + upload): two writers at half a core keep up with the checks.
    resources = Resources(num_cpus=0.5, max_actors=2)

    def __init__(self, output: str, store: StorageSpec, build_id: str) -> None:
        self.output = output
        self.store = store
        self.build_id = build_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            return RECEIPT_SCHEMA.empty_table()
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for kind in SHARD_KINDS:
            for unit_rows in batch.column(kind).to_pylist():
                for row in unit_rows:
                    grouped[(kind, row["task"])].append(row)
                    by_kind[kind].append(row)
        gen_keys = batch.column("gen_key").to_pylist()
        shards = [write_shard(self.output, self.store, kind, task, rows)
                  for (kind, task), rows in sorted(grouped.items())]
        bid = batch_id([s["sha256"] for s in shards])
        for s in shards:
            s["batch"] = bid
        stats = batch_stats(by_kind[KIND_RAW], by_kind[KIND_REJECTS], by_kind[KIND_ERRORS])
        receipt = {"build_id": self.build_id, "batch": bid, "units": len(gen_keys), "shards": shards,
                   "stats": stats}
        storage.write_bytes(
            storage.join(self.output, "receipts", self.build_id, f"{bid}.json"),
            json.dumps(receipt, sort_keys=True).encode(), self.store,
        )
        return pa.Table.from_pylist(
            [{"batch": bid, "shards": shards, "units": len(gen_keys), "stats": json.dumps(stats)}],
            schema=RECEIPT_SCHEMA,
        )
