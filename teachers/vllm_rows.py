"""Pure row functions of the vLLM teacher: unit row -> engine request, engine row -> teacher columns.

No Ray, no vLLM here, so all of it is unit-testable in milliseconds. `teachers/vllm_backend.py`
plugs these into Ray Data's vLLM processor (preprocess / postprocess) and one final batch stage.

How a unit travels through ``ray.data.llm`` (Ray 2.60):
  * preprocess returns ``prompt`` (the chat template applied here: teachers/chat_prompt.py; Ray's
    chat-template stage is off) or ``messages`` (for callers that chat themselves) +
    ``sampling_params``; Ray nests the whole input row under its
    ``__data`` column, so every UNIT column rides along to the postprocess untouched.
  * vision: preprocess also returns ``multimodal_data`` (the decoded image, once per image, shared
    by its units) + ``multimodal_uuids``, inputs Ray's engine stage passes to vLLM as they are;
    Ray's own multimodal stage is off (it re-decoded a data: URL on every unit row).
  * a row whose ``__inference_error__`` is non-empty bypasses every later stage *and* the
    postprocess. The engine sets it when a request fails (prompt too long, bad request) because we
    run with ``should_continue_on_error=True``; we also set it ourselves, with SKIP_MARKER, for units
    that already failed upstream (``unit_error``): they must pass through without reaching the
    engine, and the stream has one branch only (a second would re-read every image).
  * so the rows that leave the processor are of two shapes: our postprocess output, or the raw
    ``__data`` dict of a failed row. `normalise_table` maps both to UNIT + TEACHER_OUT columns.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa

# REQUEST_VERSION (in core/keys): bump when the request built here changes answers (image
# placement, text flattening, schema wiring, per-unit seeds). Part of the teacher identity.
from pipelines.core.keys import REQUEST_VERSION  # noqa: F401  (re-exported: the salts live with the key)
from pipelines.core.object_table import build_object_table, render_object_table, table_entries
from schemas.columns import FOLLOWERS_COLUMN, TEACHER_OUT_FIELDS, UNIT_FIELDS, UNIT_SCHEMA
from teachers.messages import IMAGE_PART, answer_json_schema, build_messages
from teachers.prompts import PromptSpec
from teachers.requests import expand_followers, request_key

ERROR_COLUMN = "__inference_error__"  # Ray's per-row engine error column
# Units that failed before the teacher carry this in ERROR_COLUMN so every stage skips them.
SKIP_MARKER = "groundv-skip:unit_error"

UNIT_NAMES: tuple[str, ...] = tuple(name for name, _ in UNIT_FIELDS)
TEACHER_NAMES: tuple[str, ...] = tuple(name for name, _ in TEACHER_OUT_FIELDS)
OUT_SCHEMA = pa.schema(list(UNIT_SCHEMA) + [pa.field(n, t) for n, t in TEACHER_OUT_FIELDS])

MAX_ERROR_CHARS = 2000  # engine messages can embed the whole prompt


def image_data_url(image: bytes) -> str:
    """The stream's teacher image as a data: URL (a plain string: Arrow-friendly between stages,
    decoded by vLLM's chat parser in the multimodal stage). The media type follows the bytes: the
    stream passes an image that needs no resize on as its own PNG / WebP / JPEG bytes."""
    mime = "image/png" if image[:4] == b"\x89PNG" else "image/webp" if image[8:12] == b"WEBP" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(image).decode("ascii")


def image_uuid(image: bytes) -> str:
    """Stable multimodal id of the exact bytes the teacher sees. vLLM uses it instead of hashing the
    decoded pixels, and its processor cache answers every later unit of the same image (up to 5
    tasks) without running the HF image processor again. A content digest, not the source's
    identity: two different images can never share it."""
    return "gv-" + hashlib.blake2b(image, digest_size=16).hexdigest()


def decode_teacher_image(image: bytes) -> np.ndarray:
    """The pixels the engine gets for the stream's teacher image, decoded here ONCE per image.

    The pixels vLLM's own loader (MediaConnector -> ImageMediaIO.load_bytes, which Ray's multimodal
    stage ran on every unit row) makes of the bytes: PIL open, load, RGB; vLLM also applies the
    EXIF orientation, which the stream's teacher image never carries (re-encoded without EXIF, or
    passed on as its own bytes only with orientation 1: stages/images.decode_image).
    Handed on as an (H, W, 3) uint8 array, an image item vLLM takes as it is: Ray pickles every
    unit row's copy at each stage boundary (preprocess [-> tokenize] -> engine),
    and an array pickles ~5x faster than a PIL image (bench/image_prep.py: row transport)."""
    from PIL import Image

    img = Image.open(io.BytesIO(image))
    img.load()
    return np.array(img if img.mode == "RGB" else img.convert("RGB"))


class _ImageCache:
    """The decoded image of the last few images, by multimodal uuid, so the ~3.5 units of an image
    share one decode and one PIL object (units of an image arrive together: fanned out side by
    side). Small: a decoded 1 MP image is 3 MB."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.images: dict[str, np.ndarray] = {}
        self.misses = 0

    def get(self, image: bytes) -> tuple[str, np.ndarray]:
        uid = image_uuid(image)
        hit = self.images.get(uid)
        if hit is None:
            self.misses += 1
            hit = decode_teacher_image(image)
            if len(self.images) >= self.size:
                self.images.pop(next(iter(self.images)))
            self.images[uid] = hit
        return uid, hit


IMAGES = _ImageCache()  # one per worker process; the images are read-only, shared by reference


def engine_conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in the form the chat-template stage got from Ray's multimodal stage (vLLM's
    `parse_chat_messages` with content format "openai"): every content a list of parts, a string
    content as one text part, the image part as the bare ``{"type": "image"}`` placeholder. Built
    here because that stage is off (see unit_to_request); tests/test_vllm_images.py checks it
    against vLLM's own parser."""
    out = []
    for m in messages:
        content = m["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else [
            dict(IMAGE_PART) if p == IMAGE_PART else {"type": "text", "text": p["text"]}
            for p in content]
        out.append({**m, "content": parts})
    return out


def unit_table(row: Mapping[str, Any], box_format: str) -> tuple[str, list[int]]:
    """The object-table text the teacher sees, and its local ids (the answer schema's enum)."""
    rows = build_object_table(row["objects"] or [])
    entries = table_entries(
        rows, box_format, int(row["width"]), int(row["height"]),
        row.get("teacher_width"), row.get("teacher_height"),
    )
    return render_object_table(entries), [r.local_id for r in rows]


def unit_seed(base_seed: int, key: str) -> int:
    """Per-request sampling seed: reproducible whatever batch the request lands in, different
    between requests (one shared seed would correlate the samples of similar prompts). Drawn from
    the request key, so the units sharing one request get the answer any of them would have got."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def unit_request_key(row: Mapping[str, Any], box_format: str, with_image: bool) -> str:
    """teachers.requests.request_key of one unit row, from what this teacher renders for it."""
    table_text, local_ids = unit_table(row, box_format)
    image = image_uuid(bytes(row["teacher_image"])) if with_image and row.get("teacher_image") else None
    return request_key(image, table_text, local_ids, row["task"], row["prompt_hash"], row["teacher_hash"])


def unit_to_request(
    row: Mapping[str, Any],
    specs: Mapping[str, PromptSpec],
    mode: str,
    box_format: str,
    n_pairs: int,
    sampling: Mapping[str, Any],
    prompt_of: Callable[[list[dict[str, Any]]], str] | None = None,
) -> dict[str, Any]:
    """Preprocess of the vLLM processor: one unit row -> ``messages`` + ``sampling_params``.

    With ``prompt_of`` (teachers.chat_prompt.ChatPrompt) the chat template is applied here and the
    row carries the rendered ``prompt`` instead of ``messages``: Ray's chat-template stage is then
    off (one actor pool and one row hop fewer in front of the engine).

    Vision mode replaces the ``{"type": "image"}`` placeholder that build_messages puts after the
    text with the unit's resized image; text mode sends no image and flattens the last turn to a
    string (text-only chat templates such as Qwen2.5-Instruct's concatenate ``content`` as a str).
    The JSON schema goes in as a string: Ray moves rows between stages as Arrow, and unifying the
    structs of differently-shaped schemas across rows would add null keys to them.
    """
    params = _sampling_params(sampling, row.get("request_key") or row["gen_key"])
    if row.get("unit_error"):
        return _skip_request(params, with_prompt=prompt_of is not None)
    spec = specs[row["task"]]
    table_text, local_ids = unit_table(row, box_format)
    with_image = mode == "vision"
    messages = build_messages(spec, table_text, n_pairs, with_image)
    last = messages[-1]
    extra: dict[str, Any] = {}
    if with_image:
        image = row.get("teacher_image")
        if not image:
            raise ValueError(f"unit {row['gen_key']}: vision teacher but no teacher_image (stream bug)")
        # Ray's multimodal stage is off: the decoded image goes straight to the engine stage,
        # with its stable uuid (vLLM then neither hashes the pixels nor re-runs the HF processor
        # for the image's later units: its processor cache is keyed by the uuid).
        uid, pixels = IMAGES.get(bytes(image))
        messages = engine_conversation(messages)
        extra = {"multimodal_data": {"image": [pixels]}, "multimodal_uuids": {"image": [uid]}}
    else:
        last["content"] = "\n".join(p["text"] for p in last["content"] if p.get("type") == "text")
    schema = answer_json_schema(row["task"], list(spec.subtypes), local_ids, n_pairs)
    params["structured_outputs"] = {"json": json.dumps(schema, separators=(",", ":"))}
    # Explicitly "": if only skipped rows had the key, Ray would fill it with null in the others,
    # and its stages treat anything but "" as an error row.
    text = {"prompt": prompt_of(messages)} if prompt_of is not None else {"messages": messages}
    return {**text, "sampling_params": params, **extra, ERROR_COLUMN: ""}


def _sampling_params(sampling: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The row's SamplingParams kwargs. Every row of a batch must carry the same keys with the
    same types: Ray converts the batch to Arrow/numpy between stages, and a key missing in one row
    turns an int column into float64 with NaN -- vLLM's engine core then dies on
    ``seed: expected int, got float`` and the job hangs."""
    params = dict(sampling)
    if params.get("seed") is not None:
        params["seed"] = unit_seed(int(params["seed"]), key)
    return params


def _skip_request(params: dict[str, Any], with_prompt: bool = False) -> dict[str, Any]:
    """A unit that failed upstream: never reaches the engine (see module doc), but has the same
    keys and value types as a real request so the batch's Arrow types stay clean."""
    params["structured_outputs"] = {"json": "{}"}
    text: dict[str, Any] = {"prompt": ""} if with_prompt else {"messages": [{"role": "user", "content": ""}]}
    return {
        **text,
        "sampling_params": params,
        ERROR_COLUMN: SKIP_MARKER,
    }


def finish_reason_of(text: str, n_generated: int, max_tokens: int | None) -> str:
    """`stop` or `length`. Ray 2.60's engine output carries no finish_reason, so infer it: a
    response that used the whole budget was cut off -- unless it still parses (the last token of
    the budget was the one that closed the JSON)."""
    if max_tokens is not None and n_generated >= max_tokens:
        try:
            json.loads(text)
        except ValueError:
            return "length"
    return "stop"


def engine_error_text(message: str) -> str:
    """`code: message` so the check stage files it under a stable reason (stages/check.py)."""
    low = message.lower()
    if any(m in low for m in ("maximum model length", "maximum context length", "longer than the max",
                              "too long")):
        code = "prompt_too_long"
    else:
        code = "engine_error"
    return f"{code}: {message[:MAX_ERROR_CHARS]}"


def normalise_output(row: Mapping[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """Any row leaving the processor -> its UNIT columns + TEACHER_OUT columns (+ the followers
    riding on it, expanded by normalise_table)."""
    out = {name: row.get(name) for name in UNIT_NAMES}
    out[FOLLOWERS_COLUMN] = _plain_followers(row.get(FOLLOWERS_COLUMN))
    err = row.get(ERROR_COLUMN) or ""
    if err == SKIP_MARKER:  # failed upstream: no teacher output at all (Teacher contract)
        out.update({name: None for name in TEACHER_NAMES})
    elif err:
        out.update(
            response=None,
            finish_reason="error",
            teacher_error=engine_error_text(str(err)),
            prompt_tokens=_positive(row.get("num_input_tokens")),
            output_tokens=None,
        )
    else:
        text = row.get("generated_text") or ""
        n_gen = int(row.get("num_generated_tokens") or 0)
        out.update(
            response=text,
            finish_reason=finish_reason_of(text, n_gen, max_tokens),
            teacher_error=None,
            prompt_tokens=_positive(row.get("num_input_tokens")),
            output_tokens=n_gen,
        )
    return out


def postprocess_row(row: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """Postprocess of the vLLM processor (successful rows only; failed ones bypass it).
    Returns only the output columns so the heavy intermediates (messages, image URL, token ids)
    are dropped here and never converted to Arrow again."""
    return normalise_output(row, max_tokens)


def normalise_table(table: pa.Table, max_tokens: int | None) -> pa.Table:
    """Final batch stage: both row shapes -> exactly OUT_SCHEMA (UNIT columns + TEACHER_OUT)."""
    keep = [c for c in (*UNIT_NAMES, *TEACHER_NAMES, FOLLOWERS_COLUMN, ERROR_COLUMN, "num_input_tokens",
                        "generated_text", "num_generated_tokens") if c in table.column_names]
    rows = table.select(keep).to_pylist()
    out = []
    for r in rows:
        if r.get(ERROR_COLUMN):  # a failed / skipped row: still the raw __data dict
            out.append(normalise_output(r, max_tokens))
        else:  # already normalised by postprocess_row
            out.append({name: r.get(name) for name in (*UNIT_NAMES, *TEACHER_NAMES, FOLLOWERS_COLUMN)})
    return pa.Table.from_pylist(expand_followers(out, TEACHER_NAMES), schema=OUT_SCHEMA)


def _plain_followers(value: Any) -> list[dict[str, Any]]:
    """Followers as plain dicts (Ray may hand nested columns over as numpy arrays)."""
    if value is None:
        return []
    return [dict(f) for f in list(value)]


def _positive(v: Any) -> int | None:
    """Token counts: the engine reports 0 for a request it never ran; record that as unknown."""
    if v is None:
        return None
    n = int(v)
    return n if n > 0 else None
