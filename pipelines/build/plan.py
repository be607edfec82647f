"""The plan: work units (image x task), their generation keys, and the anti-join with what exists.

A generation key is sha256 over a canonical JSON of everything that changes a teacher's answer:
image content identity, the annotations the unit shows and is checked against, task, prompt
content hash, teacher identity and the prompt-building code version. Filter settings are not in
it: a filter change re-checks stored raw responses instead (see docs/incremental.md).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pyarrow as pa

from schemas.columns import (
    IMAGE_WORK_SCHEMA,
    OUTCOME_ERROR,
    TASKS,
)
from teachers.base import PROMPT_CODE_VERSION

KEY_VERSION = 1

# Why a unit is (re)generated or dropped; printed by --dry-run and counted in the manifest.
REASON_NEW = "new unit"
REASON_IMAGE = "image changed"
REASON_ANN = "annotations changed"
REASON_PROMPT = "prompt changed"
REASON_TEACHER = "teacher changed"
REASON_RETRY = "retry of an error"
REASON_REMOVED = "unit no longer planned"


def sha256_json(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def generation_key(image_identity: str, ann_hash: str, task: str, prompt_hash: str, teacher_hash: str) -> str:
    return sha256_json(
        {
            "v": KEY_VERSION,
            "image": image_identity,
            "ann": ann_hash,
            "task": task,
            "prompt": prompt_hash,
            "teacher": teacher_hash,
            "code": PROMPT_CODE_VERSION,
        }
    )


def annotation_hash(image: Mapping[str, Any]) -> str:
    """Hash of everything the unit shows or is checked against (objects with masks, negatives)."""
    return sha256_json(
        {
            "w": image["width"],
            "h": image["height"],
            "objects": image["objects"],
            "absent": sorted(image["absent_categories"] or []),
            "not_exhaustive": sorted(image["not_exhaustive_categories"] or []),
            "error": image["image_error"],
            # The unit's own image: two images with the same bytes and annotations (or two error
            # records without a file) must never share a key, a ledger row or sample ids.
            "unit": [image["source"], image["image_id"]],
        }
    )


def image_identity(info: Mapping[str, Any] | None) -> str:
    """Content identity from a listing entry: S3 ETag + size, or local size + mtime (no bytes read)."""
    if info is None:
        return "missing"
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return sha256_json({"etag": str(etag).strip('"'), "size": info.get("size")})
    return sha256_json({"size": info.get("size"), "mtime": info.get("mtime"), "name": info.get("name")})


def applicable(image: Mapping[str, Any], task: str) -> bool:
    """Whether a task can be written for this image at all (else the unit is not planned)."""
    if image["image_error"]:
        return True  # planned so the error is recorded for every task of the image
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
    retried by the next build, except those written by this build (`reuse_errors_from` batches).
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
        if r["outcome"] == OUTCOME_ERROR and r.get("batch") not in own:
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
    for image in images.to_pylist():
        ident = identities.get(image["image_uri"], "missing")
        ann = annotation_hash(image)
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
            why = _why(previous.get(uid), key, ident, ann, prompt_hashes[task], teacher_hash)
            wanted[uid] = why
            if key in reuse_from:
                tp.reused += 1
                reused.add(key)
                continue
            if key in stale:
                tp.refilter += 1
                refilter.append(_unit_from_stale(image, stale[key]))
                continue
            tp.generate += 1
            tp.generate_reasons[why] += 1
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
                images_total=images.num_rows, images_excluded=images_excluded)


def _unit_from_stale(image: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """A unit row (UNIT fields, no pixels) for re-checking a stored response; `batch` says where
    the response is stored."""
    unit = {k: image[k] for k in ("source", "dataset_format", "image_id", "image_uri", "width", "height",
                                  "objects", "absent_categories", "not_exhaustive_categories")}
    unit.update({k: row[k] for k in ("gen_key", "task", "image_identity", "ann_hash", "prompt_hash",
                                     "teacher_hash", "batch")})
    unit.update({"teacher_image": None, "teacher_width": None, "teacher_height": None,
                 "unit_error": None, "unit_error_detail": None, "request_key": None, "shares_answer_of": None})
    return unit


def _why(prev: Mapping[str, Any] | None, key: str, ident: str, ann: str, prompt: str, teacher: str) -> str:
    if prev is None:
        return REASON_NEW
    if prev["gen_key"] == key:
        return REASON_RETRY
    if prev["image_identity"] != ident:
        return REASON_IMAGE
    if prev["ann_hash"] != ann:
        return REASON_ANN
    if prev["prompt_hash"] != prompt:
        return REASON_PROMPT
    if prev["teacher_hash"] != teacher:
        return REASON_TEACHER
    return "code version changed"


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
