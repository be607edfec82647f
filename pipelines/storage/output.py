"""What already exists under the output: committed manifests, their unit ledgers, and the
receipts of builds that wrote shards but never committed (crashed or still running).

Readers of the dataset never list `data/`; the builder lists only `manifests/` and `receipts/`.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage.fs import StorageSpec
from schemas.columns import KEY_COMPONENT_FIELDS, KIND_RAW, RAW_SCHEMA, TEACHER_OUT_FIELDS
from schemas.manifest import Manifest, ShardEntry, manifest_name, parse_manifest_name

LEDGER_COLUMNS = ["gen_key", "source", "image_id", "image_uri", "task", *[n for n, _ in KEY_COMPONENT_FIELDS],
                  "outcome", "error_reason", "filter_version"]
# Ledger columns added after the first ledgers were written: an older shard reads them as null
# (error_reason: its errors are retried once; image_uri: its units' location is rewritten once).
LATER_LEDGER_COLUMNS = ("error_reason", "image_uri")


def manifests_uri(output: str) -> str:
    return storage.join(output, "manifests")


def manifest_uri(output: str, version: int) -> str:
    return storage.join(output, "manifests", manifest_name(version))


def receipts_uri(output: str, build_id: str | None = None) -> str:
    return storage.join(output, "receipts", build_id) if build_id else storage.join(output, "receipts")


WORK_DIR = ("cache", "work")  # a running build's work list (pipelines/build/work_list.py)


def work_list_uri(output: str, build_id: str) -> str:
    return storage.join(output, *WORK_DIR, f"{build_id}.parquet")


def list_versions(output: str, store: StorageSpec) -> list[int]:
    files = storage.list_files(manifests_uri(output), store)
    return sorted(v for v in (parse_manifest_name(p) for p in files) if v is not None)


def load_manifest(output: str, version: int, store: StorageSpec) -> Manifest:
    return Manifest.from_json(storage.read_bytes(manifest_uri(output, version), store).decode())


class VersionNotFound(LookupError):
    """The output has no manifests, or not the requested version."""


def resolve_version(output: str, version: int | None, store: StorageSpec) -> Manifest:
    """The manifest of `version` (default: the latest committed one), or VersionNotFound saying
    which versions exist: what every reader of a committed version (loaders, audit, card) needs."""
    versions = list_versions(output, store)
    if not versions:
        raise VersionNotFound(f"no committed version under {output} (no manifests/v*.json)")
    if version is None:
        version = versions[-1]
    if version not in versions:
        raise VersionNotFound(f"version {version} not found under {output}; committed versions: {versions}")
    return load_manifest(output, version, store)


def latest_manifest(output: str, store: StorageSpec) -> Manifest | None:
    versions = list_versions(output, store)
    return load_manifest(output, versions[-1], store) if versions else None


@dataclass
class Receipt:
    uri: str
    build_id: str
    batch: str
    shards: list[ShardEntry]


def pending_receipts(output: str, store: StorageSpec, committed: set[str]) -> list[Receipt]:
    """Receipts whose shards no manifest names yet (work of a build that did not commit)."""
    out: list[Receipt] = []
    for uri in sorted(storage.list_files(receipts_uri(output), store)):
        if not uri.endswith(".json"):
            continue
        try:
            raw = json.loads(storage.read_bytes(uri, store))
        except (ValueError, OSError):
            continue  # a receipt is written atomically; an unreadable one is not a receipt
        shards = [ShardEntry(**s) for s in raw["shards"]]
        if shards and all(s.path in committed for s in shards):
            continue
        lost = [s.path for s in shards if not storage.exists(guard.shard_uri(output, s.path), store)]
        if lost:  # e.g. deleted by an older gc: the units are simply generated again
            print(f"groundv: ignoring receipt {uri}: {len(lost)} of its shards are missing (first: {lost[0]}); "
                  "its units will be generated again", file=sys.stderr)
            continue
        out.append(Receipt(uri=uri, build_id=raw.get("build_id", ""), batch=raw["batch"], shards=shards))
    return out


@dataclass
class Ledger:
    """Unit ledgers (raw shards) of the candidate shards: the manifest's and pending receipts'."""

    rows: pa.Table  # LEDGER_COLUMNS + "batch"
    shards_by_batch: dict[str, list[ShardEntry]] = field(default_factory=dict)
    batch_order: list[str] = field(default_factory=list)  # manifest batches first, then receipts


def read_ledger(output: str, shard_sets: list[list[ShardEntry]], store: StorageSpec) -> Ledger:
    """Read the raw shards' key columns (column projection: response text is not read)."""
    by_batch: dict[str, list[ShardEntry]] = {}
    order: list[str] = []
    for shards in shard_sets:
        for s in shards:
            if s.batch not in by_batch:
                by_batch[s.batch] = []
                order.append(s.batch)
            if all(x.path != s.path for x in by_batch[s.batch]):
                by_batch[s.batch].append(s)
    raw_shards = [s for b in order for s in by_batch[b] if s.kind == KIND_RAW]

    def read_one(entry: ShardEntry) -> pa.Table:
        fs, path = storage.fs_and_path(guard.shard_uri(output, entry.path), store)
        t = storage.with_retries(lambda: _read_ledger_columns(path, fs), store, f"read {entry.path}")
        return t.append_column("batch", pa.array([entry.batch] * t.num_rows, pa.string()))

    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(read_one, raw_shards))
    if tables:
        rows = pa.concat_tables(tables)
    else:
        schema = RAW_SCHEMA.empty_table().select(LEDGER_COLUMNS).schema
        rows = schema.empty_table().append_column("batch", pa.array([], pa.string()))
    return Ledger(rows=rows, shards_by_batch=by_batch, batch_order=order)


def _read_ledger_columns(path: str, fs: Any) -> pa.Table:
    """LEDGER_COLUMNS of one raw shard; columns a shard was written without
    (LATER_LEDGER_COLUMNS) read as null."""
    try:
        return pq.read_table(path, filesystem=fs, columns=LEDGER_COLUMNS)
    except (KeyError, pa.ArrowInvalid):
        present = set(pq.read_schema(path, filesystem=fs).names)
        cols = [c for c in LEDGER_COLUMNS if c in present or c not in LATER_LEDGER_COLUMNS]
        t = pq.read_table(path, filesystem=fs, columns=cols)
        for c in LATER_LEDGER_COLUMNS:
            if c not in cols:
                t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
        return t.select(LEDGER_COLUMNS)


def read_responses(output: str, ledger: Ledger, keys_by_batch: dict[str, set[str]],
                   store: StorageSpec) -> dict[str, dict]:
    """Stored teacher output (TEACHER_OUT_FIELDS) of the given units, from their raw shards."""
    cols = ["gen_key", *[n for n, _ in TEACHER_OUT_FIELDS]]
    out: dict[str, dict] = {}
    for batch, keys in keys_by_batch.items():
        for s in ledger.shards_by_batch.get(batch, []):
            if s.kind != KIND_RAW:
                continue
            fs, path = storage.fs_and_path(guard.shard_uri(output, s.path), store)
            t = storage.with_retries(lambda p=path, f=fs: pq.read_table(p, filesystem=f, columns=cols),
                                     store, f"read {s.path}")
            for r in t.to_pylist():
                if r["gen_key"] in keys:
                    out[r["gen_key"]] = r
    return out


def output_of(cfg: Any, output_arg: str | None) -> tuple[StorageSpec, str]:
    """The store and the absolute output uri a CLI tool works on (`--output` or the config's)."""
    store = StorageSpec(cfg.storage.endpoint_url, cfg.storage.retries)
    output = output_arg or cfg.output.uri
    return store, storage.normalize_uri(output)
