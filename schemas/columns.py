"""Every Arrow schema of the pipeline, defined once.

Stages import the column names and schemas from here; no other module invents a column.
Rows flow: IMAGE (readers) -> UNIT (fan-out, one per image x task) -> UNIT + TEACHER_OUT
(teacher) -> UNIT_RESULT (checks) -> SAMPLE / REJECT / ERROR / RAW shards (writer).
"""

from __future__ import annotations

import pyarrow as pa

# The five Ground-V task types, in the order they are planned and reported.
TASKS: tuple[str, ...] = ("hallucination", "multi_object", "reasoning", "multi_granularity", "part")

# (min, max) number of targets a pair of each task may have; None = unbounded. Hallucination
# answers are no-target samples by definition; multi_object is "several objects at once". The one
# home of this rule: the filters, the answer JSON schema and the prompt validation all read it.
TARGET_BOUNDS: dict[str, tuple[int, int | None]] = {
    "hallucination": (0, 0),
    "multi_object": (2, None),
    "reasoning": (1, None),
    "multi_granularity": (1, None),
    "part": (1, None),
}

# Subtypes a task may declare (the vLLM schema's enum; the template teacher uses them too).
TASK_SUBTYPES: dict[str, tuple[str, ...]] = {
    "hallucination": ("object", "attribute", "relation"),
    "multi_object": ("same_category", "mixed_category"),
    "reasoning": ("function", "knowledge"),
    "multi_granularity": ("instance", "group"),
    "part": ("part",),
}

# Shard kinds named in the manifest.
KIND_SAMPLES = "samples"
KIND_REJECTS = "rejects"
KIND_ERRORS = "errors"
KIND_RAW = "raw"
SHARD_KINDS: tuple[str, ...] = (KIND_SAMPLES, KIND_REJECTS, KIND_ERRORS, KIND_RAW)
# Written by the verify step (pipelines/build/verify.py), not by the stream's writer:
# verdicts = one row per verified pair and verifier; verify_failed = sample rows the verifier
# rejected (kept whole so a new verifier or prompt can re-verify them without the teacher).
KIND_VERDICTS = "verdicts"
KIND_VERIFY_FAILED = "verify_failed"

# Unit outcomes: every planned unit ends in exactly one.
OUTCOME_ACCEPTED = "accepted"
OUTCOME_REJECTED = "rejected"
OUTCOME_ERROR = "error"

# --- one annotated object (or part) as the readers produce it ------------------------------
OBJECT_TYPE = pa.struct(
    [
        ("ann_id", pa.int64()),  # source annotation id
        ("category_id", pa.int64()),
        ("category_name", pa.string()),  # raw name from the JSON ("mug:handle", "ball_(sports)")
        ("name", pa.string()),  # clean display name ("mug handle" -> part name "handle", "ball")
        ("supercategory", pa.string()),
        ("is_part", pa.bool_()),
        ("parent_ann_id", pa.int64()),  # null unless is_part
        ("bbox", pa.list_(pa.float64())),  # COCO [x, y, w, h] in source-image pixels
        ("area", pa.float64()),  # mask area in pixels (from the RLE)
        ("iscrowd", pa.bool_()),
        ("rle_counts", pa.string()),  # compressed COCO RLE counts; size is (height, width) of the image
        ("attributes", pa.list_(pa.string())),  # PACO colour / material names, else empty
    ]
)

# --- one image record: what the readers emit ---------------------------------------------------
IMAGE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # data.sources[].name
        ("dataset_format", pa.string()),  # coco | lvis | paco
        ("image_id", pa.int64()),
        ("file_name", pa.string()),  # relative to the source's images prefix
        ("image_uri", pa.string()),  # full uri (local path or s3://...)
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("objects", pa.list_(OBJECT_TYPE)),
        # category names verified absent from the image (COCO: every source category not present,
        # since COCO is exhaustive; LVIS/PACO: only neg_category_ids).
        ("absent_categories", pa.list_(pa.string())),
        # LVIS/PACO not_exhaustive_category_ids, by name: never usable as negatives.
        ("not_exhaustive_categories", pa.list_(pa.string())),
        ("image_error", pa.string()),  # reason code when the annotations are invalid, else null
        ("image_error_detail", pa.string()),
    ]
)

# --- key components: why a unit's generation key is what it is ----------------------------------
KEY_COMPONENT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("image_identity", pa.string()),  # sha256 of the bytes-identity (etag+size or size+mtime)
    ("ann_hash", pa.string()),  # sha256 of the annotations the unit shows / checks against
    ("prompt_hash", pa.string()),  # content hash of the task's prompt file
    ("teacher_hash", pa.string()),  # hash of the teacher identity
]

# --- a unit the plan decided to generate, carried on its image row until the fan-out -----------
PLANNED_UNIT_TYPE = pa.struct([("gen_key", pa.string()), ("task", pa.string()), *KEY_COMPONENT_FIELDS])

# The stream's input: one row per image with at least one unit to generate.
IMAGE_WORK_SCHEMA = pa.schema([*IMAGE_SCHEMA, ("units", pa.list_(PLANNED_UNIT_TYPE))])

# --- one work unit: (image x task), made by the fan-out stage ----------------------------------
UNIT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("gen_key", pa.string()),
    ("source", pa.string()),
    ("dataset_format", pa.string()),
    ("image_id", pa.int64()),
    ("image_uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("task", pa.string()),
    ("objects", pa.list_(OBJECT_TYPE)),
    ("absent_categories", pa.list_(pa.string())),
    ("not_exhaustive_categories", pa.list_(pa.string())),
    *KEY_COMPONENT_FIELDS,
    # the image as the teacher sees it (resized to the pixel budget, encoded); null for text teachers
    ("teacher_image", pa.binary()),
    ("teacher_width", pa.int32()),
    ("teacher_height", pa.int32()),
    # set when reading / decoding / validating failed: the unit goes to errors, never to the teacher
    ("unit_error", pa.string()),
    ("unit_error_detail", pa.string()),
    # teachers/requests.py: the key of the request the teacher sees for this unit (image content +
    # object table + task prompt + teacher); null until a teacher that de-duplicates computes it
    ("request_key", pa.string()),
    # the unit whose request (and answer) this unit shares, null for a unit sent to the teacher
    ("shares_answer_of", pa.string()),
]
UNIT_SCHEMA = pa.schema(UNIT_FIELDS)

# Units with the same request as a unit sent to the teacher ride on its row through the engine
# (teachers/requests.collapse_requests) and get its answer after it (expand_followers); the image
# part of the row is theirs too (same content), so it is not repeated here.
FOLLOWER_FIELDS: list[tuple[str, pa.DataType]] = [
    (n, t) for n, t in UNIT_FIELDS
    if n not in ("teacher_image", "teacher_width", "teacher_height", "unit_error", "unit_error_detail",
                 "request_key", "shares_answer_of")
]
FOLLOWERS_COLUMN = "followers"
FOLLOWERS_TYPE = pa.list_(pa.struct(FOLLOWER_FIELDS))

# --- what a teacher adds to each unit ----------------------------------------------------------
TEACHER_OUT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("response", pa.string()),  # raw text; null when the teacher failed
    ("finish_reason", pa.string()),  # stop | length | error
    ("teacher_error", pa.string()),  # engine / replay message when the teacher failed
    ("prompt_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
]

# The teacher's JSON answer shape (same for every backend), see teachers/answer_schema.py.
ANSWER_PAIRS = "pairs"
ANSWER_FIELDS = ("instruction", "answer", "target_ids", "subtype")

# --- accepted sample row ----------------------------------------------------------------------
MASK_TYPE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])

SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("gen_key", pa.string()),
        ("source", pa.string()),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("task", pa.string()),
        ("subtype", pa.string()),
        ("instruction", pa.string()),
        ("answer", pa.string()),
        ("target_ids", pa.list_(pa.int64())),  # source annotation ids; empty for hallucination
        ("mask", MASK_TYPE),  # COCO RLE of the union of the targets (empty mask when no target)
        ("bboxes", pa.list_(pa.list_(pa.float64()))),  # COCO [x, y, w, h] per target
        ("prompt_hash", pa.string()),
        ("teacher", pa.string()),
        ("filter_version", pa.string()),
        # second-model verification (docs/teachers.md#verifier): "pass" | "fail" | null (not verified)
        ("verify_verdict", pa.string()),
        ("verify_score", pa.float64()),  # P(correct) when the verifier returns log-probs, else null
    ]
)

# --- one verifier verdict: stored once per (pair content, verifier, verifier prompt) ------------
VERDICT_SCHEMA = pa.schema(
    [
        ("verify_key", pa.string()),  # sha256(pair_key, verifier identity, prompt hash)
        ("pair_key", pa.string()),  # sha256 of the pair content alone (explains re-verification)
        ("verifier_hash", pa.string()),
        ("prompt_hash", pa.string()),
        ("verifier", pa.string()),  # short label, e.g. replay:listener@ab12
        ("gen_key", pa.string()),
        ("task", pa.string()),
        ("passed", pa.bool_()),
        ("verdict", pa.string()),  # listener: match | mismatch; mask_judge: one of the prompt's verdicts
        ("score", pa.float64()),  # P(correct) or null
        ("detail", pa.string()),
        ("response", pa.string()),  # raw verifier text
    ]
)

# --- rejected pair (or whole response) --------------------------------------------------------
REJECT_SCHEMA = pa.schema(
    [
        ("gen_key", pa.string()),
        ("source", pa.string()),
        ("image_id", pa.int64()),
        ("task", pa.string()),
        ("pair_index", pa.int32()),  # -1 when the whole response is rejected
        ("reason", pa.string()),  # stable reason code, see docs/filters.md
        ("detail", pa.string()),
        ("subtype", pa.string()),
        ("instruction", pa.string()),
        ("answer", pa.string()),
        ("target_local_ids", pa.list_(pa.int64())),
        ("raw_response", pa.string()),
        ("prompt_hash", pa.string()),
        ("teacher", pa.string()),
        ("filter_version", pa.string()),
    ]
)

# --- unit that failed before producing a checkable response ------------------------------------
ERROR_SCHEMA = pa.schema(
    [
        ("gen_key", pa.string()),
        ("source", pa.string()),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("task", pa.string()),
        ("stage", pa.string()),  # annotations | read | decode | teacher
        ("reason", pa.string()),  # stable reason code, see docs/reliability.md
        ("error", pa.string()),  # human-readable text (never credentials)
        ("prompt_hash", pa.string()),
        ("teacher", pa.string()),
    ]
)

# --- the unit ledger: one row per unit processed, with the raw teacher response ----------------
# The plan of the next build reads only this kind (gen_key + key components) to decide reuse; the
# raw response lets a filter change re-check units without calling the teacher again.
RAW_SCHEMA = pa.schema(
    [
        ("gen_key", pa.string()),
        ("source", pa.string()),
        ("image_id", pa.int64()),
        # where the unit's rows say the image is: the plan compares it with the source's current
        # location, so a moved images folder rewrites this column instead of re-running the unit
        # (null in ledgers written before it existed)
        ("image_uri", pa.string()),
        ("task", pa.string()),
        *KEY_COMPONENT_FIELDS,
        ("outcome", pa.string()),  # accepted | rejected | error
        # the error's reason when outcome is error: "annotation:<code>", a read/decode code, or
        # "teacher:<code>"; pipelines/core/keys.is_final_error says whether a rebuild retries it
        ("error_reason", pa.string()),
        ("n_accepted", pa.int32()),
        ("n_rejected", pa.int32()),
        *TEACHER_OUT_FIELDS,
        ("teacher", pa.string()),
        ("filter_version", pa.string()),
        # gen_key of the unit whose identical request was sent to the teacher, when this unit
        # shared its answer instead of a call of its own (counted as requests_saved)
        ("shares_answer_of", pa.string()),
    ]
)

KIND_SCHEMAS: dict[str, pa.Schema] = {
    KIND_SAMPLES: SAMPLE_SCHEMA,
    KIND_REJECTS: REJECT_SCHEMA,
    KIND_ERRORS: ERROR_SCHEMA,
    KIND_RAW: RAW_SCHEMA,
    KIND_VERDICTS: VERDICT_SCHEMA,
    KIND_VERIFY_FAILED: SAMPLE_SCHEMA,
}

# --- what the check stage emits per unit: the unit's rows of every kind, nested ---------------
UNIT_RESULT_SCHEMA = pa.schema(
    [
        ("gen_key", pa.string()),
        ("task", pa.string()),
        ("outcome", pa.string()),
        ("samples", pa.list_(pa.struct(list(SAMPLE_SCHEMA)))),
        ("rejects", pa.list_(pa.struct(list(REJECT_SCHEMA)))),
        ("errors", pa.list_(pa.struct(list(ERROR_SCHEMA)))),
        ("raw", pa.list_(pa.struct(list(RAW_SCHEMA)))),
    ]
)

# --- what the writer stage emits: one row per written batch (its receipt) ---------------------
SHARD_ENTRY_TYPE = pa.struct(
    [
        ("path", pa.string()),  # relative to output.uri
        ("kind", pa.string()),
        ("task", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("batch", pa.string()),
    ]
)
RECEIPT_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),  # batch id; the receipt lives at receipts/<build_id>/<batch>.json
        ("shards", pa.list_(SHARD_ENTRY_TYPE)),
        ("units", pa.int64()),
        ("stats", pa.string()),  # JSON: per-task counters of this batch (see pipelines/build/stats.py)
    ]
)


def field_names(schema_or_fields: pa.Schema | list[tuple[str, pa.DataType]]) -> list[str]:
    """Column names of a schema or a field list, in order."""
    if isinstance(schema_or_fields, pa.Schema):
        return list(schema_or_fields.names)
    return [name for name, _ in schema_or_fields]


# Ids (image, annotation, category, target) are int64 columns: a JSON integer outside that range
# is bad input (a row-level reject or a file error naming the file), never an OverflowError.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def is_int64(v: object) -> bool:
    """An integer (not a bool) that fits an int64 column."""
    return isinstance(v, int) and not isinstance(v, bool) and INT64_MIN <= v <= INT64_MAX
