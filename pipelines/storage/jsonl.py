"""Answers made elsewhere arrive as JSONL (teacher responses, verifier verdicts): one reader for
both, so a malformed file is reported the same way — file, line, what is wrong — whichever it is."""

from __future__ import annotations

import json
from typing import Any, Iterator


def jsonl_objects(data: bytes, uri: str, error: type[Exception]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for every non-blank line; `error(message)` for text that is not UTF-8 or a
    line that is not a JSON object. `where` ("<uri> line N") is for the caller's own field checks."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{uri}: not UTF-8 text ({exc})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{uri} line {lineno}"
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise error(f"{where}: not a JSON object ({exc})") from None
        if not isinstance(rec, dict):
            raise error(f"{where}: expected a JSON object, got {type(rec).__name__}")
        yield where, rec
