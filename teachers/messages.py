"""Chat messages and the structured-output JSON schema for one unit's teacher request.

Message layout (OpenAI chat format), chosen so vLLM's automatic prefix caching reuses everything
but the last turn across all images of a task:

    [0]      {"role": "system", "content": str}          role + rules + output rules
    [1..6]   few-shot turns, alternating                 identical for every image of the task
             {"role": "user", "content": str}            an example's object table + "write k pairs"
             {"role": "assistant", "content": str}       the example's JSON response
    [-1]     {"role": "user", "content": [               this image only
                 {"type": "text", "text": str},          its object table + "write N pairs"
                 {"type": "image"},                      only when with_image; AFTER the text
             ]}

The image part is a bare placeholder ``{"type": "image"}``; the vLLM backend replaces it with the
real image (e.g. ``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}`` or
a PIL image part) -- this module never touches pixels. Few-shot turns use plain-string content
because every chat template accepts it and the user/assistant alternation suits templates that
require it. Bump MESSAGES_VERSION whenever the rendering below changes: it belongs to the
generation key as the "code version for prompt building".
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.core.keys import MESSAGES_VERSION  # noqa: F401  (re-exported: the salts live with the key)
from pipelines.core.object_table import render_object_table
from schemas.columns import ANSWER_FIELDS, ANSWER_PAIRS, TARGET_BOUNDS
from teachers.prompts import PromptSpec

IMAGE_PART: dict[str, str] = {"type": "image"}

_IMAGE_NOTE = (
    "The image is attached after the object table. Use it to check every statement you make; the "
    "table tells you which objects may be targets."
)
_TEXT_NOTE = (
    "You will NOT see the image, only its object table. Write only statements the table supports: "
    "categories, counts, attributes and positions from the boxes."
)
_EXAMPLE_NOTE = "Example (the image is not shown here, only its object table)."

# Minimum targets per pair by task, mirrored into the JSON schema so decoding can't violate it.


def _bullets(lines: tuple[str, ...]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def system_text(spec: PromptSpec, with_image: bool) -> str:
    return (
        f"{spec.system}\n\n{_IMAGE_NOTE if with_image else _TEXT_NOTE}\n\n"
        f"Rules for this task ({spec.task}):\n{_bullets(spec.rules)}\n\n"
        f"Output format:\n{_bullets(spec.output_rules)}"
    )


def _request_text(table_text: str, n_pairs: int) -> str:
    noun = "pair" if n_pairs == 1 else "pairs"
    return f"Object table:\n{table_text}\n\nWrite {n_pairs} {noun} as JSON."


def prefix_messages(spec: PromptSpec, with_image: bool) -> list[dict[str, Any]]:
    """The system message and few-shot turns: the same for every image of the task."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system_text(spec, with_image)}]
    for ex in spec.examples:
        pairs = ex["response"][ANSWER_PAIRS]
        table = render_object_table(list(ex["objects"]))
        msgs.append({"role": "user", "content": f"{_EXAMPLE_NOTE}\n{_request_text(table, len(pairs))}"})
        # Compact, key-ordered JSON: exactly the shape we want the model to imitate.
        answer = {ANSWER_PAIRS: [{k: p[k] for k in ANSWER_FIELDS} for p in pairs]}
        msgs.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    return msgs


def build_messages(spec: PromptSpec, table_text: str, n_pairs: int, with_image: bool) -> list[dict[str, Any]]:
    """Full chat for one unit: shared prefix + this image's user turn (see module doc)."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    parts: list[dict[str, Any]] = [{"type": "text", "text": _request_text(table_text, n_pairs)}]
    if with_image:
        parts.append(dict(IMAGE_PART))
    return [*prefix_messages(spec, with_image), {"role": "user", "content": parts}]


def messages_text(messages: list[dict[str, Any]]) -> str:
    """All text of a chat (image parts dropped), e.g. for approximate token counts."""
    out: list[str] = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out.extend(p["text"] for p in content if p.get("type") == "text")
    return "\n".join(out)


def answer_json_schema(task: str, subtypes: list[str], local_ids: list[int], n_pairs: int) -> dict[str, Any]:
    """JSON schema of the answer for guided decoding: ids limited to this image's local ids."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    ids = sorted({int(i) for i in local_ids})
    target: dict[str, Any] = {"type": "array", "items": {"type": "integer"}}
    if task == "hallucination" or not ids:
        # Refusals have no target; an empty enum is invalid JSON schema, so cap the length instead.
        target["maxItems"] = 0
        if ids:
            target["items"] = {"type": "integer", "enum": ids}
    else:
        target["items"] = {"type": "integer", "enum": ids}
        target["minItems"] = min(TARGET_BOUNDS[task][0], len(ids))
        target["maxItems"] = len(ids)
    pair = {
        "type": "object",
        "properties": {
            "instruction": {"type": "string"},
            "answer": {"type": "string"},
            "target_ids": target,
            "subtype": {"type": "string", "enum": list(subtypes)},
        },
        "required": list(ANSWER_FIELDS),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {ANSWER_PAIRS: {"type": "array", "items": pair, "minItems": 1, "maxItems": n_pairs}},
        "required": [ANSWER_PAIRS],
        "additionalProperties": False,
    }
