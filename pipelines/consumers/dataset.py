"""Read one committed version of a Ground-V output: pyarrow, Ray Data or Hugging Face `datasets`.

    from pipelines.consumers.dataset import to_arrow_dataset, to_ray_dataset, to_hf_dataset
    table = to_arrow_dataset("output/groundv").to_table()             # latest version, samples
    ds = to_ray_dataset("s3://bucket/groundv", version=3, endpoint_url="http://127.0.0.1:9000")

A shard belongs to a version only when its manifest names it, so every reader here opens exactly the
manifest's shard paths and never lists `data/` (a shard of a crashed or still-running build may sit
there, uncommitted). Each path is opened through the same fsspec filesystem the builder writes with,
so local paths and `s3://` (with `endpoint_url` for S3-compatible servers) behave the same.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage import output as state
from pipelines.storage.fs import StorageSpec
from pipelines.storage.output import VersionNotFound  # noqa: F401 - part of the loader API
from schemas.columns import KIND_SAMPLES, KIND_SCHEMAS
from schemas.manifest import Manifest

if TYPE_CHECKING:  # heavy / optional imports, only for annotations
    import datasets
    import ray.data

# What to install for `to_hf_dataset`: the newest `datasets` that keeps this project's torch, numpy,
# pyarrow and fsspec pins untouched (it adds only multiprocess and xxhash).
HF_DATASETS_PIN = "datasets==5.2.0"


def normalize_output(output_uri: str) -> str:
    """Local outputs as absolute paths (what the builder records); s3:// unchanged."""
    return storage.normalize_uri(output_uri)


def load_manifest(output_uri: str, version: int | None = None, endpoint_url: str | None = None) -> Manifest:
    """The manifest of `version` (default: the latest committed one)."""
    return state.resolve_version(normalize_output(output_uri), version, StorageSpec(endpoint_url))


def shard_uris(manifest: Manifest, output_uri: str, kind: str = KIND_SAMPLES, task: str | None = None) -> list[str]:
    """Full uris of the manifest's shards of `kind` (and `task`), in manifest order."""
    if kind not in KIND_SCHEMAS:
        raise ValueError(f"unknown shard kind {kind!r}; expected one of {sorted(KIND_SCHEMAS)}")
    output = normalize_output(output_uri)
    return [guard.shard_uri(output, s.path) for s in manifest.shards_of(kind, task)]


def _open(output: str, endpoint_url: str | None) -> tuple[Any, StorageSpec]:
    store = StorageSpec(endpoint_url)
    fs, _ = storage.fs_and_path(output, store)
    return fs, store


def _fs_paths(uris: list[str], store: StorageSpec) -> list[str]:
    return [storage.fs_and_path(u, store)[1] for u in uris]


def _selected(output_uri: str, version: int | None, kind: str, task: str | None,
              endpoint_url: str | None) -> tuple[list[str], Any, StorageSpec]:
    output = normalize_output(output_uri)
    manifest = load_manifest(output, version, endpoint_url)
    fs, store = _open(output, endpoint_url)
    uris = shard_uris(manifest, output, kind, task)
    verify_shards(manifest, output, kind, task, store)
    return _fs_paths(uris, store), fs, store


def verify_shards(manifest: Manifest, output: str, kind: str, task: str | None, store: StorageSpec) -> None:
    """Each shard's bytes hash to the manifest's sha256 (one read per shard, in parallel): a shard
    altered or replaced after the commit is refused instead of read as the version's data."""
    def one(entry: Any) -> None:
        try:
            data = storage.read_bytes(guard.shard_uri(output, entry.path), store)
        except FileNotFoundError:
            raise VersionNotFound(f"version {manifest.version} names shard {entry.path}, which no longer exists "
                                  "(deleted by manifest.py gc --keep?); use a newer version") from None
        guard.verify_sha256(data, entry.sha256, entry.path)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, manifest.shards_of(kind, task)))


def to_arrow_dataset(output_uri: str, version: int | None = None, kind: str = KIND_SAMPLES,
                     endpoint_url: str | None = None, task: str | None = None) -> pads.Dataset:
    """A `pyarrow.dataset.Dataset` over exactly the shards one version names (lazy; filter/project freely).

    The schema is the kind's schema from schemas/columns.py, so a version without shards of that kind
    is an empty dataset with the right columns rather than an error.
    """
    paths, fs, _ = _selected(output_uri, version, kind, task, endpoint_url)
    schema = KIND_SCHEMAS[kind]
    if not paths:
        return pads.dataset(schema.empty_table())
    return pads.dataset(paths, schema=schema, format="parquet", filesystem=_arrow_filesystem(fs))


def _arrow_filesystem(fs: Any) -> pafs.FileSystem:
    # Local files: pyarrow's native filesystem. S3: wrapping the fsspec one keeps the project's
    # endpoint and retry settings (and s3fs pickles cleanly to Ray's read tasks).
    if isinstance(fs, pafs.FileSystem):
        return fs
    if "file" in fs.protocol or "local" in fs.protocol:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def to_ray_dataset(output_uri: str, version: int | None = None, kind: str = KIND_SAMPLES,
                   endpoint_url: str | None = None, task: str | None = None,
                   columns: list[str] | None = None, **read_kwargs: Any) -> ray.data.Dataset:
    """A Ray Dataset over exactly the shards one version names (`ray.data.read_parquet` on their paths).

    `read_kwargs` go to `ray.data.read_parquet` (e.g. `override_num_blocks`). Needs Ray initialised
    or initialisable (`ray.init()` is implicit, as everywhere in Ray Data).
    """
    import ray.data

    paths, fs, _ = _selected(output_uri, version, kind, task, endpoint_url)
    schema = KIND_SCHEMAS[kind]
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    if not paths:
        return ray.data.from_arrow(schema.empty_table())
    return ray.data.read_parquet(
        paths,
        filesystem=_arrow_filesystem(fs),
        columns=columns,
        # Shard paths are data/<kind>/<task>/<xx>/<sha>.parquet: no hive partitions to infer.
        partitioning=None,
        **read_kwargs,
    )


def to_hf_dataset(output_uri: str, version: int | None = None, kind: str = KIND_SAMPLES,
                  endpoint_url: str | None = None, task: str | None = None,
                  cache_dir: str | None = None, keep_in_memory: bool = False) -> datasets.Dataset:
    """A Hugging Face `datasets.Dataset` over one version's shards (memory-mapped in the `datasets` cache).

    `datasets` is optional (see HF_DATASETS_PIN): imported here, with a clear error when missing.
    Local shards go through `Dataset.from_parquet` on their paths. Shards in S3 are streamed through
    this module's pyarrow reader into `Dataset.from_generator` instead: `datasets` treats s3:// paths as
    hub downloads (refused under HF_HUB_OFFLINE) and would not use the project's endpoint settings.
    """
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"to_hf_dataset needs Hugging Face `datasets`: pip install '{HF_DATASETS_PIN}'"
        ) from exc

    output = normalize_output(output_uri)
    manifest = load_manifest(output, version, endpoint_url)
    shards = manifest.shards_of(kind, task)
    schema = KIND_SCHEMAS[kind]
    features = datasets.Features.from_arrow_schema(schema)
    if not shards:
        return datasets.Dataset.from_dict({name: [] for name in schema.names}, features=features)
    if not storage.is_s3(output):
        return datasets.Dataset.from_parquet(shard_uris(manifest, output, kind, task), features=features,
                                             cache_dir=cache_dir, keep_in_memory=keep_in_memory)
    # Shards are immutable and content-addressed: their hashes identify the rows (no generator hashing).
    fingerprint = hashlib.sha256(json.dumps([output, kind, sorted(s.sha256 for s in shards)]).encode()).hexdigest()
    return datasets.Dataset.from_generator(
        _rows, features=features, cache_dir=cache_dir, keep_in_memory=keep_in_memory, fingerprint=fingerprint,
        gen_kwargs={"output": output, "version": manifest.version, "kind": kind, "task": task,
                    "endpoint_url": endpoint_url},
    )


def _rows(output: str, version: int, kind: str, task: str | None, endpoint_url: str | None) -> Any:
    for batch in to_arrow_dataset(output, version, kind, endpoint_url, task).to_batches():
        yield from batch.to_pylist()
