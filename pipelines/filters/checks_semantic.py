"""Pair checks that compare what the instruction names with the annotations:
`part_parent_mismatch` (naming half) and `present_category` (granularity: checks_granularity.py).

Category mentions come from pipelines/filters/lexicon.py (knowledge-table names, plurals,
synonyms, group words). When an instruction names nothing the table knows, a check that needs a
name either passes (granularity: nothing to compare) or rejects (present_category, part parent:
the claim cannot be verified) — see docs/filters.md for which and why.
"""

from __future__ import annotations

from pipelines.filters.context import PairView

PRESENT_CATEGORY = "present_category"


def _fmt(cats: frozenset[str] | set[str], limit: int = 4) -> str:
    names = sorted(cats)
    more = f", +{len(names) - limit}" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------- part_parent_mismatch (naming)
def check_part_parent_named(pair: PairView) -> str | None:
    """Part task: the object the instruction names is the parent of the target parts.

    The first category mention (ignoring words that are the parts' own names, e.g. "mirror") is the
    object the part phrase hangs on ("the handle of the cup", "the cup's handle", "the cup handle"),
    so it must cover a target's parent; and every target's parent must be named somewhere (by its
    name, a synonym, plural or a group word such as "vehicle"). A part task whose instruction names
    no object at all is rejected: Ground-V part targets are parts "whose parent is named".
    """
    ctx = pair.ctx
    if ctx.task != "part":
        return None
    parents: dict[int, str] = {}
    for i in pair.target_ids:
        row = ctx.by_local[i]
        if row.is_part and row.parent_local_id is not None:
            parents[i] = ctx.category(row.parent_local_id)
    if not parents:
        return None
    part_names = {ctx.lex.canonical(ctx.by_local[i].name) for i in parents}
    parent_cats = set(parents.values())
    mentions = [m for m in pair.mentions if not (m.term.categories & part_names) or (m.term.categories & parent_cats)]
    if not mentions:
        return f"instruction names no object; the parts belong to: {_fmt(parent_cats)}"
    head = mentions[0]
    if not head.term.categories & parent_cats:
        return f"instruction names {head.text!r} but the target parts belong to: {_fmt(parent_cats)}"
    for i, cat in parents.items():
        if not any(cat in m.term.categories for m in mentions):
            return f"part {i} belongs to a {cat}, which the instruction does not name"
    return None


# -------------------------------------------------------------------------- present_category
def check_present_category(pair: PairView) -> str | None:
    """Object hallucination: the named (first-mentioned) object is verified absent.

    The head noun is what the instruction asks for ("the giraffe next to the bench": giraffe);
    later mentions are context and may be present. Rejected when the head could refer to a category
    in the image (any reading of a synonym, any member of a group word), to a not-exhaustively
    annotated category (LVIS/PACO: never a negative), or when it is not verified absent at all (only
    `absent_categories` count; a group word needs all its members verified absent).
    """
    ctx = pair.ctx
    if ctx.task != "hallucination" or pair.subtype != "object":
        return None
    if not pair.mentions:
        return "instruction names no known category, so its absence cannot be verified"
    head = pair.mentions[0]
    cats = head.term.categories
    present = cats & ctx.present
    if present:
        return f"{head.text!r} refers to {_fmt(present)}, which is in the image"
    partial = cats & ctx.not_exhaustive
    if partial:
        return f"{head.text!r} refers to {_fmt(partial)}, not exhaustively annotated: not a valid negative"
    absent = cats & ctx.absent
    if head.term.group:
        unverified = cats - absent
        if unverified:
            return f"{head.text!r} covers {_fmt(unverified)}, not verified absent"
    elif not absent:
        return f"{head.text!r} ({_fmt(cats)}) is not verified absent for this image"
    return None
