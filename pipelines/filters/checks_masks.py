"""Pair checks on the target masks, all in RLE space: `mask_too_small` and the geometric half of
`part_parent_mismatch` (a part must lie inside its parent's mask)."""

from __future__ import annotations

from pipelines.filters.context import PairView

MASK_TOO_SMALL = "mask_too_small"
PART_PARENT_MISMATCH = "part_parent_mismatch"


def check_mask_too_small(pair: PairView) -> str | None:
    """Every target's mask area (pixels, from the RLE) is at least `min_mask_area`."""
    ctx = pair.ctx
    limit = ctx.settings.min_mask_area
    small = [(i, ctx.geometry.area(i)) for i in pair.target_ids if ctx.geometry.area(i) < limit]
    if small:
        listed = ", ".join(f"{i}: {a:.0f} px" for i, a in small)
        return f"target masks below min_mask_area={limit}: {listed}"
    return None


def check_part_inside_parent(pair: PairView) -> str | None:
    """Part task: each target part has its parent in the image and lies inside the parent's mask.

    intersection / part area < part_in_parent_min means the part and object annotations disagree
    (wrong obj_ann_id, shifted polygon): the answer mask would teach a wrong part, so reject.
    """
    ctx = pair.ctx
    if ctx.task != "part":
        return None
    need = ctx.settings.part_in_parent_min
    for i in pair.target_ids:
        row = ctx.by_local[i]
        if not row.is_part:
            continue
        parent = row.parent_local_id
        if parent is None:
            return f"part {i} ({row.name}): its parent annotation is not in the image"
        frac = ctx.geometry.inside_fraction(i, parent)
        if frac < need:
            return (
                f"part {i} ({row.name}) lies {frac:.0%} inside its parent {parent} "
                f"({ctx.by_local[parent].name}) < part_in_parent_min={need:.0%}"
            )
    return None
