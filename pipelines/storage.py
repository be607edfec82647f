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
    return uri.startswith("s3://") or uri.startswith("s3a://")


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


def _is_transient(exc: BaseException) -> bool:  # pragma: no cover - kept for older callers
    return is_transient(exc)


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


def _local_write_error(uri: str, exc: OSError) -> StorageError:
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
        raise _local_write_error(uri, exc) from exc


def _local_atomic_write(uri: str, data: bytes, replace: bool) -> bool:
    """temp + fsync + rename (replace) or link (create only). False if `uri` existed (create)."""
    folder = os.path.dirname(os.path.abspath(uri))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
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
        raise _local_write_error(uri, exc) from exc


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
def check_reachable(uri: str, store: StorageSpec, key: str, must_exist: bool = False) -> None:
    """Fail fast (seconds, before Ray starts) when `uri` cannot work: raises `StorageError` whose
    message names the config `key` and the fix.

    S3: one LIST (MaxKeys=1) with short timeouts checks endpoint, credentials, bucket and list
    permission. `must_exist`: the object / prefix must hold something. Local: `must_exist` paths
    must exist; an output path must not run into a file (`/a/file/out`).
    """
    if is_s3(uri):
        _check_s3(uri, store, key, must_exist)
        return
    path = os.path.abspath(uri)
    if must_exist:
        if not os.path.exists(path):
            raise StorageError(errno.ENOENT, f"{key}: {uri} does not exist; fix the path in {key}")
        return
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise StorageError(errno.ENOTDIR, f"{key}: {uri} is under {probe}, which is a file; choose another {key}")


def _check_s3(uri: str, store: StorageSpec, key: str, must_exist: bool) -> None:
    import s3fs

    rest = uri.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    where = store.endpoint_url or "AWS S3"
    fs = s3fs.S3FileSystem(
        endpoint_url=store.endpoint_url or None, skip_instance_cache=True,
        config_kwargs={"retries": {"total_max_attempts": 2, "mode": "standard"}, "connect_timeout": 3,
                       "read_timeout": 15},
    )
    fs.retries = 1
    try:
        out = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, classified below
        raise StorageError(errno.EIO, _s3_problem(exc, uri, bucket, key, where)) from None
    if must_exist and not out.get("KeyCount", len(out.get("Contents") or [])):
        raise StorageError(errno.ENOENT, f"{key}: nothing at {uri} (on {where}); fix the uri in {key}")


def _s3_problem(exc: BaseException, uri: str, bucket: str, key: str, where: str) -> str:
    names = {c.__name__ for e in _chain(exc) for c in type(e).__mro__}
    codes = set()
    for e in _chain(exc):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            codes.add(str((resp.get("Error") or {}).get("Code", "")))
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return (f"{key}: no AWS credentials found for {uri}; set them the standard way (AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, AWS_PROFILE or an instance role)")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionRefusedError", "ConnectionError",
                "ClientConnectorError", "ReadTimeoutError", "ConnectionClosedError"} and not codes:
        fix = ("fix storage.endpoint_url (is the server running, is the port right?)" if where != "AWS S3"
               else "check the network (or set storage.endpoint_url for an S3-compatible server)")
        return f"{key}: cannot reach the object store at {scrub(where)} for {uri} ({describe(exc)}); {fix}"
    if codes & _TRANSIENT_CODES:
        return (f"{key}: the object store at {scrub(where)} is failing for {uri} ({', '.join(sorted(codes))}); "
                f"is it up? retry later, or check storage.endpoint_url")
    if codes & {"NoSuchBucket"} or "FileNotFoundError" in names:
        return f"{key}: bucket '{bucket}' does not exist on {scrub(where)}; create it or fix {key}"
    if codes & {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                "ExpiredToken", "InvalidToken"} or "PermissionError" in names:
        return (f"{key}: access to s3://{bucket} denied ({', '.join(sorted(codes - {''})) or 'AccessDenied'}); "
                f"check the AWS credentials and the bucket policy (s3:ListBucket, s3:GetObject, s3:PutObject)")
    return f"{key}: {uri} is not usable on {scrub(where)}: {describe(exc)}"


def check_all_reachable(uris: Mapping[str, str], store: StorageSpec, must_exist: frozenset[str] = frozenset()) -> None:
    """`check_reachable` for each {config key: uri}; one request per distinct S3 bucket (plus one per
    key in `must_exist`)."""
    done: set[str] = set()
    for key, uri in uris.items():
        if not uri:
            continue
        bucket = uri.split("://", 1)[1].split("/", 1)[0] if is_s3(uri) else None
        if key not in must_exist and bucket is not None:
            if bucket in done:
                continue
            done.add(bucket)
        check_reachable(uri, store, key, must_exist=key in must_exist)


# ------------------------------------------------------------------------------------ secrets
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "HF_TOKEN",
               "HUGGING_FACE_HUB_TOKEN", "AWS_ACCESS_KEY_ID")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]*@")


def scrub(text: str) -> str:
    """`text` without credentials: URL user:password parts and the values of credential variables
    of this process's environment are replaced by `***`."""
    out = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8 and value in out:
            out = out.replace(value, "***")
    return out


def check_model_source(source: str, store: StorageSpec, key: str = "teacher.vllm.model_source") -> None:
    """Fail fast when the teacher's weights cannot be found: a local folder must hold config.json,
    an s3:// copy must exist, a hub id (org/name) must be in the local cache when HF_HUB_OFFLINE=1."""
    if not source or not source.strip():
        raise StorageError(errno.ENOENT, f"{key} is empty; set a hub id (org/name), a local model folder or an "
                                         "s3:// copy of the weights")
    if is_s3(source):
        check_reachable(source, store, key, must_exist=True)
        return
    path = os.path.expanduser(source)
    if source.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(path):
        path = path.removeprefix("file://")
        if not os.path.isdir(path):
            raise StorageError(errno.ENOENT, f"{key}: model folder {source} does not exist; point {key} at a folder "
                                             "with config.json and the weights, or use a hub id (org/name)")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise StorageError(errno.ENOENT, f"{key}: {source} has no config.json, so it is not a Hugging Face "
                                             "model folder; point it at the folder that holds config.json")
        return
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source):
        raise StorageError(errno.EINVAL, f"{key}: {source!r} is neither an existing folder nor a hub id (org/name)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - comes with the teacher extras
            return
        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise StorageError(errno.ENOENT, f"{key}: {source} is not in the local Hugging Face cache and "
                                             "HF_HUB_OFFLINE=1; download it first (huggingface-cli download "
                                             f"{source}) or point {key} at a local folder")


# ------------------------------------------------------------------------------------ top-level errors
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Full|Failed)):\s?(?P<msg>.*)$")


def root_cause(exc: BaseException) -> BaseException:
    """The exception that actually went wrong, under Ray's wrappers (RayTaskError keeps it in
    `.cause`): the first exception in the cause chain that is not Ray's own."""
    seen: set[int] = set()
    e = exc
    while id(e) not in seen:
        seen.add(id(e))
        if not type(e).__module__.startswith("ray."):
            return e
        nxt = getattr(e, "cause", None)
        if not isinstance(nxt, BaseException):
            nxt = e.__cause__ or e.__context__
        if nxt is None:
            return e
        e = nxt
    return e


def cause_text(exc: BaseException) -> str:
    """One line saying what went wrong, without credentials.

    A failure inside a Ray Data stage reaches the driver as RayTaskError(UserCodeException) whose
    original exception is only in the remote traceback text: the last exception line there that is
    not Ray's own is the cause (e.g. "StorageError: cannot write ...: No space left on device").
    """
    cause = root_cause(exc)
    if not type(cause).__module__.startswith("ray."):
        if isinstance(cause, StorageError):
            return scrub(f"{type(cause).__name__}: {' '.join(str(cause).split())}")[:600]
        return describe(cause)
    found = None
    for line in _ANSI.sub("", str(exc)).splitlines():
        m = _EXC_LINE.match(line.strip())
        if m and not m.group("type").startswith("ray."):
            found = f"{m.group('type').rsplit('.', 1)[-1]}: {m.group('msg')}"
    return scrub(found)[:600] if found else describe(cause)


def failure_message(exc: BaseException, output: str, committed_version: int | None = None) -> str:
    """What the build prints (stderr) when it stops after work started: the cause in one line, what
    state the dataset is in, and what to do. Never a credential."""
    state = (f"{scrub(output)} is unchanged at manifest v{committed_version:06d}" if committed_version
             else f"the versions of {scrub(output)} are untouched")
    return (f"groundv: build failed: {cause_text(exc)}\n"
            f"groundv: nothing was committed by this build; {state}. Fix the cause and re-run the same "
            f"command: batches already written are reused, not paid again.")
