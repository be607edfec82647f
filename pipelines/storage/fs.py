"""Object storage: one way to reach local paths and s3:// URIs (fsspec / s3fs).

Credentials come from the standard AWS chain (environment, config files, instance role); the only
option we add is ``storage.endpoint_url`` for S3-compatible servers (MinIO, SeaweedFS, moto).
Nothing here ever logs or returns a credential, and `scrub` removes them from any text we print.

Retries (docs/reliability.md): a flaky store is retried in two layers that do not multiply out of
control: botocore retries each HTTP request a few times (`BOTO_ATTEMPTS`, jittered backoff: absorbs
a 503 or a reset in well under a second), and `with_retries` retries the whole operation
`storage.retries` times with exponential backoff (0.2 s .. 5 s). s3fs's own retry layer is turned
off. When every attempt failed, the operation raises `StorageError` naming the operation, the uri,
the attempts and the last cause: a store that stays down stops the build in seconds, not hours.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TypeVar

import fsspec

from pipelines.core.secrets import scrub

T = TypeVar("T")

BOTO_ATTEMPTS = 3  # attempts per HTTP request inside botocore (standard mode), before `with_retries`
S3FS_RETRIES = 1  # s3fs's own retry loop: off (1 = a single try), `with_retries` is the outer layer
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 120

# S3 error codes / HTTP statuses worth a retry: throttling, server errors, timeouts, and S3's 409 for
# two conditional writes racing (the loser's retry then sees 412).
_TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeoutException",
    "Throttling", "ThrottlingException", "RequestThrottled", "ConditionalRequestConflict", "OperationAborted",
    "503", "500", "502", "504",
})
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
_TRANSIENT_TYPE_NAMES = frozenset({
    # botocore (connection / protocol level), aiohttp, fsspec: matched by name so that this module
    # imports without the S3 extras.
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "ProxyConnectionError", "HTTPClientError", "ResponseStreamingError", "IncompleteReadError",
    "ResponseParserError", "ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError",
    "ClientConnectorError", "ClientOSError", "ServerTimeoutError", "FSTimeoutError",
})
# Errors that say "this object", not "the store": never retried, passed through unchanged.
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


class StorageError(OSError):
    """A store operation failed for good: every retry failed, or the store is unreachable / unusable.

    The message names the operation, the uri and the cause (never a credential).
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@dataclass(frozen=True)
class StorageSpec:
    """What a worker needs to open the same filesystems as the driver (picklable, no secrets)."""

    endpoint_url: str | None = None
    retries: int = 5  # retries of a whole store operation after its first attempt

    def options_for(self, uri: str) -> dict[str, Any]:
        if not is_s3(uri):
            return {}
        opts: dict[str, Any] = {
            "config_kwargs": {
                "retries": {"total_max_attempts": BOTO_ATTEMPTS, "mode": "standard"},
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
            },
            "skip_instance_cache": False,
        }
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        return opts


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


# Hadoop / Spark spellings of S3: the same objects, so they are read as s3:// (one spelling in
# manifests, listings and messages). Any other scheme is refused: writing `gs://x` to a local folder
# named `gs:/x` and exiting 0 is the failure this prevents.
S3_ALIASES = ("s3a://", "s3n://")


def normalize_uri(uri: str) -> str:
    """The one spelling of a storage location: `s3://...` or an absolute local path.

    `s3a://` / `s3n://` become `s3://`, `file://` a local path; any other `scheme://` raises
    ValueError naming it (only S3 and local paths are supported).
    """
    uri = str(uri).strip()
    for alias in S3_ALIASES:
        if uri.lower().startswith(alias):
            return "s3://" + uri[len(alias):]
    if uri.lower().startswith("s3://"):
        return "s3://" + uri[5:]
    if uri.lower().startswith("file://"):
        return os.path.abspath(uri[7:])
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if scheme:
        raise ValueError(f"{uri}: the scheme {scheme.group(1)}:// is not supported; use s3://bucket/prefix "
                         "(s3a:// and s3n:// are read as s3://) or a local path")
    return os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def open_fs(uri: str, options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` (with `options`) and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri, **dict(options or {}))
    if is_s3(uri):
        fs.retries = S3FS_RETRIES  # one retry layer of ours instead of s3fs's x botocore's x ours
    return fs, path


def fs_and_path(uri: str, storage: StorageSpec) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it."""
    return open_fs(uri, storage.options_for(uri))


# ------------------------------------------------------------------------------------ retries
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient(exc: BaseException) -> bool:
    """True for errors of a flaky store (throttling, 5xx, resets, timeouts), never for local disk
    errors (ENOSPC, EACCES, ...) or for "this object does not exist"."""
    for e in _chain(exc):
        if isinstance(e, StorageError):
            return False  # already retried by an inner with_retries
        if isinstance(e, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        if any(c.__name__ in _TRANSIENT_TYPE_NAMES for c in type(e).__mro__):
            return True
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = str((resp.get("Error") or {}).get("Code", ""))
            status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
                return True
    return False


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, one line, without credentials."""
    text = " ".join(str(exc).split()) or repr(exc)
    return scrub(f"{type(exc).__name__}: {text}")[:400]


def with_retries(fn: Callable[[], T], storage: StorageSpec, what: str) -> T:
    """Run `fn`, retrying transient store errors with exponential backoff (0.2 s doubling to 5 s).

    After `storage.retries` retries raises `StorageError` ("<what>: gave up after N attempts ...").
    Permanent errors (missing object, permission denied, disk full) are raised at once, unchanged.
    """
    attempts = max(0, int(storage.retries)) + 1
    start = time.monotonic()
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except _PERMANENT:
            raise
        except Exception as exc:  # s3fs / aiohttp / botocore errors are not all OSError
            if not is_transient(exc):
                raise
            if attempt >= attempts:
                raise StorageError(
                    errno.EIO,
                    f"{scrub(what)}: the store kept failing, gave up after {attempts} attempts in "
                    f"{time.monotonic() - start:.1f} s (last error: {describe(exc)}); check that the store is up "
                    f"and reachable (storage.endpoint_url, network), or raise storage.retries",
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------ operations
def read_bytes(uri: str, storage: StorageSpec) -> bytes:
    fs, path = fs_and_path(uri, storage)
    return with_retries(lambda: fs.cat_file(path), storage, f"read {uri}")


def exists(uri: str, storage: StorageSpec) -> bool:
    fs, path = fs_and_path(uri, storage)
    return with_retries(lambda: fs.exists(path), storage, f"stat {uri}")


def list_files(prefix: str, storage: StorageSpec) -> dict[str, dict[str, Any]]:
    """Every file under `prefix` -> its listing info (size, ETag / mtime), one listing pass."""
    fs, path = fs_and_path(prefix, storage)
    if not with_retries(lambda: fs.exists(path), storage, f"list {prefix}"):
        return {}
    found = with_retries(lambda: fs.find(path, detail=True), storage, f"list {prefix}")
    proto = "s3://" if is_s3(prefix) else ""
    return {proto + p: info for p, info in found.items() if info.get("type", "file") == "file"}


def local_write_error(uri: str, exc: OSError) -> StorageError:
    why = exc.strerror or describe(exc)
    hint = {
        errno.ENOSPC: "free some space or choose another output.uri",
        errno.EDQUOT: "free some space (disk quota) or choose another output.uri",
        errno.EFBIG: "the file size limit (ulimit -f) or the file system's limit is too small",
        errno.EROFS: "the file system is mounted read-only: choose another output.uri",
        errno.EACCES: "no permission to write there: fix the permissions or choose another output.uri",
        errno.EPERM: "the file system refused the write (permissions, immutable or append-only directory)",
        errno.ENOTDIR: "a component of the path is a file, not a directory: fix output.uri",
    }.get(exc.errno or 0, "check the output location")
    return StorageError(exc.errno or errno.EIO, f"cannot write {uri}: {why} ({hint})")


def write_bytes(uri: str, data: bytes, storage: StorageSpec) -> None:
    """Write a whole object so that readers never see a partial file.

    Local: temp file in the same folder, fsync, rename. S3: one PUT is atomic by itself.
    A local write error (disk full, permission denied, read-only) raises `StorageError` naming the
    uri and what to do; the temp file is removed.
    """
    if is_s3(uri):
        fs, path = fs_and_path(uri, storage)
        with_retries(lambda: fs.pipe_file(path, data), storage, f"write {uri}")
        return
    try:
        _local_atomic_write(uri, data, replace=True)
    except OSError as exc:
        raise local_write_error(uri, exc) from exc


def _process_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask sets it: racy)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _local_atomic_write(uri: str, data: bytes, replace: bool) -> bool:
    """temp + fsync + rename (replace) or link (create only). False if `uri` existed (create)."""
    folder = os.path.dirname(os.path.abspath(uri))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        # mkstemp makes the file 0600; an output is shared, so give it what open() would (0644
        # under umask 022).
        os.fchmod(fd, 0o666 & ~_process_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, uri)
            return True
        try:
            os.link(tmp, uri)
        except FileExistsError:
            return _same_bytes_local(uri, data)
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _same_bytes_local(uri: str, data: bytes) -> bool:
    try:
        with open(uri, "rb") as fh:
            return fh.read() == data
    except OSError:
        return False


def create_if_absent(uri: str, data: bytes, storage: StorageSpec) -> bool:
    """Create `uri` with `data` only if it does not exist. True if we created it.

    Local: temp file + fsync + os.link (link fails if the name exists, and readers never see a
    half-written file). S3: conditional PUT (If-None-Match: *) through s3fs's mode="create";
    moto raises FileExistsError, SeaweedFS an OSError caused by the 412, real S3 may answer 409
    ConditionalRequestConflict (retried).

    A request whose answer was lost (connection reset after the store applied it) is retried and
    then meets its own object (412): when the existing object holds exactly `data` it is ours, and
    the call returns True. (Callers put a unique build id in `data`, so equal bytes mean "ours".)
    """
    if is_s3(uri):
        return _s3_create_if_absent(uri, data, storage)
    try:
        return _local_atomic_write(uri, data, replace=False)
    except OSError as exc:
        raise local_write_error(uri, exc) from exc


def _s3_create_if_absent(uri: str, data: bytes, storage: StorageSpec) -> bool:
    fs, path = fs_and_path(uri, storage)

    def attempt() -> bool:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            text = f"{exc} {exc.__cause__!r}"
            if "PreconditionFailed" in text or "412" in text or getattr(exc, "errno", None) == errno.EEXIST:
                return False
            raise
        finally:
            fs.invalidate_cache(path)
        return True

    if with_retries(attempt, storage, f"create {uri}"):
        return True
    existing = with_retries(lambda: fs.cat_file(path), storage, f"read {uri}")
    return existing == data


def delete(uri: str, storage: StorageSpec) -> None:
    fs, path = fs_and_path(uri, storage)
    with_retries(lambda: fs.rm_file(path), storage, f"delete {uri}")


# ------------------------------------------------------------------------------------ pre-flight


