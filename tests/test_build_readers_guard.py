"""The build's own readers of manifest / receipt shard paths (unit ledger, copy-on-write rewrite,
pending receipts, stored responses, verify and compaction reads) go through the one path guard:
a crafted `../../x` is a clear UnsafePath, never a read outside the output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.build.commit import rewrite_shard
from pipelines.build.compact import compact_entries
from pipelines.build.verify import read_rows
from pipelines.storage.fs import StorageSpec
from pipelines.storage.guard import UnsafePath
from pipelines.storage.output import Ledger, pending_receipts, read_ledger, read_responses
from schemas.columns import RAW_SCHEMA
from schemas.manifest import ShardEntry

pytestmark = pytest.mark.unit

STORE = StorageSpec()
CRAFTED = "../../x"


def _setup(tmp_path: Path) -> tuple[str, ShardEntry]:
    """An output folder and, two levels above it, a valid raw shard named `x` that a reader joining
    `output/../../x` would open (and happily parse)."""
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    row = {n: None for n in RAW_SCHEMA.names}
    row.update({"gen_key": "k1", "source": "s", "image_id": 1, "task": "part", "outcome": "accepted"})
    pq.write_table(RAW_SCHEMA.empty_table().from_pylist([row], schema=RAW_SCHEMA), tmp_path / "a" / "x")
    assert (out / CRAFTED).resolve() == (tmp_path / "a" / "x").resolve()
    return str(out), ShardEntry(path=CRAFTED, kind="raw", task="part", rows=1, bytes=1, sha256="", batch="b1")


def test_read_ledger_refuses_a_crafted_manifest_path(tmp_path):
    out, entry = _setup(tmp_path)
    with pytest.raises(UnsafePath, match="not a plain path under data/"):
        read_ledger(out, [[entry]], STORE)


def test_rewrite_shard_refuses_a_crafted_path(tmp_path):
    out, entry = _setup(tmp_path)
    with pytest.raises(UnsafePath, match="not a plain path under data/"):
        rewrite_shard(entry, {"k1"}, "b2", out, STORE)


def test_pending_receipt_with_a_crafted_path_is_refused(tmp_path):
    out, entry = _setup(tmp_path)
    receipt = Path(out, "receipts", "build-1", "b1.json")
    receipt.parent.mkdir(parents=True)
    receipt.write_text(json.dumps({"build_id": "build-1", "batch": "b1", "units": 1,
                                   "shards": [entry.__dict__]}))
    with pytest.raises(UnsafePath, match=r"'\.\./\.\./x'"):
        pending_receipts(out, STORE, committed=set())


def test_other_build_readers_refuse_a_crafted_path(tmp_path):
    out, entry = _setup(tmp_path)
    ledger = Ledger(rows=RAW_SCHEMA.empty_table(), shards_by_batch={"b1": [entry]}, batch_order=["b1"])
    with pytest.raises(UnsafePath):
        read_responses(out, ledger, {"b1": {"k1"}}, STORE)
    with pytest.raises(UnsafePath):
        read_rows(out, entry, STORE)
    with pytest.raises(UnsafePath):
        compact_entries(out, STORE, [entry, ShardEntry("data/raw/part/aa/y.parquet", "raw", "part", 1, 1, "", "b1")],
                        10, 1.0)
