"""Pre-flight checks and failure messages: is every store reachable before Ray starts, does the
model exist, and what to print when a build fails (the cause under Ray's wrappers, no secrets).

Split from pipelines/storage/fs.py, which keeps the read / write / retry primitives.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Mapping

from pipelines.core.secrets import scrub
from pipelines.storage.fs import _TRANSIENT_CODES, StorageError, StorageSpec, _chain, describe, is_s3


def check_reachable(uri: str, store: StorageSpec, key: str, must_exist: bool = False) -> None:
    """Fail fast (seconds, before Ray starts) when `uri` cannot work: raises `StorageError` whose
    message names the config `key` and the fix.

    S3: one LIST (MaxKeys=1) with short timeouts checks endpoint, credentials, bucket and list
    permission. `must_exist`: the object / prefix must hold something. Local: `must_exist` paths
    must exist; an output path must not run into a file (`/a/file/out`).
    """
    if must_exist and any(c in uri for c in "*?["):
        # a glob (data.sources[].annotations): its fixed part must exist; the files are listed later
        uri = uri[:min(uri.index(c) for c in "*?[" if c in uri)]
        uri = uri if is_s3(uri) else os.path.dirname(uri) or "."
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


# ------------------------------------------------------------------------------------ model source
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
