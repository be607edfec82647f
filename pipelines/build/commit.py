"""Commit: the new manifest version = kept shards of what existed + the shards of this build.

Exactly once at the manifest: every unit's rows come from exactly one batch. Existing batches are
taken in order (the parent manifest's first, then pending receipts); a batch whose units are all
kept is carried as is, one with some dropped units is rewritten without them (copy on write, the
old shard stays for older versions), one with none is left out. The manifest file is created only
if absent (local link / S3 If-None-Match), so two builds can never both become version N+1.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.build.plan_units import as_bool
from pipelines.build.stages.shards import conform, parquet_bytes, shard_path
from pipelines.build.unit_keys import KeyMap, KeySet, digests_of, hex_to_digest
from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage.fs import StorageSpec
from pipelines.storage.output import Ledger, manifest_uri
from schemas.columns import KIND_RAW, KIND_SCHEMAS
from schemas.manifest import Manifest, ShardEntry


class CommitConflict(RuntimeError):
    """Another build committed the version we wanted; re-plan against it."""


class CommitRefused(RuntimeError):
    """The new version must not be committed as is (shards missing, or it drops too much)."""


def check_shards_exist(output: str, shards: list[ShardEntry], store: StorageSpec) -> None:
    """Every shard the manifest will name is there (one listing of data/): a gc that ran while this
    build worked must make the commit fail, never produce a version naming deleted files."""
    present = storage.list_files(storage.join(output, "data"), store)
    missing = [s.path for s in shards if storage.join(output, s.path) not in present]
    if missing:
        raise CommitRefused(f"{len(missing)} shards of the new version are missing (first: {missing[0]}), "
                            "deleted while the build ran (manifest.py gc?); nothing committed: re-run the build")


def check_shrink(previous: Manifest | None, shards: list[ShardEntry], allow: bool, max_shrink: float) -> None:
    """Refuse a version that keeps less than (1 - max_shrink) of the previous version's units.

    Counted in units (raw rows: one per image x task, i.e. the samples of one unit), not sample
    rows: a config slip drops units, while tightening the filters keeps every unit and may
    legitimately reject most pairs.
    """
    if previous is None or allow:
        return
    before = sum(s.rows for s in previous.shards if s.kind == KIND_RAW)
    after = sum(s.rows for s in shards if s.kind == KIND_RAW)
    if before and after < before * (1.0 - max_shrink):
        raise CommitRefused(
            f"the new version would keep {after} of the {before} units (image x task) of v{previous.version:06d} "
            f"(drops {100 * (before - after) / before:.0f}%, more than commit.max_shrink={max_shrink}); "
            "nothing committed. Check data.limit, tasks and data.sources; if the drop is intended, re-run "
            "with commit.allow_shrink=true (the work done so far is kept and not paid for again)")


def select_existing(
    ledger: Ledger, reuse_from: KeyMap, output: str, store: StorageSpec,
    relocate: Mapping[str, str | None] | None = None,
) -> tuple[list[ShardEntry], KeySet]:
    """Existing shards to carry into the new version, rewriting partially kept batches.

    `reuse_from` maps each reused unit to the one batch that provides its rows (the plan's choice),
    so a unit is never taken twice. `relocate` (the plan's moved images: gen_key -> current uri)
    rewrites the `image_uri` column of the batches that hold those units, and nothing else.
    Returns (entries, keys covered). Vectorised over the ledger: no Python object per ledger row,
    only the kept keys of a batch that is rewritten.
    """
    relocate = relocate or {}
    rows = ledger.rows
    batches = rows.column("batch")
    chosen = as_bool(pc.equal(reuse_from.batch_of(rows.column("gen_key")), batches))
    digests = digests_of(hex_to_digest(rows.column("gen_key")))
    # a key's first row in its chosen batch (a batch may list a key twice: it is taken once)
    first = np.zeros(rows.num_rows, dtype=bool)
    if chosen.any():
        sel = np.flatnonzero(chosen)
        _, at = np.unique(np.ascontiguousarray(digests[sel]).view(np.dtype((np.void, 32))).ravel(),
                          return_index=True)
        first[sel[at]] = True
    enc = batches.combine_chunks().cast(pa.string()).dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = {b: i for i, b in enumerate(enc.dictionary.to_pylist())}
    total = np.bincount(codes, minlength=len(names))
    kept_n = np.bincount(codes[first], minlength=len(names))
    moved_rows = first & as_bool(pc.is_in(rows.column("gen_key"), value_set=pa.array(list(relocate), pa.string())))
    moved_n = np.bincount(codes[moved_rows], minlength=len(names))
    out: list[ShardEntry] = []
    for batch in ledger.batch_order:
        code = names.get(batch)
        if code is None or not kept_n[code]:
            continue
        shards = ledger.shards_by_batch[batch]
        if kept_n[code] == total[code] and not moved_n[code]:
            out.extend(shards)
            continue
        keep = sorted(rows.column("gen_key").filter(pa.array(first & (codes == code))).to_pylist())
        moved = {k: relocate[k] for k in keep if k in relocate}
        # a new label: the old one keeps naming the old shards (older versions, stale receipts)
        label = "\n".join([batch, *keep, *sorted(f"{k}={v}" for k, v in moved.items())])
        new_batch = hashlib.sha256(label.encode()).hexdigest()[:24]
        for s in shards:
            entry = rewrite_shard(s, set(keep), new_batch, output, store, moved)
            if entry is not None:
                out.append(entry)
    return out, KeySet(digests[first])


def rewrite_shard(
    entry: ShardEntry, keep: set[str], new_batch: str, output: str, store: StorageSpec,
    moved: Mapping[str, str | None] | None = None,
) -> ShardEntry | None:
    """The shard without the rows of units not in `keep`, with the `image_uri` of `moved` units
    set to their current location, under the batch's new id.

    A shard all of whose rows are kept and none moved (or a kind without image_uri: rejects) is
    carried as is (same file; only its batch label, which lives in the manifest, changes), so
    dropping one task's units rewrites only that task's shards. Every shard of a batch gets the new
    label: a unit's rows must always share one batch.
    """
    fs, path = storage.fs_and_path(guard.shard_uri(output, entry.path), store)
    keys = storage.with_retries(lambda: pq.read_table(path, filesystem=fs, columns=["gen_key"]), store,
                                f"read {entry.path}").column("gen_key")
    mask = pc.is_in(keys, value_set=pa.array(sorted(keep), pa.string()))
    n_kept = pc.sum(mask.cast(pa.int64())).as_py() or 0
    if n_kept == 0:
        return None
    schema = KIND_SCHEMAS.get(entry.kind)
    moved = {k: v for k, v in (moved or {}).items() if schema is not None and "image_uri" in schema.names}
    touched = bool(moved) and bool(pc.any(pc.is_in(keys, value_set=pa.array(sorted(moved), pa.string()))).as_py())
    if n_kept == len(keys) and not touched:
        return ShardEntry(path=entry.path, kind=entry.kind, task=entry.task, rows=entry.rows, bytes=entry.bytes,
                          sha256=entry.sha256, batch=new_batch)
    table = storage.with_retries(lambda: pq.read_table(path, filesystem=fs), store, f"read {entry.path}")
    kept = relocated(conform(table.filter(mask), entry.kind), moved)
    data = parquet_bytes(kept)
    digest = hashlib.sha256(data).hexdigest()
    new_path = shard_path(entry.kind, entry.task, digest)
    storage.write_bytes(storage.join(output, new_path), data, store)
    return ShardEntry(path=new_path, kind=entry.kind, task=entry.task, rows=kept.num_rows,
                      bytes=len(data), sha256=digest, batch=new_batch)


def relocated(table: pa.Table, moved: Mapping[str, str | None]) -> pa.Table:
    """`table` with image_uri set to the current location for the rows of moved units (every other
    column, row order included, as it was: an Arrow column swap, no row is re-made)."""
    if not moved or "image_uri" not in table.column_names:
        return table
    keys = pa.array(list(moved), pa.string())
    at = pc.index_in(table.column("gen_key"), value_set=keys)  # null for a unit that did not move
    uris = pc.if_else(pc.is_valid(at), pa.array(list(moved.values()), pa.string()).take(at),
                      table.column("image_uri").cast(pa.string()))
    i = table.schema.get_field_index("image_uri")
    return table.set_column(i, table.schema.field(i), uris)


def write_manifest(
    output: str,
    store: StorageSpec,
    version: int,
    parent: int | None,
    shards: list[ShardEntry],
    *,
    config: dict[str, Any],
    config_hash: str,
    teacher: dict[str, Any],
    prompts: dict[str, str],
    filters: dict[str, Any],
    stats: dict[str, Any],
    build_id: str,
) -> Manifest:
    m = Manifest(
        version=version, parent_version=parent,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        config=config, config_hash=config_hash, teacher=teacher, prompts=prompts, filters=filters,
        shards=sorted(shards, key=lambda s: (s.kind, s.task, s.path)), stats=stats, build_id=build_id,
    )
    check_shards_exist(output, shards, store)
    if not storage.create_if_absent(manifest_uri(output, version), m.to_json().encode(), store):
        raise CommitConflict(f"manifest v{version:06d} was committed by another build")
    return m


def clean_receipts(output: str, store: StorageSpec, receipt_uris: list[str]) -> None:
    """Receipts are only a crash journal: once a manifest names their shards they can go."""
    for uri in receipt_uris:
        try:
            storage.delete(uri, store)
        except FileNotFoundError:
            pass

