"""Sources for a build: the configured ones (or the embedded sample), their image records, the
leakage guard (exclude_image_ids), the limit, and each image's content identity from a listing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipelines.core.keys import COUNT_COLUMNS, annotation_hash, image_identity, object_counts
from pipelines.sources.annotation_files import check_unique_ids, expand_annotations, parse_all
from pipelines.sources.cached_objects import OBJECTS, CachedObjects
from pipelines.sources.readers import AnnotationFileError, is_record_file, read_source
from pipelines.sources.sample_data import ensure_sample_dataset
from pipelines.storage import fs as storage
from pipelines.storage.fs import StorageSpec
from schemas.columns import IMAGE_SCHEMA


@dataclass
class SourceSpec:
    name: str
    format: str
    annotations: str
    images: str
    tasks: list[str]
    categories: str | None = None  # the categories JSON of a source given as per-image records


def _abs(uri: str) -> str:
    return storage.normalize_uri(uri)


def resolve_sources(cfg: Any) -> list[SourceSpec]:
    """The configured sources, or the sample dataset (generated once) when none are configured."""
    tasks = list(cfg.tasks)
    if not cfg.data.sources:
        s = cfg.data.sample
        made = ensure_sample_dataset(os.path.abspath(s.dir), num_images=s.num_images, seed=s.seed)
        return [SourceSpec(m["name"], m["format"], _abs(m["annotations"]), _abs(m["images"]),
                           [t for t in tasks if t in _sample_tasks(m["format"])]) for m in made]
    out = []
    for src in cfg.data.sources:
        fmt = src.format
        want = list(src.tasks) if src.tasks else tasks
        cats = getattr(src, "categories", None)  # absent in the config of an older manifest
        out.append(SourceSpec(src.name, fmt, _abs(src.annotations), _abs(src.images),
                              [t for t in tasks if t in want], _abs(cats) if cats else None))
    return out


def _sample_tasks(fmt: str) -> tuple[str, ...]:
    # PACO-style sources carry the parts; the sample's COCO/LVIS sources cover the other tasks.
    if fmt == "paco":
        return ("part", "multi_granularity")
    return ("hallucination", "multi_object", "reasoning", "multi_granularity")


def load_exclusions(value: Any, store: StorageSpec) -> set[int]:
    """exclude_image_ids: a list of ids, or the uri of a file (JSON list or one id per line)."""
    if isinstance(value, str):
        text = storage.read_bytes(_abs(value), store).decode()
        try:
            ids = json.loads(text)
        except ValueError:
            ids = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return {int(i) for i in ids}
    return {int(i) for i in (value or [])}


# the cached index: image records + what the plan needs, computed once when the source is indexed
INDEX_SCHEMA = pa.schema([*IMAGE_SCHEMA, ("ann_hash", pa.string()), *[(c, pa.int32()) for c in COUNT_COLUMNS]])
# The index in memory: `absent_categories` (COCO: every category not in the image, ~75 names per
# image) as dictionary-encoded names: 4 bytes per name instead of the string (~95 MB -> ~35 MB at
# COCO train2017). Same values for every reader (to_pylist, list lengths, the cast to the stream's
# IMAGE_WORK_SCHEMA); the file keeps plain strings (Parquet dictionary-encodes them on disk anyway).
COMPACT_NAMES = pa.list_(pa.dictionary(pa.int32(), pa.string()))
INDEX_MEMORY_SCHEMA = pa.schema([INDEX_SCHEMA.field(c).with_type(COMPACT_NAMES) if c == "absent_categories"
                                 else INDEX_SCHEMA.field(c) for c in INDEX_SCHEMA.names])
# the columns a plan without a stream (--dry-run) reads: no objects, no category lists
PLAN_COLUMNS = ["source", "dataset_format", "image_id", "image_uri", "image_error", "ann_hash", *COUNT_COLUMNS]


def with_ann_hash(t: pa.Table) -> pa.Table:
    """IMAGE_SCHEMA rows + their annotation hash, computed once when the source is indexed (and
    cached with the index) instead of per image on every plan pass."""
    t = t.select(IMAGE_SCHEMA.names).cast(IMAGE_SCHEMA)
    hashes = [annotation_hash(r) for r in t.to_pylist()]
    t = t.append_column("ann_hash", pa.array(hashes, pa.string()))
    for name, values in object_counts(t).items():
        t = t.append_column(name, pa.array(values, pa.int32()))
    return t


class Identities(Mapping[str, str]):
    """image_uri -> content identity, held as two Arrow string arrays (no Python str per image).
    `arrays()` is what the plan uses (a vectorised lookup); item access builds a dict on first use."""

    def __init__(self, uris: pa.Array, values: pa.Array) -> None:
        self._uris, self._values = uris, values
        self._dict: dict[str, str] | None = None

    def arrays(self) -> tuple[pa.Array, pa.Array]:
        return self._uris, self._values

    def _as_dict(self) -> dict[str, str]:
        if self._dict is None:
            self._dict = dict(zip(self._uris.to_pylist(), self._values.to_pylist(), strict=True))
        return self._dict

    def __getitem__(self, uri: str) -> str:
        return self._as_dict()[uri]

    def __iter__(self) -> Iterator[str]:
        return iter(self._uris.to_pylist())

    def __len__(self) -> int:
        return len(self._uris)


@dataclass
class SourceImages:
    images: pa.Table  # INDEX_MEMORY_SCHEMA: IMAGE_SCHEMA + ann_hash + counts (compact category names)
    excluded: int
    identities: Identities  # image_uri -> content identity
    objects: CachedObjects | None = None  # where `images` refers to its objects (objects_by_reference)


def _reader_code_hash() -> str:
    """Hash of the reader modules: a reader change invalidates every cached index."""
    import pipelines.sources.readers as readers_pkg

    folder = os.path.dirname(os.path.abspath(readers_pkg.__file__))
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as fh:
                h.update(name.encode() + fh.read())
    return h.hexdigest()


def read_source_cached(src: SourceSpec, store: StorageSpec, cache: str | None, write_cache: bool = True,
                       columns: list[str] | None = None, objects: CachedObjects | None = None) -> pa.Table:
    """`read_source` of each annotation file of `src` (one, a glob or a folder: annotation_files.py),
    memoised per file under <output>/cache/index/ by that file's identity, concatenated in file order.

    Parsing COCO train2017 (860K annotations, polygons -> RLE) takes tens of seconds; a rebuild with
    an unchanged annotation file reads the cached per-image table instead. The key covers the file's
    listing identity (ETag + size, or size + mtime), the source's name/format/images prefix and the
    reader code, so a changed file or reader never hits a stale entry. The files to (re)parse are
    parsed in parallel (Ray tasks) when there are several; the task that parses a file writes its
    cache. None: no cache; `write_cache=False` (dry runs, which write nothing) reads a cached index
    but never writes one. `columns`: only these (INDEX_SCHEMA order), read by projection from a
    cached index. `objects`: the objects stay in the cached files and the table refers to them
    (cached_objects.py); neither the parsed nor the cached objects reach this process.
    """
    schema = _memory_schema(columns)
    by_ref = objects is not None and OBJECTS in schema.names
    read_schema = pa.schema([f for f in schema if f.name != OBJECTS]) if by_ref else schema
    files = source_files(src, store)
    uris = [_file_cache_uri(src, f, store, cache) for f in files]
    tables: list[pa.Table | None] = [_read_cached_index(u, store, read_schema) for u in uris]
    todo = [i for i, t in enumerate(tables) if t is None]
    jobs = [(src.name, src.format, files[i], src.images, store.options_for(files[i]), store.retries,
             uris[i] if write_cache else None, store, by_ref, src.categories) for i in todo]
    for i, t in zip(todo, parse_all(_index_file, jobs), strict=True):
        tables[i] = t.select(read_schema.names if OBJECTS not in t.column_names else schema.names)
    INDEX_COUNTERS["files_parsed"] += len(todo)
    INDEX_COUNTERS["files_cached"] += len(files) - len(todo)
    check_unique_ids(tables, files, src.name)
    if by_ref:
        tables = [objects.refer(t.cast(schema if OBJECTS in t.column_names else read_schema), u)
                  for t, u in zip(tables, uris, strict=True)]
    else:
        tables = [t.cast(schema) for t in tables]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


# Files parsed vs read from the cache since the process started (the plan prints them).
INDEX_COUNTERS = {"files_parsed": 0, "files_cached": 0}


def source_files(src: SourceSpec, store: StorageSpec) -> list[str]:
    """The annotation files of `src`; per-image record files need the source's categories file."""
    files = expand_annotations(src.annotations, store)
    records = [f for f in files if is_record_file(f)]
    if src.categories is None and records:
        raise AnnotationFileError(
            f"source {src.name!r}: its annotations are per-image records ({records[0]}); "
            "set data.sources[].categories to a JSON file with the COCO 'categories' (and PACO 'attributes')")
    return files


def _index_file(name: str, fmt: str, file: str, images: str, options: dict[str, Any], retries: int,
                cache_uri: str | None = None, store: StorageSpec | None = None, drop_objects: bool = False,
                categories: str | None = None) -> pa.Table:
    """One annotation file -> its INDEX_SCHEMA table, cached at `cache_uri` (runs in a Ray task when
    files are parsed in parallel). `drop_objects`: once cached, return it without its objects
    (the caller refers to them in the cache); kept when the cache could not be written.
    `categories`: the source's categories file (record files only)."""
    cat_options = (store or StorageSpec()).options_for(categories) if categories else None
    t = with_ann_hash(read_source(name, fmt, file, images, options, retries=retries,
                                  categories_uri=categories, categories_options=cat_options))
    written = cache_uri is not None and store is not None and _write_cached_index(cache_uri, t, store)
    return t.drop_columns([OBJECTS]) if drop_objects and written else t


def _read_cached_index(uri: str | None, store: StorageSpec, schema: pa.Schema) -> pa.Table | None:
    if uri is None:
        return None
    try:
        fs, path = storage.fs_and_path(uri, store)
        return storage.with_retries(lambda: pq.read_table(path, filesystem=fs, columns=schema.names,
                                                          read_dictionary=["absent_categories.list.element"]),
                                    store, f"read {uri}").cast(schema)
    except (FileNotFoundError, OSError, pa.ArrowInvalid, KeyError):
        return None


def _write_cached_index(uri: str, t: pa.Table, store: StorageSpec) -> bool:
    buf = io.BytesIO()
    # small row groups: a reader of a few images (preview) prunes by image_id statistics, and the
    # work list reads the objects of a block's images without the whole file
    pq.write_table(t, buf, compression="zstd", row_group_size=INDEX_ROW_GROUP)
    try:
        storage.write_bytes(uri, buf.getvalue(), store)
    except OSError:
        return False  # a cache is an optimisation: never fail a build over it
    return True


def uncached_files(src: SourceSpec, store: StorageSpec, cache: str | None) -> int:
    """How many annotation files of `src` have no cached index yet (the build starts Ray for >1)."""
    return sum(1 for f in source_files(src, store)
               if (u := _file_cache_uri(src, f, store, cache)) is None or not _exists(u, store))


def _exists(uri: str, store: StorageSpec) -> bool:
    fs, path = storage.fs_and_path(uri, store)
    return bool(storage.with_retries(lambda: fs.exists(path), store, f"stat {uri}"))


def _memory_schema(columns: list[str] | None) -> pa.Schema:
    """INDEX_MEMORY_SCHEMA, or only `columns` of it."""
    return pa.schema([INDEX_MEMORY_SCHEMA.field(c) for c in columns]) if columns else INDEX_MEMORY_SCHEMA


INDEX_ROW_GROUP = 2048


def index_cache_uri(src: SourceSpec, store: StorageSpec, cache: str | None) -> str | None:
    """Where the cached index of a single-file `src` lives (whether or not it exists yet); None
    without a cache or an annotation file. A source of several files has one per file."""
    return _file_cache_uri(src, src.annotations, store, cache)


def _file_cache_uri(src: SourceSpec, file: str, store: StorageSpec, cache: str | None) -> str | None:
    """The cache key of one annotation file: the source (name, format, images) + this file's uri and
    listing identity + the reader code. For a single-file source it is the key it always had. A
    source with a categories file (per-image records) adds that file's uri and identity: an edited
    categories file re-indexes every record file of the source."""
    if not cache:
        return None
    info = _info(file, store)
    if info is None:
        return None
    fields: dict[str, Any] = {"v": 3, "src": [src.name, src.format, file, src.images],
                              "file": image_identity(info), "code": _reader_code_hash()}
    if src.categories is not None and is_record_file(file):
        cats = _info(src.categories, store)
        if cats is None:
            return None  # the parse reports the missing file
        fields["categories"] = [src.categories, image_identity(cats)]
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return storage.join(cache, f"{key}.parquet")


def _info(uri: str, store: StorageSpec) -> dict[str, Any] | None:
    fs, path = storage.fs_and_path(uri, store)
    try:
        return storage.with_retries(lambda: fs.info(path), store, f"stat {uri}")
    except FileNotFoundError:
        return None


def read_cached_images(src: SourceSpec, store: StorageSpec, cache: str | None, image_ids: list[int]
                       ) -> pa.Table | None:
    """Only these images' rows of the cached index (row groups pruned by image_id); None when a
    file of the source has no cached index."""
    parts = []
    for file in source_files(src, store):
        uri = _file_cache_uri(src, file, store, cache)
        if uri is None:
            return None
        fs, path = storage.fs_and_path(uri, store)
        try:
            parts.append(pq.read_table(path, filesystem=fs, filters=[("image_id", "in", sorted(set(image_ids)))]))
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return None
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def load_images(sources: list[SourceSpec], exclude: set[int], limit: int | None,
                store: StorageSpec, cache: str | None = None, write_cache: bool = True,
                columns: list[str] | None = None, objects_by_reference: bool = False) -> SourceImages:
    """The sources' index rows (exclusions dropped, `limit` kept) and their images' identities.
    `objects_by_reference`: the objects stay in the cached index (SourceImages.objects)."""
    tables = []
    excluded = 0
    objects = CachedObjects(store) if objects_by_reference else None
    for src in sources:
        t = read_source_cached(src, store, cache, write_cache, columns, objects)
        if exclude:
            keep = pc.invert(pc.is_in(t.column("image_id"), value_set=pa.array(sorted(exclude), pa.int64())))
            excluded += t.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
            t = t.filter(keep)
        tables.append(t)
    images = pa.concat_tables(tables) if tables else _memory_schema(columns).empty_table()
    if limit is not None:
        images = images.slice(0, limit)
    uris, values = [], []
    for src in sources:
        wanted = images.filter(pc.equal(images.column("source"), src.name)).column("image_uri")
        u, v = list_identities(src.images, store)
        keep = pc.is_in(u, value_set=wanted.combine_chunks() if isinstance(wanted, pa.ChunkedArray) else wanted)
        uris.append(u.filter(keep))
        values.append(v.filter(keep))
    cat = lambda parts: pa.concat_arrays(parts) if parts else pa.array([], pa.string())  # noqa: E731
    return SourceImages(images=images, excluded=excluded, identities=Identities(cat(uris), cat(values)),
                        objects=objects)


def list_identities(prefix: str, store: StorageSpec, chunk: int = 100_000) -> tuple[pa.Array, pa.Array]:
    """(uris, content identities) of every file under `prefix`, one listing pass. Local folders are
    walked entry by entry (fsspec's `find` would hold a ~1 KB info dict per file: ~2 GB at 2M
    images); what is listed and the identity are exactly `storage.list_files`'s (tested)."""
    fs, path = storage.fs_and_path(prefix, store)
    uris: list[pa.Array] = []
    values: list[pa.Array] = []
    u: list[str] = []
    v: list[str] = []
    if isinstance(fs, LocalFileSystem):
        entries = _walk_local(fs, path) if os.path.isdir(path) else iter(())
    else:
        entries = iter(storage.list_files(prefix, store).items())
    for uri, info in entries:
        u.append(uri)
        v.append(image_identity(info))
        if len(u) >= chunk:
            uris.append(pa.array(u, pa.string()))
            values.append(pa.array(v, pa.string()))
            u, v = [], []
    uris.append(pa.array(u, pa.string()))
    values.append(pa.array(v, pa.string()))
    return pa.concat_arrays(uris), pa.concat_arrays(values)


def _walk_local(fs: LocalFileSystem, root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Regular files under `root` as fsspec's local `find` lists them: no symlinked file or folder
    followed, names normalised by fsspec, size and mtime of the entry itself."""
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    yield fs._strip_protocol(e.path), {"size": st.st_size, "mtime": st.st_mtime}
