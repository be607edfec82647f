"""The review page's server: stdlib http.server, one audit and one auditor per process.

    GET  /                      the page (static/review.html + review.js)
    GET  /api/state             sample size, keys in order, this auditor's verdicts in force, where to resume
    GET  /api/item/<i>          what the page shows for pair i (task, subtype, instruction, answer, targets)
    GET  /api/image/<i>.png     pair i's image with its targets drawn (pipelines/consumers/render.py)
    POST /api/verdict           {key, verdict: y|n|s, reason, vid} -> 200 only after the record is durable
    POST /api/undo              {vid} -> retracts the latest verdict in force, answers its key

The page is blind to whether a pair was accepted or rejected (and to the reject reason), so a
reviewer judges the pair, not the filter. A verdict for a key outside the sample is refused (400);
a lost lock or a record number taken by another writer refuses every further write (409).
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.consumers.cards import Item, SourceIndex, reject_item, sample_item
from pipelines.consumers.render import fit_within
from pipelines.quality.sample import KIND_SAMPLE, collected_shards
from pipelines.quality.store import HEARTBEAT_S, AuditError, Lock, acquire_lock, load_sample
from pipelines.quality.verdicts import REASONS, VERDICTS, VerdictLog
from pipelines.storage.fs import StorageSpec
from pipelines.storage.output import list_versions, load_manifest

STATIC = Path(__file__).with_name("static")
CACHE_ITEMS = 32  # rendered pairs kept in memory (the page prefetches the next one)
MAX_SIDE = 800


class AuditApp:
    """Everything one server needs: the sample, the auditor's verdict log, the lock, the sources."""

    def __init__(self, output: str, name: str, auditor: str, store: StorageSpec) -> None:
        self.sample = load_sample(output, name, store)
        version = int(self.sample["version"])
        if version not in list_versions(output, store):
            raise AuditError(f"audit {name!r} was drawn from version {version}, which is no longer under {output}")
        gone = collected_shards(output, self.sample, store)
        if gone:
            raise AuditError(f"audit {name!r} was drawn from version {version}, whose shards were garbage-collected "
                             f"({len(gone)} missing, e.g. {gone[0]}): its pairs are no longer in the dataset; "
                             "draw a new sample from a live version (`audit sample --name NEW`)")
        self.name, self.auditor = name, auditor
        self.items = self.sample["items"]
        self.keys = [it["key"] for it in self.items]
        self.index = SourceIndex(load_manifest(output, version, store), store)
        self.lock: Lock = acquire_lock(output, name, auditor, store)
        try:
            self.log = VerdictLog(output, name, auditor, self.keys, store)
        except BaseException:
            self.lock.release()
            raise
        self.refused: str | None = None  # set when this server must stop writing (lock lost)
        self._cache: OrderedDict[int, tuple[Item, bytes]] = OrderedDict()
        self._cache_mutex = threading.Lock()
        self._store = store

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "auditor": self.auditor, "version": self.sample["version"], "keys": self.keys,
                "verdicts": {k: {"verdict": r["verdict"], "reason": r["reason"]} for k, r in self.log.current.items()},
                "next": self.log.next_index(), "progress": self.log.progress(), "reasons": list(REASONS),
                "labels": VERDICTS}

    def rendered(self, i: int) -> tuple[Item, bytes]:
        with self._cache_mutex:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        row = self.items[i]
        make = sample_item if row["kind"] == KIND_SAMPLE else reject_item
        item = make(row, self.index, self._store)
        img = item.image if item.image is not None else Image.new("RGB", (320, 240), (220, 220, 220))
        buf = io.BytesIO()
        fit_within(img, MAX_SIDE, MAX_SIDE).save(buf, format="PNG")
        with self._cache_mutex:
            self._cache[i] = (item, buf.getvalue())
            while len(self._cache) > CACHE_ITEMS:
                self._cache.popitem(last=False)
        return self._cache[i]

    def item(self, i: int) -> dict[str, Any]:
        item, _ = self.rendered(i)
        given = self.log.current.get(self.keys[i])
        return {"index": i, "key": self.keys[i], "task": item.task, "subtype": item.subtype,
                "instruction": item.instruction, "answer": item.answer, "note": item.note,
                "targets": [{"label": t.label, "colour": list(t.colour), "is_part": t.is_part} for t in item.targets],
                "verdict": given["verdict"] if given else None, "reason": given["reason"] if given else None}

    def heartbeat_forever(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self.lock.heartbeat()
            except (AuditError, OSError) as exc:
                self.refused = f"lock lost: {exc}"


class Handler(BaseHTTPRequestHandler):
    app: AuditApp  # set on the subclass made by make_server
    server_version = "groundv-audit/1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the CLI prints what matters
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _index(self, part: str) -> int | None:
        try:
            i = int(part)
        except ValueError:
            return None
        return i if 0 <= i < len(self.app.keys) else None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._send(200, (STATIC / "review.html").read_bytes(), "text/html; charset=utf-8")
        if path == "/review.js":
            return self._send(200, (STATIC / "review.js").read_bytes(), "text/javascript; charset=utf-8")
        if path == "/api/state":
            return self._json(200, self.app.state())
        if path.startswith("/api/item/"):
            i = self._index(path.rsplit("/", 1)[-1])
            return self._json(200, self.app.item(i)) if i is not None else self._json(404, {"error": "no such pair"})
        if path.startswith("/api/image/") and path.endswith(".png"):
            i = self._index(path.rsplit("/", 1)[-1][:-4])
            if i is None:
                return self._json(404, {"error": "no such pair"})
            return self._send(200, self.app.rendered(i)[1], "image/png")
        return self._json(404, {"error": f"not found: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        except ValueError:
            return self._json(400, {"error": "body is not JSON"})
        if self.app.refused:
            return self._json(409, {"error": self.app.refused})
        log = self.app.log
        try:
            if self.path == "/api/verdict":
                rec = log.give(str(body.get("key")), str(body.get("verdict")), body.get("reason"), body.get("vid"))
            elif self.path == "/api/undo":
                rec = log.undo(body.get("vid"))
            else:
                return self._json(404, {"error": f"not found: {self.path}"})
        except AuditError as exc:
            code = 409 if type(exc).__name__ == "ConflictError" else 400
            if code == 409:
                self.app.refused = str(exc)
            return self._json(code, {"error": str(exc)})
        except OSError as exc:  # the store failed: not acknowledged, the page keeps it and retries
            return self._json(503, {"error": f"not saved: {exc}"})
        self._json(200, {"record": rec, "progress": log.progress(), "next": log.next_index()})


def make_server(app: AuditApp, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("AuditHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
