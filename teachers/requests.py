"""Request keys: one teacher request per distinct thing the teacher sees.

The generation key names a *unit* (one source record x task): a COCO and an LVIS record of the
same image are two units with two keys, and both stay distinct rows of the dataset. But when they
show the teacher the same pixels and the same object table for the same task, the request is
byte-identical, and so is the answer it buys. The request key is a hash over exactly what the
teacher sees -- image content (vision teachers only), the rendered object table and its ids, the
task's prompt, the teacher identity -- and the stream sends one request per request key:

    collapse_requests  (before the engine)  the first unit of each key leads; the others ride on
                                            its row in `followers` (no image, no engine slot)
    expand_followers   (after the engine)   each follower becomes its own unit row again, with
                                            the leader's answer and `shares_answer_of` = leader

The sampling seed is drawn from the request key (teachers/vllm_rows.py), so the answer does not
depend on which unit happened to lead. Duplicates are found within one stream block; the plan
puts every record of an image into the same block (pipelines/build/plan.split_for_stream).

The hashing rule, `request_key()`, lives next to the generation key in pipelines/core/keys.py; the
teacher supplies what goes into it (its own rendering of the object table, the image digest).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

from pipelines.core.keys import request_key  # noqa: F401  (re-exported: one home for keys, core/keys.py)
from schemas.columns import FOLLOWER_FIELDS, FOLLOWERS_COLUMN, FOLLOWERS_TYPE, UNIT_SCHEMA

FOLLOWER_NAMES: tuple[str, ...] = tuple(n for n, _ in FOLLOWER_FIELDS)
LEADER_SCHEMA = pa.schema([*UNIT_SCHEMA, pa.field(FOLLOWERS_COLUMN, FOLLOWERS_TYPE)])


def collapse_requests(table: pa.Table, key_of: Any) -> pa.Table:
    """Units -> one row per distinct request (LEADER_SCHEMA). `key_of(row)` returns the unit's
    request key, or None for a unit that must not be merged (failed upstream: it never reaches
    the engine anyway). Row order is kept: a leader sits where its first unit was."""
    rows = table.select(UNIT_SCHEMA.names).to_pylist()
    leaders: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for r in rows:
        key = None if r.get("unit_error") else key_of(r)
        r["request_key"] = key
        r[FOLLOWERS_COLUMN] = []
        lead = leaders.get(key) if key is not None else None
        if lead is None:
            if key is not None:
                leaders[key] = r
            out.append(r)
        else:
            lead[FOLLOWERS_COLUMN].append({n: r[n] for n in FOLLOWER_NAMES})
    return pa.Table.from_pylist(out, schema=LEADER_SCHEMA)


def expand_followers(rows: Iterable[Mapping[str, Any]], answer_names: Iterable[str]) -> list[dict[str, Any]]:
    """Leader rows (unit + answer columns + followers) -> one row per unit. A follower gets the
    leader's answer and image size (same request, same image), and costs no tokens."""
    names = tuple(answer_names)
    out: list[dict[str, Any]] = []
    for r in rows:
        followers = r.get(FOLLOWERS_COLUMN) or []
        lead = {k: v for k, v in r.items() if k != FOLLOWERS_COLUMN}
        out.append(lead)
        for f in followers:
            row = {**lead, **dict(f), "teacher_image": None, "shares_answer_of": lead["gen_key"]}
            row.update({n: lead.get(n) for n in names})
            row["prompt_tokens"], row["output_tokens"] = None, None  # paid once, by the leader
            out.append(row)
    return out


def duplicate_count(keys: Iterable[str | None]) -> tuple[int, int]:
    """(requests, duplicates) among request keys: what a stream without de-duplication sends
    twice. None keys (no request) are not counted."""
    seen: set[str] = set()
    n = dup = 0
    for k in keys:
        if k is None:
            continue
        n += 1
        dup += k in seen
        seen.add(k)
    return n, dup
