"""Per-task counters: computed per write batch on the workers, merged on the driver."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping

from schemas.columns import OUTCOME_ACCEPTED, OUTCOME_ERROR, OUTCOME_REJECTED

COUNTERS = ("units", "teacher_calls", "refiltered", "accepted", "rejected", "errors", "units_accepted",
            "units_rejected", "prompt_tokens", "output_tokens", "requests_saved")


def empty_task_stats() -> dict[str, Any]:
    return {**{c: 0 for c in COUNTERS}, "rejected_by_reason": {}, "errors_by_reason": {}}


def batch_stats(
    raw_rows: Iterable[Mapping[str, Any]],
    reject_rows: Iterable[Mapping[str, Any]],
    error_rows: Iterable[Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Counters per task for the rows one batch produced."""
    out: dict[str, dict[str, Any]] = {}

    def task(t: str) -> dict[str, Any]:
        return out.setdefault(t, empty_task_stats())

    for r in raw_rows:
        s = task(r["task"])
        s["units"] += 1
        # A call = a response, or a failed engine request; a replay unit with no answer is no call.
        err = r["teacher_error"]
        if r.get("shares_answer_of"):  # the answer of an identical request: no call of its own
            s["requests_saved"] += 1
        elif r["response"] is not None or (err is not None and not err.startswith("no_response")):
            s["teacher_calls"] += 1
        s["accepted"] += r["n_accepted"] or 0
        s["units_accepted"] += r["outcome"] == OUTCOME_ACCEPTED
        s["units_rejected"] += r["outcome"] == OUTCOME_REJECTED
        s["prompt_tokens"] += r["prompt_tokens"] or 0
        s["output_tokens"] += r["output_tokens"] or 0
        if r["outcome"] == OUTCOME_ERROR:
            s["errors"] += 1
    for r in reject_rows:
        s = task(r["task"])
        s["rejected"] += 1
        s["rejected_by_reason"][r["reason"]] = s["rejected_by_reason"].get(r["reason"], 0) + 1
    for r in error_rows:
        s = task(r["task"])
        s["errors_by_reason"][r["reason"]] = s["errors_by_reason"].get(r["reason"], 0) + 1
    return out


def merge_stats(into: dict[str, dict[str, Any]], other: Mapping[str, Mapping[str, Any]]) -> None:
    for t, s in other.items():
        dst = into.setdefault(t, empty_task_stats())
        for c in COUNTERS:
            dst[c] += s.get(c, 0)
        for key in ("rejected_by_reason", "errors_by_reason"):
            merged = Counter(dst[key])
            merged.update(s.get(key, {}))
            dst[key] = dict(merged)


def totals(per_task: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    out = empty_task_stats()
    for s in per_task.values():
        for c in COUNTERS:
            out[c] += s.get(c, 0)
        for key in ("rejected_by_reason", "errors_by_reason"):
            for reason, n in s.get(key, {}).items():
                out[key][reason] = out[key].get(reason, 0) + n
    return out
