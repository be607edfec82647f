"""The generation key, owned here: its inputs, every version salt, the reasons a unit is
(re)generated, which errors are final, and the one builder of UNIT rows.

A generation key is sha256 over a canonical JSON of everything that changes a teacher's answer:
image content identity, the annotations the unit shows and is checked against, task, prompt
content hash, teacher identity and the prompt-building code version. Filter settings are not in
it: a filter change re-checks stored raw responses instead (docs/incremental.md).

To add a key (e.g. a verification key): add its salt below, a `*_key` function next to
`generation_key`, and its column to `schemas.columns.KEY_COMPONENT_FIELDS` if units carry it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# --- version salts: bump one when the code it names changes the output ---------------------------
KEY_VERSION = 1  # the key's own layout
PROMPT_CODE_VERSION = "prompt-build-1"  # teachers/prompts.py + base.py: how a prompt is built
MESSAGES_VERSION = "1"  # teachers/messages.py: chat message rendering (vLLM teachers)
REQUEST_VERSION = "vllm-request-2"  # teachers/vllm_rows.py: 2: seeds from the request key; one request per key
ANSWER_SCHEMA_VERSION = "answer-schema-1"  # teachers/vllm_backend.py: structured-output schema
TEMPLATE_VERSION = "template-1"  # teachers/template.py: the CPU template teacher's answers
REQUEST_KEY_VERSION = 1  # teachers/requests.py: the request key (identical requests sent once)
VERIFY_REQUEST_VERSION = "verify-request-1"  # teachers/verifier.py: verifier requests (verification key)
FILTER_CODE_VERSION = "filters-2"  # pipelines/filters (2: no_referent, ambiguous_reference, attribute/part
# name checks): not in the key; a bump re-checks stored responses

# --- why a unit is (re)generated or dropped; printed by --dry-run and counted in the manifest ------
REASON_NEW = "new unit"
REASON_IMAGE = "image changed"
REASON_ANN = "annotations changed"
REASON_PROMPT = "prompt changed"
REASON_TEACHER = "teacher changed"
REASON_RETRY = "retry of an error"
REASON_REMOVED = "unit no longer planned"
REASON_CODE = "code version changed"

# --- errors: final (a function of the key's inputs) or transient (retried by the next build) -------
# A final error is reused until its key changes: the annotations (ann_hash), the image bytes'
# identity, the prompt or the teacher. Anything not listed (engine failure, read_failed, storage
# trouble, too_many_pixels which depends on a config limit) is retried.
FINAL_ERROR_REASONS: frozenset[str] = frozenset({
    "missing_image", "unsafe_path", "empty_image", "not_an_image", "truncated_image", "size_mismatch",
    "exif_rotated", "unsupported_mode",
})
ANNOTATION_ERROR_PREFIX = "annotation:"  # every annotation error is final (it is in ann_hash)


def is_final_error(reason: str | None) -> bool:
    """Whether an error unit's reason can only change when the unit's key changes."""
    if not reason:
        return False
    return reason.startswith(ANNOTATION_ERROR_PREFIX) or reason in FINAL_ERROR_REASONS


def final_error_mask(reasons: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`is_final_error` over a column of ledger error reasons (null: not final)."""
    final = pc.or_(pc.starts_with(reasons, ANNOTATION_ERROR_PREFIX),
                   pc.is_in(reasons, value_set=pa.array(sorted(FINAL_ERROR_REASONS), pa.string())))
    return np.asarray(pc.fill_null(final, False).to_numpy(zero_copy_only=False), dtype=bool)


# --- which units exist: per-image object counts, computed once at indexing (cached with the index) -
COUNT_COLUMNS = ("n_whole", "n_part", "n_absent")


def object_counts(images: pa.Table) -> dict[str, np.ndarray]:
    """Per image: non-crowd whole objects, non-crowd parts, verified-absent categories. Chunk by
    chunk over the `objects` list column: no object becomes a Python value, nothing is copied."""
    n = images.num_rows
    whole = np.zeros(n, dtype=np.int64)
    parts = np.zeros(n, dtype=np.int64)
    start = 0
    for chunk in images.column("objects").chunks:
        parent = pc.list_parent_indices(chunk).to_numpy() + start
        flat = pc.list_flatten(chunk)
        crowd = np.asarray(pc.fill_null(flat.field("iscrowd"), False).to_numpy(zero_copy_only=False), dtype=bool)
        part = np.asarray(pc.fill_null(flat.field("is_part"), False).to_numpy(zero_copy_only=False), dtype=bool)
        whole += np.bincount(parent[~part & ~crowd], minlength=n)[:n]
        parts += np.bincount(parent[part & ~crowd], minlength=n)[:n]
        start += len(chunk)
    absent = np.asarray(pc.fill_null(pc.list_value_length(images.column("absent_categories")), 0), dtype=np.int64)
    return {"n_whole": whole, "n_part": parts, "n_absent": absent}


def sha256_json(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def generation_key(image_identity: str, ann_hash: str, task: str, prompt_hash: str, teacher_hash: str) -> str:
    return sha256_json({"v": KEY_VERSION, "image": image_identity, "ann": ann_hash, "task": task,
                        "prompt": prompt_hash, "teacher": teacher_hash, "code": PROMPT_CODE_VERSION})


def generation_key_digests(idents: list[str], anns: list[str], task: str, prompt_hash: str, teacher_hash: str
                           ) -> bytes:
    """`generation_key` of many units of one task as concatenated 32-byte sha256 digests (the key is
    their hex). Same canonical JSON as `sha256_json`, built from a template: the constant parts are
    encoded once and no per-unit dict is made (tested equal to `generation_key`)."""
    dumps = json.dumps
    head = '{"ann":'
    mid = (f',"code":{dumps(PROMPT_CODE_VERSION)},"image":')
    tail = (f',"prompt":{dumps(prompt_hash)},"task":{dumps(task)},"teacher":{dumps(teacher_hash)},'
            f'"v":{dumps(KEY_VERSION)}}}')
    sha = hashlib.sha256
    return b"".join(sha((head + dumps(a) + mid + dumps(i) + tail).encode()).digest()
                    for i, a in zip(idents, anns, strict=True))


def request_key(image: str | None, table_text: str, local_ids: Iterable[int], task: str, prompt_hash: str,
                teacher_hash: str) -> str:
    """sha256 over what the teacher sees (identical requests are sent once, teachers/requests.py).
    `image`: a digest of the exact image bytes sent (None for a text teacher, which never sees one)."""
    return sha256_json({"v": REQUEST_KEY_VERSION, "image": image, "table": table_text,
                        "ids": sorted(int(i) for i in local_ids), "task": task, "prompt": prompt_hash,
                        "teacher": teacher_hash})


def pair_key(sample: Mapping[str, Any]) -> str:
    """Hash of one accepted pair's content (its unit's generation key covers image, annotations,
    teacher): what the verifier judges."""
    return sha256_json([sample["gen_key"], sample["task"], sample["subtype"], sample["instruction"],
                        sample["answer"], sorted(int(i) for i in sample["target_ids"] or [])])


def verify_key(pair: str, verifier_hash: str, prompt_hash: str) -> str:
    """The verification key: a stored verdict is reused while pair, verifier and its prompt agree."""
    return sha256_json([pair, verifier_hash, prompt_hash])


def annotation_hash(image: Mapping[str, Any]) -> str:
    """Hash of everything the unit shows or is checked against (objects with masks, negatives)."""
    return sha256_json(
        {
            "w": image["width"], "h": image["height"], "objects": image["objects"],
            "absent": sorted(image["absent_categories"] or []),
            "not_exhaustive": sorted(image["not_exhaustive_categories"] or []),
            "error": image["image_error"],
            # The unit's own image: two images with the same bytes and annotations (or two error
            # records without a file) must never share a key, a ledger row or sample ids.
            "unit": [image["source"], image["image_id"]],
        }
    )


def image_identity(info: Mapping[str, Any] | None) -> str:
    """Content identity from a listing entry, without the path: S3 ETag + size, or local size +
    mtime (no bytes read). A copied (mtime kept) or moved images folder keeps every identity."""
    if info is None:
        return "missing"
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return sha256_json({"etag": str(etag).strip('"'), "size": info.get("size")})
    return sha256_json({"size": info.get("size"), "mtime": info.get("mtime")})


def why(prev: Mapping[str, Any] | None, key: str, ident: str, ann: str, prompt: str, teacher: str) -> str:
    """The first key input that differs from the unit's previous ledger row."""
    if prev is None:
        return REASON_NEW
    if prev["gen_key"] == key:
        return REASON_RETRY
    for (col, reason), value in zip(KEY_INPUTS, (ident, ann, prompt, teacher), strict=True):
        if prev[col] != value:
            return reason
    return REASON_CODE


KEY_INPUTS = (("image_identity", REASON_IMAGE), ("ann_hash", REASON_ANN), ("prompt_hash", REASON_PROMPT),
              ("teacher_hash", REASON_TEACHER))


# --- the one builder of UNIT rows (schemas.columns.UNIT_FIELDS) --------------------------------------
IMAGE_UNIT_FIELDS = ("source", "dataset_format", "image_id", "image_uri", "width", "height", "objects",
                     "absent_categories", "not_exhaustive_categories")
KEY_FIELDS = ("gen_key", "task", "image_identity", "ann_hash", "prompt_hash", "teacher_hash")


def unit_row(image: Mapping[str, Any], keys: Mapping[str, Any], teacher_image: bytes | None = None,
             teacher_width: int | None = None, teacher_height: int | None = None,
             error: str | None = None, detail: str | None = None) -> dict[str, Any]:
    """One UNIT row: the image's fields, the planned unit's key fields, the teacher's view of the
    image (or the error that stops the unit before the teacher)."""
    row = {k: image[k] for k in IMAGE_UNIT_FIELDS}
    row.update({k: keys[k] for k in KEY_FIELDS})
    row.update({"teacher_image": teacher_image, "teacher_width": teacher_width,
                "teacher_height": teacher_height, "unit_error": error, "unit_error_detail": detail,
                # set by the teacher stage (teachers/requests.py) when identical requests are merged
                "request_key": None, "shares_answer_of": None})
    return row
