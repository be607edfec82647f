"""One auditor's verdict log: validates a verdict, writes it durably as its own record, and only
then lets the server acknowledge it.

Records are numbered per auditor (seq 1, 2, ...) and created with create-if-absent, so a second
writer for the same auditor fails on its first colliding number instead of interleaving. Each
verdict carries the page's id for it (`vid`): a page that resends a verdict whose answer it never got
(server killed after the write) is answered from the log, not written twice.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from pipelines.quality.store import AuditError, create_record, read_verdicts, verdicts_uri
from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec

VERDICTS = {"y": "correct", "n": "wrong", "s": "skip"}
REASONS = ("ambiguous", "wrong_target", "incomplete_mask", "hallucination_wrong", "bad_language", "other")


class ConflictError(AuditError):
    """Another writer took a record number of this auditor: this server must stop writing."""


class VerdictLog:
    def __init__(self, output: str, name: str, auditor: str, keys: list[str], store: StorageSpec) -> None:
        self.output, self.name, self.auditor, self.store = output, name, auditor, store
        self.keys = keys
        self._known = set(keys)
        self._mutex = threading.Lock()
        self.records = read_verdicts(output, name, store, auditor)
        self.seq = max((int(r["seq"]) for r in self.records), default=0)
        self.by_vid = {r["vid"]: r for r in self.records if r.get("vid")}
        self.current: dict[str, dict[str, Any]] = {}
        self.stack: list[str] = []  # keys with a verdict in force, in the order given (undo pops)
        for r in self.records:
            self._apply(r)

    def _apply(self, r: dict[str, Any]) -> None:
        key = r["key"]
        if key in self.stack:
            self.stack.remove(key)
        if r["verdict"] == "undo":
            self.current.pop(key, None)
        else:
            self.current[key] = r
            self.stack.append(key)

    def _write(self, key: str, verdict: str, reason: str | None, vid: str | None) -> dict[str, Any]:
        seq = self.seq + 1
        rec = {"auditor": self.auditor, "key": key, "verdict": verdict, "reason": reason, "seq": seq,
               "vid": vid, "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
        uri = storage.join(verdicts_uri(self.output, self.name, self.auditor), f"{seq:08d}.json")
        if not create_record(uri, rec, self.store):
            raise ConflictError(f"verdict record {seq} of auditor {self.auditor!r} was written by another server: "
                                "two servers are writing this audit for the same auditor; this one stops")
        self.seq = seq
        self.records.append(rec)
        if vid:
            self.by_vid[vid] = rec
        self._apply(rec)
        return rec

    def give(self, key: str, verdict: str, reason: str | None = None, vid: str | None = None) -> dict[str, Any]:
        """Record y / n (+ reason) / s for `key`; returns the durable record (or the earlier one for a resent vid)."""
        with self._mutex:
            if vid and vid in self.by_vid:
                return self.by_vid[vid]
            if key not in self._known:
                raise AuditError(f"pair {key!r} is not in the sample of audit {self.name!r}: verdict refused")
            if verdict not in VERDICTS:
                raise AuditError(f"unknown verdict {verdict!r}: expected one of {sorted(VERDICTS)}")
            if verdict == "n" and reason not in REASONS:
                raise AuditError(f"a 'wrong' verdict needs a reason, one of {list(REASONS)}; got {reason!r}")
            return self._write(key, verdict, reason if verdict == "n" else None, vid)

    def undo(self, vid: str | None = None) -> dict[str, Any] | None:
        """Retract the latest verdict in force; returns the undo record (None when nothing to undo)."""
        with self._mutex:
            if vid and vid in self.by_vid:
                return self.by_vid[vid]
            if not self.stack:
                return None
            return self._write(self.stack[-1], "undo", None, vid)

    def progress(self) -> dict[str, int]:
        counts = {v: 0 for v in VERDICTS}
        for r in self.current.values():
            counts[r["verdict"]] += 1
        return {"done": len(self.current), "total": len(self.keys), **counts}

    def next_index(self) -> int:
        """Index of the first pair without a verdict (len(keys) when all are done): where to resume."""
        return next((i for i, k in enumerate(self.keys) if k not in self.current), len(self.keys))
