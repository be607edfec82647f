"""Compaction: a version made of few large shards (the unit ledger included), committed as a new
version whose rows are exactly the old version's.

A build writes one shard per (kind, task) per write batch: thousands of ~7 KB files at COCO scale,
read twice per rebuild (the ledger) and once per consumer. Compaction concatenates each (kind, task)
group of the latest version into shards of about `max_rows` rows or `max_mb` MB, writes them
(content-addressed, so a re-run writes the same names), and only then creates the next manifest
(create-if-absent, like a build's commit). Killed at any point before that, the previous version is
still the latest and untouched; its shards stay until `manifest.py gc` removes what no kept version
references. Every compacted shard gets one batch label: a unit's rows must share one batch, and
after compaction they all live in the same one (a later build that drops units rewrites only the
shards that hold them).
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.build.commit import write_manifest
from pipelines.build.stages.shards import conform, shard_path
from pipelines.core.resources import Resources
from pipelines.core.tasks import cluster_cpus, imap_tasks, ray_up
from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage.fs import StorageSpec
from pipelines.storage.output import latest_manifest
from schemas.columns import (
    KIND_ERRORS,
    KIND_RAW,
    KIND_REJECTS,
    KIND_SAMPLES,
    KIND_VERIFY_FAILED,
)
from schemas.manifest import Manifest, ShardEntry

# kinds whose rows belong to units (a gen_key column; one batch per unit): the ones compacted
UNIT_KINDS = (KIND_SAMPLES, KIND_REJECTS, KIND_ERRORS, KIND_RAW, KIND_VERIFY_FAILED)
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_MB = 64.0
# one compaction task: reads and writes a group (no GPU); its memory is bounded by the row-group
# buffer below plus the compressed file (<= the group's stored MB)
RESOURCES = Resources(num_cpus=1)
# rows of a group are buffered into Parquet row groups of about this many bytes (Arrow) or rows
ROW_GROUP_BYTES = 32 * 2**20
ROW_GROUP_ROWS = 1024 * 1024


def _read(output: str, entry: ShardEntry, store: StorageSpec) -> pa.Table:
    """One shard in its kind's current schema (columns added since it was written read as null)."""
    fs, path = storage.fs_and_path(guard.shard_uri(output, entry.path), store)
    t = storage.with_retries(lambda: pq.read_table(path, filesystem=fs), store, f"read {entry.path}")
    return conform(t, entry.kind)


def _groups(shards: list[ShardEntry], max_rows: int, max_bytes: int) -> list[list[ShardEntry]]:
    """Consecutive runs of one (kind, task) whose rows and stored bytes fit the target."""
    out: list[list[ShardEntry]] = []
    ordered = sorted(shards, key=lambda s: (s.kind, s.task, s.batch, s.path))
    for s in ordered:
        cur = out[-1] if out else None
        if (cur and (cur[0].kind, cur[0].task) == (s.kind, s.task)
                and sum(x.rows for x in cur) + s.rows <= max_rows and sum(x.bytes for x in cur) + s.bytes <= max_bytes):
            cur.append(s)
        else:
            out.append([s])
    return out


def compact(output: str, store: StorageSpec, max_rows: int = DEFAULT_MAX_ROWS, max_mb: float = DEFAULT_MAX_MB,
            on_shard: Callable[[ShardEntry], None] | None = None) -> Manifest | None:
    """Compact the latest version into version N+1; None when there is nothing to gain (every
    (kind, task) already fits one shard per target). `on_shard` is called after each shard is
    durable (progress; tests interrupt there)."""
    current = latest_manifest(output, store)
    if current is None:
        return None
    new = compact_entries(output, store, current.shards, max_rows, max_mb, on_shard)
    if new is None:
        return None
    stats = {**current.stats, "compacted_from": current.version,
             "compaction": {"shards_before": len(current.shards), "shards_after": len(new),
                            "max_rows": max_rows, "max_mb": max_mb}}
    return write_manifest(output, store, current.version + 1, current.version, new, config=current.config,
                          config_hash=current.config_hash, teacher=current.teacher, prompts=current.prompts,
                          filters=current.filters, stats=stats, build_id=current.build_id)


def compact_entries(output: str, store: StorageSpec, shards: list[ShardEntry], max_rows: int, max_mb: float,
                    on_shard: Callable[[ShardEntry], None] | None = None) -> list[ShardEntry] | None:
    """`shards` packed into groups of one (kind, task) within the target, each group of several
    written as one shard; None when no two shards can be merged. Every entry gets one batch label.

    Ray initialised (the build's commit): each group is read and written by a Ray task, a window of
    them at a time, so the driver (the head node on a cluster) never holds a group's rows; only
    the ShardEntry comes back. Without Ray (the compact CLI): one group after the other in process.
    """
    units = [s for s in shards if s.kind in UNIT_KINDS]
    groups = _groups(units, max(1, max_rows), int(max_mb * 2**20))
    if len(groups) >= len(units):
        return None
    label = "compact-" + hashlib.sha256("\n".join(sorted(s.path for s in units)).encode()).hexdigest()[:16]
    # filled by group index whatever order the groups finish in: the result is deterministic
    done: list[ShardEntry | None] = [None] * len(groups)
    merge = []
    for i, group in enumerate(groups):
        if len(group) == 1:  # already alone: keep the file, relabel it
            s = group[0]
            done[i] = ShardEntry(s.path, s.kind, s.task, s.rows, s.bytes, s.sha256, label)
            if on_shard is not None:
                on_shard(done[i])
        else:
            merge.append(i)
    for i, entry in _write_groups(output, store, [groups[i] for i in merge], label):
        done[merge[i]] = entry
        if on_shard is not None:
            on_shard(entry)
    # other kinds (verdicts: keyed by pair, labelled `verdicts`) are carried as they are
    return [s for s in shards if s.kind not in UNIT_KINDS] + [e for e in done if e is not None]


def _write_groups(output: str, store: StorageSpec, groups: list[list[ShardEntry]],
                  label: str) -> Iterator[tuple[int, ShardEntry]]:
    """(index, written entry) for each group, as they become durable."""
    jobs = [(output, store, g, label) for g in groups]
    ray = ray_up()
    if ray is None or not jobs:
        yield from ((i, write_group(*job)) for i, job in enumerate(jobs))
        return
    # a window of about one task per CPU: every CPU busy, and thousands of groups never all queued.
    # A group lost with its worker is re-run: its file is content-addressed, the write idempotent.
    yield from imap_tasks(write_group, jobs, num_cpus=RESOURCES.num_cpus, window=cluster_cpus(ray), retries=2)


def write_group(output: str, store: StorageSpec, group: list[ShardEntry], label: str) -> ShardEntry:
    """The group's rows, in group order, as one shard named by the sha256 of its bytes (the same
    inputs always give the same file). Streamed: one input shard is held at a time, rows buffered
    up to ROW_GROUP_BYTES per Parquet row group, never the group's rows as one table."""
    kind, task = group[0].kind, group[0].task
    buf = io.BytesIO()
    rows = held = 0
    writer: pq.ParquetWriter | None = None
    pending: list[pa.Table] = []
    for s in group:
        t = _read(output, s, store)
        rows += t.num_rows
        if writer is None:
            writer = pq.ParquetWriter(buf, t.schema, compression="zstd")
        pending.append(t)
        held += t.nbytes
        if held >= ROW_GROUP_BYTES:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
            pending, held = [], 0
    assert writer is not None  # a group has at least one shard
    if pending:
        writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
    writer.close()
    # local: the buffer itself (no copy of the file's bytes); S3's client wants bytes
    data = buf.getvalue() if storage.is_s3(output) else buf.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    path = shard_path(kind, task, digest)
    storage.write_bytes(storage.join(output, path), data, store)
    return ShardEntry(path, kind, task, rows, len(data), digest, label)
