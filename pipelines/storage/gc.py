"""Garbage collection of shards: what no kept version, no receipt and no running build can need.

A shard is live when one of these may still commit or read it:
* a manifest among the newest `keep` versions names it (readers of those versions);
* any receipt names it (a crashed build's paid-for work, or a running build's durable batch: the
  next build or the running one commits it);
* it was written less than `grace_s` ago (a running build writes a batch's shards just before the
  batch's receipt, so a fresh shard without a receipt may be seconds from being named by one).
Manifests and receipts themselves are never deleted here. See docs/incremental.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec
from pipelines.storage.output import WORK_DIR, list_versions, load_manifest, receipts_uri

DEFAULT_GRACE_S = 6 * 3600.0


@dataclass
class GcResult:
    garbage: list[str]  # shard paths relative to the output
    size: int  # bytes of `garbage`
    kept_for_receipts: int  # shards kept only because a receipt names them
    kept_recent: int  # shards kept only because they are younger than the grace period


def receipt_shards(output: str, store: StorageSpec, committed: set[str]) -> set[str]:
    """Paths of the shards of pending receipts: those naming a shard no manifest names yet (a
    receipt whose shards were all committed is a leftover; it protects nothing)."""
    out: set[str] = set()
    for uri in storage.list_files(receipts_uri(output), store):
        if not uri.endswith(".json"):
            continue
        try:
            raw = json.loads(storage.read_bytes(uri, store))
            paths = {str(s["path"]) for s in raw["shards"]}
            if not paths <= committed:
                out.update(paths)
        except (ValueError, OSError, KeyError, TypeError):
            continue  # receipts are written atomically: an unreadable file is not a receipt
    return out


def age_s(info: dict[str, Any], now: float) -> float:
    """Seconds since a listed file was written (local mtime or S3 LastModified); 0 if unknown."""
    stamp = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(stamp, datetime):
        stamp = stamp.timestamp()
    try:
        return now - float(stamp)
    except (TypeError, ValueError):
        return 0.0  # unknown age: treat as brand new (never delete what we can't date)


def collect(output: str, keep: int, store: StorageSpec, grace_s: float = DEFAULT_GRACE_S,
            delete: bool = False) -> GcResult:
    """Shards no kept version, receipt or recent write protects; deleted only when `delete`."""
    if keep < 1:
        raise ValueError(f"--keep must be >= 1 (got {keep}): the latest version is always kept")
    versions = list_versions(output, store)
    if not versions:
        return GcResult([], 0, 0, 0)
    live: set[str] = set()
    committed: set[str] = set()
    for v in versions:
        paths = {s.path for s in load_manifest(output, v, store).shards}
        committed |= paths
        if v in versions[-keep:]:
            live |= paths
    by_receipt = receipt_shards(output, store, committed)
    files = storage.list_files(storage.join(output, "data"), store)
    # work lists of builds that were killed (a build removes its own when its stream ends); a
    # running build's is younger than the grace period, like its fresh shards
    files.update(storage.list_files(storage.join(output, *WORK_DIR), store))
    base = output.rstrip("/") + "/"
    now = time.time()
    garbage: list[str] = []
    size = n_receipt = n_recent = 0
    for uri, info in sorted(files.items()):
        rel = uri[len(base):] if uri.startswith(base) else uri
        if rel in live:
            continue
        if rel in by_receipt:
            n_receipt += 1
            continue
        if age_s(info, now) < grace_s:
            n_recent += 1
            continue
        garbage.append(rel)
        size += int(info.get("size", 0) or 0)
    if delete:
        for rel in garbage:
            try:
                storage.delete(storage.join(output, rel), store)
            except FileNotFoundError:
                pass  # another gc got there first
    return GcResult(garbage, size, n_receipt, n_recent)
