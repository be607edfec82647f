"""One path guard for everything that turns a name read from a file into a path.

Manifests, shards, annotation files and sample rows are data, and data can be crafted: a shard path
`../../etc/passwd`, a `sample_id` of `../../x`, an `image_uri` naming a credentials file, a symlink
in the images folder pointing outside it. Every reader that joins such a name goes through here:

* `shard_uri`: a manifest's shard path must be a plain relative path under `data/` of the output;
* `verify_sha256`: a shard's bytes must hash to what its manifest says (read by the loaders);
* `inside`: an export file must land inside the export folder;
* `under_prefix`: a file an export copies or links must lie under its source's images prefix,
  and a local image must not be a symlink that resolves outside the prefix (`escapes_prefix`).
"""

from __future__ import annotations

import hashlib
import os
import re

from pipelines.storage import fs as storage

_SAFE_PART = re.compile(r"^[A-Za-z0-9_.=+-]+$")


class UnsafePath(ValueError):
    """A name read from data would reach outside where it belongs (or its bytes were altered)."""


def _plain_relative(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and "\\" not in rel and "\x00" not in rel and "://" not in rel and not rel.startswith("/") \
        and all(p not in ("", ".", "..") and _SAFE_PART.match(p) for p in parts)


def shard_uri(output: str, rel: str) -> str:
    """output/rel for a manifest's shard path; UnsafePath unless `rel` is plain and under data/."""
    if not (isinstance(rel, str) and rel.startswith("data/") and _plain_relative(rel)):
        raise UnsafePath(f"manifest shard path {rel!r} is not a plain path under data/ of {output}; "
                         "the manifest was edited or crafted: refusing to open it")
    return storage.join(output, rel)


def verify_sha256(data: bytes, expected: str, rel: str) -> bytes:
    """`data` if it hashes to `expected` (the manifest's sha256 of shard `rel`), else UnsafePath."""
    got = hashlib.sha256(data).hexdigest()
    if expected and got != expected:
        raise UnsafePath(f"shard {rel}: sha256 {got[:16]}... does not match the manifest's {expected[:16]}...; "
                         "the file was altered or replaced after the commit")
    return data


def safe_name(name: str, what: str) -> str:
    """A single file-name component from data (a sample id, a split or source name)."""
    if not (isinstance(name, str) and name not in (".", "..") and _SAFE_PART.match(name)):
        raise UnsafePath(f"{what} {name!r} is not a plain file name")
    return name


def inside(root: str, *parts: str) -> str:
    """root/parts..., after checking the result stays inside `root` (symlinks resolved)."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, *parts))
    if path != base and not path.startswith(base + os.sep):
        raise UnsafePath(f"{os.path.join(*parts)!r} would be written outside {root}")
    return os.path.join(base, *parts)


def escapes_prefix(prefix: str, uri: str) -> str | None:
    """Why a local file under `prefix` is refused (a symlink resolving outside it), or None.
    S3 has no symlinks; a file that does not exist is the reader's `missing_image`, not ours."""
    if storage.is_s3(uri) or storage.is_s3(prefix):
        return None
    real_prefix = os.path.realpath(prefix)
    real = os.path.realpath(uri)
    if real == real_prefix or real.startswith(real_prefix.rstrip(os.sep) + os.sep):
        return None
    return f"{uri} is a symlink to {real}, outside the images prefix {prefix}"


def under_prefix(uri: str, prefix: str) -> str:
    """`uri` if it lies under `prefix` (and, locally, resolves under it); else UnsafePath."""
    norm_uri, norm_prefix = storage.normalize_uri(uri), storage.normalize_uri(prefix).rstrip("/")
    if not norm_uri.startswith(norm_prefix + "/") or "/../" in norm_uri[len(norm_prefix):] + "/":
        raise UnsafePath(f"image {uri} is not under its source's images prefix {prefix}; refusing to copy it")
    why = escapes_prefix(norm_prefix, norm_uri)
    if why:
        raise UnsafePath(why)
    return norm_uri
