"""Response-level checks: is the raw text a complete `{"pairs": [...]}` document, and pair shapes.

Codes decided here: `truncated`, `unparseable`, `schema` (the whole response), and the per-pair
`schema` check. Everything is pure: text in, parsed value or (reason, detail) out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from schemas.columns import ANSWER_FIELDS, ANSWER_PAIRS, TASK_SUBTYPES, is_int64

UNPARSEABLE = "unparseable"
TRUNCATED = "truncated"
SCHEMA = "schema"

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?|\n?\s*```\s*$")
_PAIR_KEYS = frozenset(ANSWER_FIELDS)


@dataclass(frozen=True)
class ResponseReject:
    reason: str
    detail: str


def _unclosed(text: str) -> bool:
    """True when the text ends inside a string or with an open object/array: a cut document."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return in_str or depth > 0


def _strip_wrappers(text: str) -> str:
    # API teachers like ```json fences and a sentence before the object; the object itself is what
    # structured-output backends return, so only cut down to the first '{' .. last '}'.
    t = _FENCE.sub("", text).strip()
    start = t.find("{")
    if start < 0:
        return t
    end = t.rfind("}")
    return t[start:] if end < start else t[start : end + 1]


def parse_response(response: str | None, finish_reason: str | None, lenient: bool = True) -> list[Any] | ResponseReject:
    """The `pairs` list of a response, or the whole-response reject.

    Order: a `length` finish is `truncated` whatever the text (the teacher was cut off, so even a
    parseable prefix may be missing pairs it meant to write); then JSON errors (`truncated` when the
    document is visibly cut, else `unparseable`); then the top-level shape.
    """
    if finish_reason == "length":
        return ResponseReject(TRUNCATED, "finish_reason is 'length' (max_tokens reached)")
    if response is None or not str(response).strip():
        return ResponseReject(UNPARSEABLE, "empty response")
    text = str(response).strip()
    candidate = _strip_wrappers(text) if lenient else text
    try:
        doc = json.loads(candidate)
    except (json.JSONDecodeError, RecursionError) as e:
        if candidate.lstrip().startswith(("{", "[")) and _unclosed(candidate):
            return ResponseReject(TRUNCATED, f"JSON ends before it is closed: {e.msg} at char {e.pos}")
        return ResponseReject(UNPARSEABLE, f"not JSON: {getattr(e, 'msg', e)}")
    if not isinstance(doc, dict):
        return ResponseReject(UNPARSEABLE, f"top level is a {type(doc).__name__}, not an object")
    if ANSWER_PAIRS not in doc:
        return ResponseReject(UNPARSEABLE, f"no {ANSWER_PAIRS!r} key in the top-level object")
    extra = sorted(set(doc) - {ANSWER_PAIRS})
    if extra:
        return ResponseReject(SCHEMA, f"unexpected top-level keys {extra}")
    pairs = doc[ANSWER_PAIRS]
    if not isinstance(pairs, list):
        return ResponseReject(SCHEMA, f"{ANSWER_PAIRS!r} is a {type(pairs).__name__}, not a list")
    if not pairs:
        return ResponseReject(SCHEMA, f"{ANSWER_PAIRS!r} is empty")
    return pairs


def check_pair_schema(pair: Any, task: str) -> str | None:
    """None when the pair has exactly the four fields with the right types, else why not."""
    if not isinstance(pair, dict):
        return f"pair is a {type(pair).__name__}, not an object"
    keys = set(pair)
    if keys != _PAIR_KEYS:
        missing, extra = sorted(_PAIR_KEYS - keys), sorted(keys - _PAIR_KEYS)
        parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else [])
        return "; ".join(parts)
    for k in ("instruction", "answer", "subtype"):
        if not isinstance(pair[k], str):
            return f"{k!r} is a {type(pair[k]).__name__}, not a string"
    ids = pair["target_ids"]
    # bool is an int subclass in Python; `true` as an id is a malformed answer, not id 1.
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        return "'target_ids' is not a list of integers"
    if not all(is_int64(i) for i in ids):  # a 20-digit id must reject this pair, not fail the build
        return "'target_ids' has an id outside the 64-bit integer range"
    allowed = TASK_SUBTYPES[task]
    if pair["subtype"] not in allowed:
        return f"subtype {pair['subtype']!r} is not one of {list(allowed)} for task {task!r}"
    return None


def loose_fields(pair: Any) -> tuple[str | None, str | None, str | None, list[int]]:
    """Best-effort (subtype, instruction, answer, int target ids) of a malformed pair, for rejects."""
    if not isinstance(pair, dict):
        return None, None, None, []

    def _s(v: Any) -> str | None:
        return v if isinstance(v, str) else (None if v is None else json.dumps(v)[:500])

    ids = pair.get("target_ids")
    ints = [i for i in ids if is_int64(i)] if isinstance(ids, list) else []
    return _s(pair.get("subtype")), _s(pair.get("instruction")), _s(pair.get("answer")), ints
