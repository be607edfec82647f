"""The plan: work units (image x task), their generation keys, and the anti-join with what exists.

The key itself (inputs, salts, reasons, final vs transient errors) lives in pipelines/core/keys.py.
Images without annotations are no unit of any task (counted as `no_annotations`); an error the
key's inputs decide (bad annotation, missing or corrupt image) is reused until they change, a
transient one (teacher, storage) is retried by the next build.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pyarrow as pa

from pipelines.core.keys import (
    REASON_REMOVED,
    annotation_hash,
    generation_key,
    is_final_error,
    unit_row,
    why,
)
from schemas.columns import (
    IMAGE_WORK_SCHEMA,
    OUTCOME_ERROR,
    TASKS,
)

NO_ANNOTATIONS = "no_annotations"  # reader's image_error for an image without any annotation
FORMATS_WITH_PARTS = ("paco",)  # `part` is planned only for sources that can have parts


def applicable(image: Mapping[str, Any], task: str) -> bool:
    """Whether a task can be written for this image at all (else the unit is not planned)."""
    if image["image_error"]:
        # planned so the error is recorded for every task the image could have had
        return task != "part" or image["dataset_format"] in FORMATS_WITH_PARTS
    objs = [o for o in image["objects"] if not o["iscrowd"]]
    wholes = [o for o in objs if not o["is_part"]]
    parts = [o for o in objs if o["is_part"]]
    if task == "hallucination":
        return bool(wholes) or bool(image["absent_categories"])
    if task == "multi_object":
        return len(wholes) >= 2
    if task == "part":
        return bool(parts)
    return bool(wholes)


@dataclass
class TaskPlan:
    planned: int = 0
    reused: int = 0
    generate: int = 0
    dropped: int = 0
    not_applicable: int = 0
    refilter: int = 0  # reused units whose stored response is re-checked (filter version changed)
    generate_reasons: Counter = field(default_factory=Counter)
    drop_reasons: Counter = field(default_factory=Counter)


@dataclass
class Plan:
    work: pa.Table  # IMAGE_WORK_SCHEMA: images with >= 1 unit to generate
    reused_keys: set[str]
    reuse_from: dict[str, str]  # reused key -> the batch whose rows are carried
    refilter: list[dict[str, Any]]  # units to re-check from their stored response (UNIT fields, no image)
    tasks: dict[str, TaskPlan]
    units_total: int
    images_total: int
    images_excluded: int
    no_annotations: int = 0  # images without any annotation: no unit of any task

    @property
    def unchanged(self) -> bool:
        """Nothing to run and nothing dropped: the current version already is this build."""
        return self.units_to_run == 0 and not any(t.dropped for t in self.tasks.values())

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
    ledger_rows: Iterable[Mapping[str, Any]],
    images_excluded: int = 0,
    reuse_errors_from: set[str] | None = None,
    filter_version: str | None = None,
) -> Plan:
    """Key every applicable (image, task) unit and anti-join it against the existing ledger.

    `ledger_rows`: rows of the previous version's (and pending receipts') unit ledger with the key
    components and outcome. Units whose key is there with a non-error outcome are reused; errors are
    retried by the next build, except final ones (keys.is_final_error: decided by the key's inputs)
    and those written by this build (`reuse_errors_from` batches).
    A reusable unit checked under another `filter_version` is re-checked from its stored response
    (`refilter`): no image read, no teacher call. Rows come in batch order; the first batch that has
    a usable row for a key provides it (`reuse_from`).
    """
    own = reuse_errors_from or set()
    previous: dict[tuple[str, int, str], Mapping[str, Any]] = {}
    reuse_from: dict[str, str] = {}
    stale: dict[str, Mapping[str, Any]] = {}  # usable response, judged by other filter settings
    for r in ledger_rows:
        previous[(r["source"], int(r["image_id"]), r["task"])] = r
        if r["outcome"] == OUTCOME_ERROR and r.get("batch") not in own and not is_final_error(r.get("error_reason")):
            continue
        if filter_version is None or r.get("filter_version") == filter_version or r["outcome"] == OUTCOME_ERROR:
            reuse_from.setdefault(r["gen_key"], r["batch"])
        else:
            stale.setdefault(r["gen_key"], r)

    tasks = {t: TaskPlan() for t in TASKS}
    reused: set[str] = set()
    wanted: dict[tuple[str, int, str], str] = {}  # unit -> reason its previous rows are replaced
    work_rows: list[dict[str, Any]] = []
    refilter: list[dict[str, Any]] = []
    units_total = 0
    no_annotations = 0
    for image in images.to_pylist():
        if image["image_error"] == NO_ANNOTATIONS:
            no_annotations += 1
            continue
        ident = identities.get(image["image_uri"], "missing")
        ann = image.get("ann_hash") or annotation_hash(image)  # the index caches it
        units = []
        for task in source_tasks[image["source"]]:
            tp = tasks[task]
            if not applicable(image, task):
                tp.not_applicable += 1
                continue
            key = generation_key(ident, ann, task, prompt_hashes[task], teacher_hash)
            tp.planned += 1
            units_total += 1
            uid = (image["source"], int(image["image_id"]), task)
            reason = why(previous.get(uid), key, ident, ann, prompt_hashes[task], teacher_hash)
            wanted[uid] = reason
            if key in reuse_from:
                tp.reused += 1
                reused.add(key)
                continue
            if key in stale:
                tp.refilter += 1
                refilter.append(_unit_from_stale(image, stale[key]))
                continue
            tp.generate += 1
            tp.generate_reasons[reason] += 1
            units.append(
                {"gen_key": key, "task": task, "image_identity": ident, "ann_hash": ann,
                 "prompt_hash": prompt_hashes[task], "teacher_hash": teacher_hash}
            )
        if units:
            work_rows.append({**image, "units": units})

    rechecked = {u["gen_key"] for u in refilter}
    for uid, r in previous.items():
        if r["gen_key"] in reused or r["gen_key"] in rechecked:
            continue
        tp = tasks[r["task"]] if r["task"] in tasks else tasks.setdefault(r["task"], TaskPlan())
        tp.dropped += 1
        tp.drop_reasons[wanted.get(uid, REASON_REMOVED)] += 1

    work = pa.Table.from_pylist(work_rows, schema=IMAGE_WORK_SCHEMA)
    return Plan(work=work, reused_keys=reused, reuse_from={k: reuse_from[k] for k in reused},
                refilter=refilter, tasks=tasks, units_total=units_total,
                images_total=images.num_rows, images_excluded=images_excluded, no_annotations=no_annotations)


def _unit_from_stale(image: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """A unit row (no pixels) for re-checking a stored response; `batch` says where it is stored."""
    return {**unit_row(image, row), "batch": row["batch"]}


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
    for rows in groups.values():
        if current and len(current) + len(rows) > n:
            blocks.append(work.take(current))
            current = []
        current.extend(rows)
    blocks.append(work.take(current))
    return blocks
