"""One unit + its raw teacher response -> accepted pairs (with union masks) and rejected pairs.

Response-level failures reject the whole response once (`pair_index` -1): `truncated`,
`unparseable`, `schema` (top level). Otherwise every pair runs the checks of `PAIR_CHECKS` in
order and the first failing check's code is the pair's reason (cheap, certain checks first; then
checks that need more context; `duplicate_instruction` last so only pairs that would otherwise be
accepted are compared). docs/filters.md describes every code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pipelines.filters import (
    checks_attributes,
    checks_granularity,
    checks_ids,
    checks_masks,
    checks_reference,
    checks_semantic,
    checks_spatial,
    checks_text,
    parse,
)
from pipelines.filters.context import GeometryFactory, PairView, UnitContext
from pipelines.filters.settings import FilterSettings, coerce_settings
from schemas.columns import TASK_SUBTYPES

# Response-level codes, in the order they are decided (see parse.parse_response).
RESPONSE_CODES: tuple[str, ...] = (parse.TRUNCATED, parse.UNPARSEABLE, parse.SCHEMA)

PairCheck = Callable[[PairView], "str | None"]

# Pair-level checks after the per-pair `schema` check, in order; the first failure wins.
PAIR_CHECKS: tuple[tuple[str, PairCheck], ...] = (
    (checks_text.LENGTH, checks_text.check_length),
    (checks_text.ID_LEAK, checks_text.check_id_leak),
    (checks_ids.UNKNOWN_ID, checks_ids.check_unknown_id),
    (checks_ids.DUPLICATE_ID, checks_ids.check_duplicate_id),
    (checks_ids.TARGET_COUNT, checks_ids.check_target_count),
    (checks_ids.CROWD_TARGET, checks_ids.check_crowd_target),
    (checks_masks.MASK_TOO_SMALL, checks_masks.check_mask_too_small),
    (checks_reference.NO_REFERENT, checks_reference.check_no_referent),
    (checks_ids.NOT_A_PART, checks_ids.check_not_a_part),
    (checks_masks.PART_PARENT_MISMATCH, checks_masks.check_part_inside_parent),
    (checks_masks.PART_PARENT_MISMATCH, checks_semantic.check_part_parent_named),
    (checks_attributes.PART_NAME_MISMATCH, checks_attributes.check_part_name),
    (checks_attributes.ATTRIBUTE_MISMATCH, checks_attributes.check_attributes),
    (checks_semantic.PRESENT_CATEGORY, checks_semantic.check_present_category),
    (checks_granularity.GRANULARITY, checks_granularity.check_granularity),
    (checks_reference.AMBIGUOUS_REFERENCE, checks_reference.check_ambiguous_reference),
    (checks_spatial.SPATIAL, checks_spatial.check_spatial),
)


def reason_codes() -> list[str]:
    """Every reason code a reject can carry, in decision order (response-level codes first)."""
    codes = list(RESPONSE_CODES)
    for code, _ in PAIR_CHECKS:
        if code not in codes:
            codes.append(code)
    codes.append(checks_text.DUPLICATE_INSTRUCTION)
    return codes


@dataclass
class AcceptedPair:
    pair_index: int
    subtype: str
    instruction: str
    answer: str
    target_ann_ids: list[int]  # SOURCE annotation ids, in the teacher's target order
    mask: dict[str, Any]  # {"size": [h, w], "counts": str}: union of the targets (empty: all zero)
    bboxes: list[list[float]]  # COCO [x, y, w, h] per target (from the mask)


@dataclass
class RejectedPair:
    pair_index: int  # -1: the whole response
    reason: str
    detail: str
    subtype: str | None = None
    instruction: str | None = None
    answer: str | None = None
    target_local_ids: list[int] = field(default_factory=list)


@dataclass
class UnitCheck:
    accepted: list[AcceptedPair] = field(default_factory=list)
    rejected: list[RejectedPair] = field(default_factory=list)


def check_unit(
    unit: Mapping[str, Any],
    response: str | None,
    finish_reason: str | None,
    settings: FilterSettings,
    knowledge: Any,
    geometry_factory: GeometryFactory | None = None,
) -> UnitCheck:
    """Check one unit's raw teacher response (see module doc for order and semantics).

    `knowledge` is a `pipelines.core.knowledge.Knowledge`. `geometry_factory` swaps the mask backend
    (default: RLE, no decoding); only bench/filters.py passes another one.
    """
    task = str(unit["task"])
    if task not in TASK_SUBTYPES:
        raise ValueError(f"unit task {task!r} is not one of {list(TASK_SUBTYPES)}")
    s = coerce_settings(settings)
    out = UnitCheck()
    pairs = parse.parse_response(response, finish_reason, s.lenient_json)
    if isinstance(pairs, parse.ResponseReject):
        out.rejected.append(RejectedPair(-1, pairs.reason, pairs.detail))
        return out
    ctx = UnitContext(unit, s, knowledge, geometry_factory)
    kept: list[tuple[int, tuple[str, ...], frozenset[int]]] = []  # (pair index, dedup key, targets) of accepted
    for idx, raw in enumerate(pairs):
        if idx >= s.max_pairs:  # one reject row with the count, not one row per surplus pair
            out.rejected.append(RejectedPair(idx, parse.SCHEMA, f"{len(pairs) - idx} pairs beyond "
                                             f"max_pairs={s.max_pairs} (pairs {idx}..{len(pairs) - 1})"))
            break
        failed = _first_failure(idx, raw, task, ctx, kept)
        if failed is not None:
            subtype, instruction, answer, ids = parse.loose_fields(raw)
            out.rejected.append(RejectedPair(idx, failed[0], failed[1], subtype, instruction, answer, ids))
            continue
        ids = list(raw["target_ids"])  # schema-checked: a list of known, unique local ids
        out.accepted.append(
            AcceptedPair(
                pair_index=idx,
                subtype=raw["subtype"],
                instruction=raw["instruction"],
                answer=raw["answer"],
                target_ann_ids=[ctx.local_to_ann[i] for i in ids],
                mask=ctx.geometry.union(ids),
                bboxes=ctx.geometry.bboxes(ids),
            )
        )
    return out


def _first_failure(
    idx: int, raw: Any, task: str, ctx: UnitContext, kept: list[tuple[int, tuple[str, ...], frozenset[int]]]
) -> tuple[str, str] | None:
    """(code, detail) of the first failing pair check, or None; records accepted pairs in `kept`."""
    s = ctx.settings
    if idx >= s.max_pairs:
        return parse.SCHEMA, f"pair {idx} is beyond max_pairs={s.max_pairs}"
    problem = parse.check_pair_schema(raw, task)
    if problem is not None:
        return parse.SCHEMA, problem
    pair = PairView(idx, raw["instruction"], raw["answer"], raw["subtype"], list(raw["target_ids"]), ctx)
    for code, check in PAIR_CHECKS:
        detail = check(pair)
        if detail is not None:
            return code, detail
    key = checks_text.dedup_key(pair.instruction)
    targets = frozenset(pair.target_ids)
    detail = checks_text.check_duplicate(key, targets, kept, s.duplicate_similarity, s.duplicate_same_targets_only)
    if detail is not None:
        return checks_text.DUPLICATE_INSTRUCTION, detail
    kept.append((idx, key, targets))
    return None
