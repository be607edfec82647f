"""Check stage (CPU actors): teacher responses -> accepted samples, rejects, errors, ledger rows.

Each unit ends in exactly one outcome: `accepted` (>= 1 accepted pair), `rejected` (a response
that yielded no accepted pair) or `error` (no checkable response: bad image/annotations, teacher
failure). Its ledger row (kind `raw`) keeps the raw response so filters can be re-run later.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import pyarrow as pa

from pipelines.core.knowledge import load_knowledge
from pipelines.core.resources import Resources
from pipelines.filters.check_unit import check_unit
from pipelines.filters.settings import FilterSettings, coerce_settings, filter_version
from schemas.columns import (
    OUTCOME_ACCEPTED,
    OUTCOME_ERROR,
    OUTCOME_REJECTED,
    UNIT_RESULT_SCHEMA,
)


def sample_id(gen_key: str, pair_index: int) -> str:
    return hashlib.sha256(f"{gen_key}:{pair_index}".encode()).hexdigest()[:32]


def teacher_error_reason(message: str) -> str:
    """Reason code for a teacher failure: a `code: text` prefix if the backend gave one."""
    head = message.split(":", 1)[0].strip()
    if head and head.replace("_", "").isalnum() and head.islower() and len(head) <= 32:
        return head
    return "teacher_failed"


def error_row(unit: Mapping[str, Any], stage: str, reason: str, text: str, teacher: str) -> dict[str, Any]:
    return {
        "gen_key": unit["gen_key"], "source": unit["source"], "image_id": unit["image_id"],
        "image_uri": unit["image_uri"], "task": unit["task"], "stage": stage, "reason": reason,
        "error": text, "prompt_hash": unit["prompt_hash"], "teacher": teacher,
    }


def _sample_row(unit: Mapping[str, Any], p: Any, teacher: str, fversion: str) -> dict[str, Any]:
    return {
        "sample_id": sample_id(unit["gen_key"], p.pair_index), "gen_key": unit["gen_key"],
        "source": unit["source"], "image_id": unit["image_id"], "image_uri": unit["image_uri"],
        "width": unit["width"], "height": unit["height"], "task": unit["task"],
        "subtype": p.subtype, "instruction": p.instruction, "answer": p.answer,
        "target_ids": list(p.target_ann_ids), "mask": p.mask, "bboxes": p.bboxes,
        "prompt_hash": unit["prompt_hash"], "teacher": teacher, "filter_version": fversion,
    }


def _reject_row(unit: Mapping[str, Any], pair_index: int, reason: str, detail: str, teacher: str, fversion: str,
                r: Any = None) -> dict[str, Any]:
    """A reject of one pair (r given) or of the whole response (pair_index -1: keeps the raw text)."""
    return {
        "gen_key": unit["gen_key"], "source": unit["source"], "image_id": unit["image_id"],
        "task": unit["task"], "pair_index": pair_index, "reason": reason, "detail": detail,
        "subtype": getattr(r, "subtype", None), "instruction": getattr(r, "instruction", None),
        "answer": getattr(r, "answer", None),
        "target_local_ids": list(r.target_local_ids) if getattr(r, "target_local_ids", None) is not None else None,
        "raw_response": unit["response"] if pair_index < 0 else None,
        "prompt_hash": unit["prompt_hash"], "teacher": teacher, "filter_version": fversion,
    }


def _unit_errors(unit: Mapping[str, Any], teacher: str) -> list[dict[str, Any]]:
    """The error row of a unit that failed before the checks (image, annotation, teacher), if any."""
    if unit.get("unit_error"):
        reason = unit["unit_error"]
        stage = "annotations" if reason.startswith("annotation:") else (
            "read" if reason in ("missing_image", "read_failed", "unsafe_path") else "decode")
        return [error_row(unit, stage, reason.removeprefix("annotation:"),
                          unit.get("unit_error_detail") or reason, teacher)]
    if unit.get("teacher_error") is not None or unit.get("response") is None:
        msg = unit.get("teacher_error") or "teacher returned no response"
        return [error_row(unit, "teacher", teacher_error_reason(msg), msg, teacher)]
    return []


def check_one(
    unit: Mapping[str, Any], settings: FilterSettings, knowledge: Any, teacher: str, fversion: str
) -> dict[str, Any]:
    """One unit (+ teacher output) -> one UNIT_RESULT row."""
    samples: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    errors = _unit_errors(unit, teacher)
    if not errors:
        try:
            result = check_unit(unit, unit["response"], unit.get("finish_reason"), settings, knowledge)
        except (ValueError, KeyError, TypeError) as exc:  # a broken annotation the reader let through
            errors.append(error_row(unit, "check", "check_failed", f"{type(exc).__name__}: {exc}"[:500], teacher))
        else:
            samples = [_sample_row(unit, p, teacher, fversion) for p in result.accepted]
            rejects = [_reject_row(unit, r.pair_index, r.reason, r.detail, teacher, fversion, r)
                       for r in result.rejected]
            if not samples and not rejects:  # a valid but empty answer ({"pairs": []}): still one outcome
                rejects.append(_reject_row(unit, -1, "no_pairs", "the response holds no pairs", teacher, fversion))
    outcome = OUTCOME_ERROR if errors else (OUTCOME_ACCEPTED if samples else OUTCOME_REJECTED)
    raw = {
        "gen_key": unit["gen_key"], "source": unit["source"], "image_id": unit["image_id"],
        "image_uri": unit["image_uri"], "task": unit["task"], "image_identity": unit["image_identity"],
        "ann_hash": unit["ann_hash"],
        "prompt_hash": unit["prompt_hash"], "teacher_hash": unit["teacher_hash"], "outcome": outcome,
        "error_reason": _error_reason(unit, errors),
        "n_accepted": len(samples), "n_rejected": len(rejects),
        "response": unit.get("response"), "finish_reason": unit.get("finish_reason"),
        "teacher_error": unit.get("teacher_error"), "prompt_tokens": unit.get("prompt_tokens"),
        "output_tokens": unit.get("output_tokens"), "teacher": teacher, "filter_version": fversion,
        "shares_answer_of": unit.get("shares_answer_of"),
    }
    return {"gen_key": unit["gen_key"], "task": unit["task"], "outcome": outcome, "samples": samples,
            "rejects": rejects, "errors": errors, "raw": [raw]}


def _error_reason(unit: Mapping[str, Any], errors: list[dict[str, Any]]) -> str | None:
    """The ledger's error reason: the unit error as planned (annotation errors keep their prefix),
    else `<stage>:<reason>` of the first error (teacher, check): never final, see core/keys."""
    if not errors:
        return None
    return unit.get("unit_error") or f"{errors[0]['stage']}:{errors[0]['reason']}"


class CheckUnits:
    """Ray Data actor stage: parse + mask-consistency filters over a batch of units."""

    # CPU bound (pycocotools in RLE space); pool bounds come from stream.check_actors_min/max.
    resources = Resources(num_cpus=1)

    def __init__(self, settings: Any, teacher_label: str) -> None:
        self.settings = coerce_settings(settings)
        self.knowledge = load_knowledge()
        self.teacher = teacher_label
        self.fversion = filter_version(self.settings, self.knowledge)

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = [c for c in batch.column_names if c != "teacher_image"]  # pixels are not needed here
        rows = [check_one(u, self.settings, self.knowledge, self.teacher, self.fversion)
                for u in batch.select(cols).to_pylist()]
        return pa.Table.from_pylist(rows, schema=UNIT_RESULT_SCHEMA)
