"""Pair checks on the target id list: `unknown_id`, `duplicate_id`, `target_count`,
`crowd_target`, `not_a_part`. All pure functions of the pair and its unit; None = pass."""

from __future__ import annotations

from collections import Counter

from pipelines.filters.context import PairView
from schemas.columns import TARGET_BOUNDS

UNKNOWN_ID = "unknown_id"
DUPLICATE_ID = "duplicate_id"
TARGET_COUNT = "target_count"
CROWD_TARGET = "crowd_target"
NOT_A_PART = "not_a_part"



def check_unknown_id(pair: PairView) -> str | None:
    """Every target id is a local id of the unit's object table."""
    unknown = [i for i in pair.target_ids if i not in pair.ctx.by_local]
    if unknown:
        return f"target ids {unknown} are not in the object table (ids 1..{len(pair.ctx.rows)})"
    return None


def check_duplicate_id(pair: PairView) -> str | None:
    """No target id is listed twice (a sign the teacher lost track of which objects it meant)."""
    if len(set(pair.target_ids)) == len(pair.target_ids):
        return None
    dups = sorted(i for i, n in Counter(pair.target_ids).items() if n > 1)
    if dups:
        return f"target ids {dups} listed more than once"
    return None


def check_target_count(pair: PairView) -> str | None:
    """The number of targets fits the task (hallucination 0, multi_object >= 2, others >= 1)."""
    lo, hi = TARGET_BOUNDS[pair.ctx.task]
    n = len(pair.target_ids)
    if n < lo or (hi is not None and n > hi):
        want = f"exactly {lo}" if lo == hi else f">= {lo}"
        return f"{pair.ctx.task} needs {want} targets, got {n}"
    return None


def check_crowd_target(pair: PairView) -> str | None:
    """No target is a crowd region (iscrowd masks cover many instances at once, coarsely)."""
    crowd = [i for i in pair.target_ids if pair.ctx.by_local[i].iscrowd]
    if crowd:
        return f"targets {crowd} are crowd regions"
    return None


def check_not_a_part(pair: PairView) -> str | None:
    """Part task: every target is a part annotation."""
    if pair.ctx.task != "part":
        return None
    wholes = [i for i in pair.target_ids if not pair.ctx.by_local[i].is_part]
    if wholes:
        names = ", ".join(f"{i} ({pair.ctx.by_local[i].name})" for i in wholes)
        return f"part task targets whole objects: {names}"
    return None
