"""Object storage: one way to reach local paths and s3:// URIs (fsspec / s3fs).

Credentials come from the standard AWS chain (environment, config files, instance role); the only
option we add is ``storage.endpoint_url`` for S3-compatible servers (MinIO, SeaweedFS, moto).
Nothing here ever logs or returns a credential.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import fsspec

T = TypeVar("T")

# Errors of a flaky store that are worth a retry (S3 503 SlowDown, resets, 409 conflicts, timeouts).
_TRANSIENT_MARKERS = ("503", "SlowDown", "ServiceUnavailable", "Connection reset", "timed out",
                      "Timeout", "ConditionalRequestConflict", "409", "500", "InternalError",
                      "RemoteDisconnected", "BrokenPipe", "EndpointConnectionError")


@dataclass(frozen=True)
class StorageSpec:
    """What a worker needs to open the same filesystems as the driver (picklable, no secrets)."""

    endpoint_url: str | None = None
    retries: int = 5

    def options_for(self, uri: str) -> dict[str, Any]:
        if not is_s3(uri):
            return {}
        opts: dict[str, Any] = {
            # botocore's own retry (adaptive backoff) handles 503/throttling below fsspec.
            "config_kwargs": {"retries": {"max_attempts": self.retries, "mode": "adaptive"}},
            "skip_instance_cache": False,
        }
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        return opts


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://")


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def fs_and_path(uri: str, storage: StorageSpec) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(uri, **storage.options_for(uri))
    return fs, path


def with_retries(fn: Callable[[], T], storage: StorageSpec, what: str) -> T:
    """Run `fn`, retrying transient store errors with exponential backoff."""
    delay = 0.2
    for attempt in range(storage.retries + 1):
        try:
            return fn()
        except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError):
            raise
        except OSError as exc:  # s3fs / aiohttp / botocore errors surface as OSError subclasses
            if attempt >= storage.retries or not _is_transient(exc):
                raise
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover


def _is_transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc} {exc.__cause__!r}"
    return any(m in text for m in _TRANSIENT_MARKERS)


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


def write_bytes(uri: str, data: bytes, storage: StorageSpec) -> None:
    """Write a whole object so that readers never see a partial file.

    Local: temp file in the same folder, fsync, rename. S3: one PUT is atomic by itself.
    """
    if is_s3(uri):
        fs, path = fs_and_path(uri, storage)
        with_retries(lambda: fs.pipe_file(path, data), storage, f"write {uri}")
        return
    folder = os.path.dirname(os.path.abspath(uri))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, uri)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_if_absent(uri: str, data: bytes, storage: StorageSpec) -> bool:
    """Create `uri` with `data` only if it does not exist. True if we created it.

    Local: temp file + fsync + os.link (link fails if the name exists, and readers never see a
    half-written file). S3: conditional PUT (If-None-Match: *) through s3fs's mode="create";
    moto raises FileExistsError, SeaweedFS an OSError caused by the 412, real S3 may answer 409
    ConditionalRequestConflict (retried).
    """
    if is_s3(uri):
        return _s3_create_if_absent(uri, data, storage)
    folder = os.path.dirname(os.path.abspath(uri))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, uri)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _s3_create_if_absent(uri: str, data: bytes, storage: StorageSpec) -> bool:
    fs, path = fs_and_path(uri, storage)
    delay = 0.2
    for attempt in range(storage.retries + 1):
        try:
            fs.pipe_file(path, data, mode="create")
            fs.invalidate_cache(path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            text = f"{exc} {exc.__cause__!r}"
            if "PreconditionFailed" in text or "412" in text or getattr(exc, "errno", None) == errno.EEXIST:
                return False
            if attempt >= storage.retries or not _is_transient(exc):
                raise
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    return False  # pragma: no cover


def delete(uri: str, storage: StorageSpec) -> None:
    fs, path = fs_and_path(uri, storage)
    with_retries(lambda: fs.rm_file(path), storage, f"delete {uri}")
