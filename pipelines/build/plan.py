"""The plan: work units (image x task), their generation keys, and the anti-join with what exists.

The key itself (inputs, salts, reasons, final vs transient errors) lives in pipelines/core/keys.py.
Images without annotations are no unit of any task (counted as `no_annotations`); an error the
key's inputs decide (bad annotation, missing or corrupt image) is reused until they change, a
transient one (teacher, storage) is retried by the next build.

Columnar: applicability, keys and the anti-join work on Arrow columns (the annotation hash comes
with the cached index); no image becomes a Python dict except the few whose stored response is
re-checked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.keys import (
    COUNT_COLUMNS,
    IMAGE_UNIT_FIELDS,
    KEY_FIELDS,
    REASON_REMOVED,
    annotation_hash,
    final_error_mask,
    generation_key,
    object_counts,
    unit_row,
    why_column,
)
from schemas.columns import IMAGE_SCHEMA, IMAGE_WORK_SCHEMA, OUTCOME_ERROR, PLANNED_UNIT_TYPE, TASKS

NO_ANNOTATIONS = "no_annotations"  # reader's image_error for an image without any annotation
FORMATS_WITH_PARTS = ("paco",)  # `part` is planned only for sources that can have parts
UID = ["source", "image_id", "task"]
KEY_COMPONENTS = ["image_identity", "ann_hash", "prompt_hash", "teacher_hash"]
_KEEP_NULLS = pc.ScalarAggregateOptions(skip_nulls=False)  # "first" must be the first row's value, null too


def _bool(arr: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def applicable_masks(images: pa.Table) -> dict[str, np.ndarray]:
    """Per task, which images it can be written for (else the unit is not planned), from columns.

    An image in error is planned for every task it could have had (so the error is recorded), but
    never `part` unless its source format has parts; an image without annotations for none.
    """
    if all(c in images.column_names for c in COUNT_COLUMNS):  # cached with the index
        counts = {c: np.asarray(pc.fill_null(images.column(c), 0), dtype=np.int64) for c in COUNT_COLUMNS}
    else:
        counts = object_counts(images)
    n_whole, n_part, n_absent = counts["n_whole"], counts["n_part"], counts["n_absent"]
    err = _bool(pc.is_valid(images.column("image_error")))
    empty = _bool(pc.equal(images.column("image_error"), NO_ANNOTATIONS))
    with_parts = _bool(pc.is_in(images.column("dataset_format"), value_set=pa.array(FORMATS_WITH_PARTS)))
    ok = {
        "hallucination": (n_whole > 0) | (n_absent > 0),
        "multi_object": n_whole >= 2,
        "part": n_part > 0,
    }
    out = {}
    for task in TASKS:
        rule = ok.get(task, n_whole > 0)
        out[task] = np.where(err, task != "part" or with_parts, rule) & ~empty
    return out


@dataclass
class TaskPlan:
    planned: int = 0
    reused: int = 0
    generate: int = 0
    dropped: int = 0
    not_applicable: int = 0
    refilter: int = 0  # reused units whose stored response is re-checked (filter version changed)
    relocated: int = 0  # reused units whose image moved: rows carried with the new image_uri
    generate_reasons: Counter = field(default_factory=Counter)
    drop_reasons: Counter = field(default_factory=Counter)


@dataclass
class Plan:
    images: pa.Table  # the source index the plan was made from (Arrow, shared, not copied)
    gen: pa.Table  # the units to generate: image row `idx`, `task_rank`, PLANNED_UNIT_TYPE fields
    reused_keys: set[str]
    reuse_from: dict[str, str]  # reused key -> the batch whose rows are carried
    refilter: list[dict[str, Any]]  # units to re-check from their stored response (UNIT fields, no image)
    tasks: dict[str, TaskPlan]
    units_total: int
    images_total: int
    images_excluded: int
    no_annotations: int = 0  # images without any annotation: no unit of any task
    # reused unit -> the image's current uri, for units whose stored rows name another location (the
    # images folder was moved or copied: same identity, new path); the commit rewrites that column
    relocate: dict[str, str | None] = field(default_factory=dict)
    images_moved: int = 0  # distinct images behind `relocate` whose stored location was recorded
    locations_unrecorded: int = 0  # relocated units from ledgers written before image_uri was stored

    @property
    def work(self) -> pa.Table:
        """IMAGE_WORK_SCHEMA: each image with >= 1 unit to generate (built on demand: a dry run
        never copies the images)."""
        return _work(self.images, self.gen)

    def iter_work(self, images_per_slice: int) -> Iterator[pa.Table]:
        """`work` in slices of at most `images_per_slice` images, never all of it at once."""
        gen = self.gen.take(pc.sort_indices(self.gen, [("idx", "ascending"), ("task_rank", "ascending")]))
        idx = gen.column("idx").to_numpy()
        uniq, starts = np.unique(idx, return_index=True)
        step = max(1, images_per_slice)
        for i in range(0, len(uniq), step):
            lo = starts[i]
            hi = starts[i + step] if i + step < len(uniq) else len(idx)
            yield _work(self.images, gen.slice(lo, hi - lo))

    @property
    def unchanged(self) -> bool:
        """Nothing to run, nothing dropped, no image moved: the current version already is this
        build. (A move runs no unit but changes the version's rows: their image_uri.)"""
        return self.units_to_run == 0 and not any(t.dropped for t in self.tasks.values()) and not self.relocate

    @property
    def units_to_generate(self) -> int:
        return sum(t.generate for t in self.tasks.values())

    @property
    def units_to_run(self) -> int:
        """Units the stream must process: generated ones and stored responses to re-check."""
        return self.units_to_generate + len(self.refilter)


def make_plan(
    images: pa.Table,
    source_tasks: Mapping[str, list[str]],
    identities: Mapping[str, str],
    prompt_hashes: Mapping[str, str],
    teacher_hash: str,
    ledger: pa.Table,
    images_excluded: int = 0,
    reuse_errors_from: set[str] | None = None,
    filter_version: str | None = None,
) -> Plan:
    """Key every applicable (image, task) unit and anti-join it against the existing ledger.

    `ledger`: the previous version's (and pending receipts') unit ledger (LEDGER_COLUMNS + batch),
    in batch order. Units whose key is there with a non-error outcome are reused; errors are
    retried by the next build, except final ones (keys.is_final_error: decided by the key's inputs)
    and those written by this build (`reuse_errors_from` batches).
    A reusable unit checked under another `filter_version` is re-checked from its stored response
    (`refilter`): no image read, no teacher call. The first batch that has a usable row for a key
    provides it (`reuse_from`).
    """
    if "ann_hash" not in images.column_names:  # an index without the cached hash
        images = images.append_column("ann_hash", pa.array([annotation_hash(r) for r in images.to_pylist()],
                                                            pa.string()))
    tasks = {t: TaskPlan() for t in TASKS}
    units = _units(images, source_tasks, identities, prompt_hashes, teacher_hash, tasks)
    fresh, stale, previous = _ledger_views(ledger, reuse_errors_from or set(), filter_version)
    units = units.join(fresh, "gen_key", join_type="left outer")
    units = units.join(stale, "gen_key", join_type="left outer")
    units = units.join(previous, UID, join_type="left outer")
    units = units.append_column("reason", why_column(units))
    reused = _bool(pc.is_valid(units.column("reuse_batch")))
    refilter_mask = ~reused & _bool(pc.is_valid(units.column("stale_batch")))
    generate = ~reused & ~refilter_mask
    _count(tasks, units, reused, refilter_mask, generate)
    reused_t = units.filter(pa.array(reused))
    reuse_from = dict(zip(reused_t.column("gen_key").to_pylist(), reused_t.column("reuse_batch").to_pylist(),
                          strict=True))
    relocate, moved, unrecorded = _relocations(reused_t, tasks)
    refilter = _refilter_rows(images, units.filter(pa.array(refilter_mask)))
    kept = set(reuse_from) | {u["gen_key"] for u in refilter}
    _count_dropped(tasks, previous, units, kept)
    gen = units.filter(pa.array(generate)).select(["idx", "task_rank", *[f.name for f in PLANNED_UNIT_TYPE]])
    return Plan(images=images, gen=gen, reused_keys=set(reuse_from),
                reuse_from=reuse_from, refilter=refilter, tasks=tasks, units_total=units.num_rows,
                images_total=images.num_rows, images_excluded=images_excluded,
                no_annotations=int(_bool(pc.equal(images.column("image_error"), NO_ANNOTATIONS)).sum()),
                relocate=relocate, images_moved=moved, locations_unrecorded=unrecorded)


def _relocations(reused: pa.Table, tasks: dict[str, TaskPlan]) -> tuple[dict[str, str | None], int, int]:
    """Reused units whose carried rows name another image location than the source's current one
    (the identity has no path, so a moved folder keeps every key): gen_key -> current uri, the
    number of distinct images moved, and the units whose ledger predates the image_uri column."""
    cur = np.asarray(reused.column("image_uri").to_numpy(zero_copy_only=False), dtype=object)
    old = np.asarray(reused.column("reuse_image_uri").to_numpy(zero_copy_only=False), dtype=object)
    differs = cur != old  # elementwise on objects: None == None, so an unchanged null is no move
    if not differs.any():
        return {}, 0, 0
    keys = np.asarray(reused.column("gen_key").to_numpy(zero_copy_only=False), dtype=object)[differs]
    task_col = np.asarray(reused.column("task").to_numpy(zero_copy_only=False), dtype=object)[differs]
    for t, n in Counter(task_col.tolist()).items():
        tasks[t].relocated = n
    recorded = np.array([o is not None for o in old[differs]], dtype=bool)
    uids = reused.filter(pa.array(differs)).select(["source", "image_id"]).filter(pa.array(recorded))
    moved = len(set(zip(uids.column("source").to_pylist(), uids.column("image_id").to_pylist(), strict=True)))
    return dict(zip(keys.tolist(), cur[differs].tolist(), strict=True)), moved, int((~recorded).sum())


def _units(images: pa.Table, source_tasks: Mapping[str, list[str]], identities: Mapping[str, str],
           prompt_hashes: Mapping[str, str], teacher_hash: str, tasks: dict[str, TaskPlan]) -> pa.Table:
    """One row per planned unit: image row index, uid, key inputs and generation key."""
    idents = [identities.get(u, "missing") for u in images.column("image_uri").to_pylist()]
    anns = images.column("ann_hash").to_pylist()
    empty = _bool(pc.equal(images.column("image_error"), NO_ANNOTATIONS))
    masks = applicable_masks(images)
    parts = []
    for rank, task in enumerate(TASKS):
        has = _bool(pc.is_in(images.column("source"),
                             value_set=pa.array([s for s, ts in source_tasks.items() if task in ts], pa.string())))
        tasks[task].not_applicable = int((has & ~empty & ~masks[task]).sum())
        idx = np.flatnonzero(has & masks[task])
        ph = prompt_hashes.get(task, "")
        keys = [generation_key(idents[i], anns[i], task, ph, teacher_hash) for i in idx]
        parts.append(pa.table({
            "idx": pa.array(idx, pa.int64()), "task_rank": pa.array(np.full(len(idx), rank), pa.int32()),
            "source": images.column("source").take(idx), "image_id": images.column("image_id").take(idx),
            "task": pa.array([task] * len(idx), pa.string()), "gen_key": pa.array(keys, pa.string()),
            "image_uri": images.column("image_uri").take(idx),
            "image_identity": pa.array([idents[i] for i in idx], pa.string()),
            "ann_hash": pa.array([anns[i] for i in idx], pa.string()),
            "prompt_hash": pa.array([ph] * len(idx), pa.string()),
            "teacher_hash": pa.array([teacher_hash] * len(idx), pa.string()),
        }))
    return pa.concat_tables(parts)


def _ledger_views(ledger: pa.Table, own: set[str], filter_version: str | None
                  ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(gen_key -> reuse_batch), (gen_key -> stale_batch), (uid -> prev_* of the last row)."""
    is_err = _bool(pc.equal(ledger.column("outcome"), OUTCOME_ERROR))
    mine = _bool(pc.is_in(ledger.column("batch"), value_set=pa.array(sorted(own), pa.string())))
    usable = ~is_err | mine | final_error_mask(ledger.column("error_reason"))
    if filter_version is None:
        same_filters = np.ones(ledger.num_rows, dtype=bool)
    else:
        same_filters = _bool(pc.equal(ledger.column("filter_version"), filter_version)) | is_err
    # the first usable row per key: its batch provides the unit's rows, its image_uri says where
    # those rows locate the image
    fresh = (ledger.filter(pa.array(usable & same_filters)).select(["gen_key", "batch", "image_uri"])
             .group_by("gen_key", use_threads=False)
             .aggregate([("batch", "first"), ("image_uri", "first", _KEEP_NULLS)])
             .rename_columns(["gen_key", "reuse_batch", "reuse_image_uri"]))
    stale = (ledger.filter(pa.array(usable & ~same_filters)).select(["gen_key", "batch"])
             .group_by("gen_key", use_threads=False).aggregate([("batch", "first")])
             .rename_columns(["gen_key", "stale_batch"]))
    prev = (ledger.select([*UID, "gen_key", *KEY_COMPONENTS]).group_by(UID, use_threads=False)
            .aggregate([(c, "last") for c in ["gen_key", *KEY_COMPONENTS]]))
    prev = prev.rename_columns([*UID, *[f"prev_{c}" for c in ["gen_key", *KEY_COMPONENTS]]])
    return fresh, stale, prev


def _count(tasks: dict[str, TaskPlan], units: pa.Table, reused: np.ndarray, refilter: np.ndarray,
           generate: np.ndarray) -> None:
    task_col = np.asarray(units.column("task").to_numpy(zero_copy_only=False), dtype=object)
    reasons = np.asarray(units.column("reason").to_numpy(zero_copy_only=False), dtype=object)
    for t, tp in tasks.items():
        mine = task_col == t
        tp.planned = int(mine.sum())
        tp.reused = int((mine & reused).sum())
        tp.refilter = int((mine & refilter).sum())
        tp.generate = int((mine & generate).sum())
        tp.generate_reasons = Counter(reasons[mine & generate].tolist())


def _count_dropped(tasks: dict[str, TaskPlan], previous: pa.Table, units: pa.Table, kept: set[str]) -> None:
    """Previous units (last row per uid) not reused or re-checked, with the reason of the unit that
    replaces them (or `unit no longer planned`)."""
    gone = previous.filter(pc.invert(pc.is_in(previous.column("prev_gen_key"),
                                              value_set=pa.array(sorted(kept), pa.string()))))
    gone = gone.select(UID).join(units.select([*UID, "reason"]), UID, join_type="left outer")
    for task, reason in zip(gone.column("task").to_pylist(), gone.column("reason").to_pylist(), strict=True):
        tp = tasks.setdefault(task, TaskPlan())
        tp.dropped += 1
        tp.drop_reasons[reason or REASON_REMOVED] += 1


def _refilter_rows(images: pa.Table, stale: pa.Table) -> list[dict[str, Any]]:
    """Unit rows (no pixels) for re-checking stored responses; `batch` says where each is stored."""
    if not stale.num_rows:
        return []
    if "objects" not in images.column_names:  # a counts-only plan (--dry-run): keys and batches
        return [{"gen_key": k, "batch": b} for k, b in zip(stale.column("gen_key").to_pylist(),
                                                            stale.column("stale_batch").to_pylist(), strict=True)]
    imgs = images.take(stale.column("idx")).select(list(IMAGE_UNIT_FIELDS)).to_pylist()
    keys = stale.select(list(KEY_FIELDS)).to_pylist()
    return [{**unit_row(i, k), "batch": b}
            for i, k, b in zip(imgs, keys, stale.column("stale_batch").to_pylist(), strict=True)]


def _work(images: pa.Table, gen: pa.Table) -> pa.Table:
    """IMAGE_WORK_SCHEMA: each image with >= 1 unit to generate, its units nested in task order."""
    if not gen.num_rows:
        return IMAGE_WORK_SCHEMA.empty_table()
    gen = gen.take(pc.sort_indices(gen, [("idx", "ascending"), ("task_rank", "ascending")]))
    idx = gen.column("idx").to_numpy()
    uniq, starts = np.unique(idx, return_index=True)
    offsets = pa.array(np.append(starts, len(idx)), pa.int32())
    structs = pa.StructArray.from_arrays([gen.column(f.name).combine_chunks() for f in PLANNED_UNIT_TYPE],
                                         fields=list(PLANNED_UNIT_TYPE))
    base = images.take(pa.array(uniq)).select(IMAGE_SCHEMA.names)
    return base.append_column("units", pa.ListArray.from_arrays(offsets, structs)).cast(IMAGE_WORK_SCHEMA)


def split_for_stream(work: pa.Table, rows_per_block: int) -> list[pa.Table]:
    """Blocks for Ray Data: ~`rows_per_block` images each, so read tasks run in parallel.

    All records of one image (same image identity: e.g. its COCO and its LVIS record) go into the
    same block, next to each other: the teacher sends identical requests once per block
    (teachers/requests.py), so duplicates split over two blocks would be paid twice.
    """
    n = max(1, rows_per_block)
    if work.num_rows == 0:
        return [work]
    if "units" not in work.column_names:  # unit rows (the re-check stream): plain slices
        return [work.slice(i, n) for i in range(0, work.num_rows, n)]
    idents = [units[0]["image_identity"] if units else None
              for units in work.column("units").to_pylist()]
    groups: dict[Any, list[int]] = {}
    for i, ident in enumerate(idents):
        groups.setdefault(ident if ident not in (None, "missing") else ("row", i), []).append(i)
    blocks: list[pa.Table] = []
    current: list[int] = []
    # A group larger than a block (different files with the same size + mtime, or one image many
    # times) is cut into blocks: the identity has no path, so it is not proof of the same bytes.
    pieces = [rows[i:i + n] for rows in groups.values() for i in range(0, len(rows), n)]
    for rows in pieces:
        if current and len(current) + len(rows) > n:
            blocks.append(work.take(current))
            current = []
        current.extend(rows)
    blocks.append(work.take(current))
    return blocks
