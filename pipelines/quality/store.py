"""Where an audit lives under the output, and how its records are written.

    <output>/audits/<name>/sample.json                    the drawn sample (created once, never modified)
    <output>/audits/<name>/verdicts/<auditor>/<seq>.json  one record per verdict (created once each)
    <output>/audits/<name>/locks/<auditor>.json           the review server that writes for this auditor
    <output>/audits/<name>/report.json, report.html       the latest report

Every record is created with create-if-absent (local: temp + fsync + link; S3: If-None-Match), so a
record is never overwritten, a reader never sees half of one, and two writers can't both take the same
sequence number: the loser learns it and stops, nothing is double counted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOCK_TTL_S = 60.0  # a lock whose heartbeat is older than this is stale (its server died elsewhere)
HEARTBEAT_S = 15.0


class AuditError(Exception):
    """Bad input or state of an audit: the CLI prints the message and exits nonzero (no traceback)."""


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise AuditError(f"bad {kind} name {name!r}: use letters, digits, '_', '.', '-' (max 64, no '/')")
    return name


def audit_uri(output: str, name: str) -> str:
    return storage.join(output, "audits", check_name("audit", name))


def sample_uri(output: str, name: str) -> str:
    return storage.join(audit_uri(output, name), "sample.json")


def verdicts_uri(output: str, name: str, auditor: str | None = None) -> str:
    base = storage.join(audit_uri(output, name), "verdicts")
    return storage.join(base, check_name("auditor", auditor)) if auditor else base


def lock_uri(output: str, name: str, auditor: str) -> str:
    return storage.join(audit_uri(output, name), "locks", check_name("auditor", auditor) + ".json")


def _fsync_dir(uri: str) -> None:
    """Make a new local directory entry durable too (the file itself was fsynced before the link)."""
    if storage.is_s3(uri):
        return
    fd = os.open(os.path.dirname(uri), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_record(uri: str, record: dict[str, Any], store: StorageSpec) -> bool:
    """Create one JSON record durably; False when the name is taken by different content."""
    ok = storage.create_if_absent(uri, json.dumps(record, sort_keys=True).encode(), store)
    if ok:
        _fsync_dir(uri)
    return ok


def read_json(uri: str, store: StorageSpec) -> dict[str, Any]:
    return json.loads(storage.read_bytes(uri, store))


def load_sample(output: str, name: str, store: StorageSpec) -> dict[str, Any]:
    uri = sample_uri(output, name)
    try:
        return read_json(uri, store)
    except FileNotFoundError:
        raise AuditError(f"no audit {name!r} under {output} (draw one with `audit sample --name {name}`)") from None


def list_audits(output: str, store: StorageSpec) -> list[str]:
    """Names of the audits under the output (one listing of audits/, no verdicts read)."""
    fs, path = storage.fs_and_path(storage.join(output, "audits"), store)
    try:
        entries = storage.with_retries(lambda: fs.ls(path, detail=False), store, "list audits")
    except FileNotFoundError:
        return []
    return sorted(n for n in (e.rstrip("/").rsplit("/", 1)[-1] for e in entries) if NAME_RE.match(n))


# ------------------------------------------------------------------------------------ verdicts
def read_verdicts(output: str, name: str, store: StorageSpec, auditor: str | None = None) -> list[dict[str, Any]]:
    """Every verdict record of the audit (or of one auditor), ordered by (auditor, seq)."""
    files = [u for u in storage.list_files(verdicts_uri(output, name, auditor), store) if u.endswith(".json")]
    with ThreadPoolExecutor(max_workers=16) as pool:
        records = list(pool.map(lambda u: read_json(u, store), files))
    return sorted(records, key=lambda r: (r["auditor"], int(r["seq"])))


def current_verdicts(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """auditor -> key -> the verdict in force (the last record per key; an undo clears the key)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:  # already in (auditor, seq) order
        mine = out.setdefault(r["auditor"], {})
        if r["verdict"] == "undo":
            mine.pop(r["key"], None)
        else:
            mine[r["key"]] = r
    return out


# ---------------------------------------------------------------------------------------- lock
@dataclass
class Lock:
    uri: str
    token: str
    store: StorageSpec

    def body(self) -> dict[str, Any]:
        return {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time()}

    def heartbeat(self) -> None:
        """Refresh the heartbeat, unless another server took the lock over (then raise)."""
        held = read_json(self.uri, self.store)
        if held.get("token") != self.token:
            raise AuditError(f"lock {self.uri} was taken over by another server (pid {held.get('pid')})")
        storage.write_bytes(self.uri, json.dumps(self.body()).encode(), self.store)

    def release(self) -> None:
        try:
            if read_json(self.uri, self.store).get("token") == self.token:
                storage.delete(self.uri, self.store)
        except (FileNotFoundError, ValueError):
            pass


def _stale(held: dict[str, Any]) -> bool:
    """A dead holder: same host and its pid is gone, or no heartbeat for LOCK_TTL_S."""
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            pass
    return time.time() - float(held.get("heartbeat", 0)) > LOCK_TTL_S


def acquire_lock(output: str, name: str, auditor: str, store: StorageSpec) -> Lock:
    """Take the audit+auditor lock, or refuse clearly when a live server holds it."""
    uri = lock_uri(output, name, auditor)
    lock = Lock(uri, uuid.uuid4().hex, store)
    for _ in range(2):
        if storage.create_if_absent(uri, json.dumps(lock.body()).encode(), store):
            return lock
        try:
            held = read_json(uri, store)
        except FileNotFoundError:
            continue  # released between our create and our read: try again
        except ValueError:
            held = {}
        if not _stale(held):
            age = time.time() - float(held.get("heartbeat", 0))
            raise AuditError(
                f"audit {name!r} is already being reviewed by auditor {auditor!r} in another server "
                f"(pid {held.get('pid')} on {held.get('host')}, heartbeat {age:.0f} s ago): stop that server, "
                f"or review as another --auditor")
        storage.delete(uri, store)  # the holder is dead: take over
    raise AuditError(f"could not take the lock {uri}: another server is starting for the same auditor")
