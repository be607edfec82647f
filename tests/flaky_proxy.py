"""A real HTTP proxy for fault injection in front of the S3 test server (moto).

    with FlakyProxy(s3_server, p_503=0.2, p_reset=0.1, seed=7) as proxy:
        ...  # point storage.endpoint_url at proxy.url

Clients talk plain HTTP to 127.0.0.1:<port>; every request is forwarded to the upstream server
unless the proxy decides to fail it:

* ``503``     answer ``503 SlowDown`` (the S3 error XML) without forwarding;
* ``reset``   read the request, then reset the TCP connection (RST) without forwarding;
* ``reset_after`` forward the request (the store applies it), then reset instead of answering:
  the nastiest case, the client cannot know whether its write happened.

Decisions are deterministic: a request's fate depends only on the seed, its method + target and how
many times that same method + target was seen before, never on thread timing. No request fails more
than ``max_consecutive`` times in a row, so a client that retries enough always gets through.

``mode`` switches the whole store: ``"flaky"`` (the above), ``"down"`` (every request answers 503),
``"writes_down"`` (PUT / POST / DELETE answer 503, reads pass). ``stop()`` closes the port
(connection refused). Every request is logged in ``log`` as (method, target, outcome).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

Mode = Literal["flaky", "down", "writes_down"]
Outcome = Literal["ok", "503", "reset", "reset_after"]

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect"}
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>flaky-proxy</RequestId></Error>")
_WRITES = {"PUT", "POST", "DELETE"}


@dataclass(frozen=True)
class LogEntry:
    method: str
    target: str  # path + query as sent by the client
    outcome: str


class FlakyProxy:
    """Threaded reverse proxy on 127.0.0.1 with seeded, per-request fault injection."""

    def __init__(self, upstream: str, *, seed: int = 0, p_503: float = 0.0, p_reset: float = 0.0,
                 p_reset_after: float = 0.0, max_consecutive: int = 2, mode: Mode = "flaky") -> None:
        if p_503 + p_reset + p_reset_after > 1.0:
            raise ValueError("fault probabilities add up to more than 1")
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.seed = seed
        self.p_503 = p_503
        self.p_reset = p_reset
        self.p_reset_after = p_reset_after
        self.max_consecutive = max_consecutive
        self.mode: Mode = mode
        self.log: list[LogEntry] = []
        self._seen: Counter[tuple[str, str]] = Counter()
        self._streak: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()
        self.stopped = False
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FlakyProxy:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.proxy = self  # type: ignore[attr-defined]
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="flaky-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening port and every open (keep-alive) connection: clients get 'connection
        refused' from then on, like a store that is gone."""
        self.stopped = True
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ decisions
    def decide(self, method: str, target: str) -> Outcome:
        key = (method, target)
        with self._lock:
            if self.mode == "down" or (self.mode == "writes_down" and method in _WRITES):
                return "503"
            if self.mode != "flaky":
                return "ok"
            n = self._seen[key]
            self._seen[key] += 1
            outcome: Outcome = "ok"
            if self._streak[key] < self.max_consecutive:
                x = random.Random(f"{self.seed}:{method}:{target}:{n}").random()
                if x < self.p_503:
                    outcome = "503"
                elif x < self.p_503 + self.p_reset:
                    outcome = "reset"
                elif x < self.p_503 + self.p_reset + self.p_reset_after:
                    outcome = "reset_after"
            self._streak[key] = 0 if outcome == "ok" else self._streak[key] + 1
            return outcome

    def record(self, method: str, target: str, outcome: str) -> None:
        with self._lock:
            self.log.append(LogEntry(method, target, outcome))

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(e.outcome for e in self.log)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        return

    def _body(self) -> bytes:
        """The request body exactly as sent (a chunked body is forwarded still chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline()
                out += line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        trailer = self.rfile.readline()
                        out += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return bytes(out)
                out += self.rfile.read(size + 2)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reset(self) -> None:
        # SO_LINGER(on, 0) + close sends a TCP RST: the client sees "connection reset by peer".
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def setup(self) -> None:
        super().setup()
        proxy: FlakyProxy = self.server.proxy  # type: ignore[attr-defined]
        with proxy._lock:
            proxy._conns.add(self.connection)

    def _handle(self) -> None:
        proxy: FlakyProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self._body()
        if proxy.stopped:
            self._reset()
            return
        outcome = proxy.decide(self.command, self.path)
        proxy.record(self.command, self.path, outcome)
        if outcome == "reset":
            self._reset()
            return
        if outcome == "503":
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_SLOWDOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(_SLOWDOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP - {"transfer-encoding"}}
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, reason, resp_headers = resp.status, resp.reason, resp.getheaders()
        finally:
            conn.close()
        if outcome == "reset_after":
            self._reset()
            return
        self.send_response(status, reason)
        for k, v in resp_headers:
            if k.lower() in _HOP_BY_HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    def finish(self) -> None:
        proxy: FlakyProxy = self.server.proxy  # type: ignore[attr-defined]
        with proxy._lock:
            proxy._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:  # the connection was reset on purpose
            pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            self.close_connection = True
