"""Text-only pair checks: `length`, `id_leak`, `duplicate_instruction`.

Each check returns None (pass) or a detail string (fail); the reason code is the function's
`CODE`-named constant, wired up in check_unit.py.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from pipelines.filters.context import PairView
from pipelines.filters.lexicon import dedup_key
from pipelines.filters.settings import FilterSettings

LENGTH = "length"
ID_LEAK = "id_leak"
DUPLICATE_INSTRUCTION = "duplicate_instruction"

# Internal ids leak as "object 3", "obj #2", "id 4", "ids: 3, 4", "instance no. 5", "#2", "[3]",
# "<3>" or "(id=3)". A bare number is fine ("2 dogs", "the number 7 jersey"): only a number tied
# to an id-ish word or bracketed on its own counts. Boxes "[12, 40, 88, 120]" are leaks too (the
# instruction must stand without the object table).
_ID_LEAK = re.compile(
    r"""
    \b(?:objects?|obj|ids?|items?|instances?|regions?|annotations?|ann|entr(?:y|ies)|labels?|masks?)
        \s*(?:\#|no\.?|number|nr\.?|[:=])?\s*\#?\d+\b
    | \#\s*\d+\b
    | \[\s*\d+(?:\s*,\s*\d+)*\s*\]
    | <\s*\d+\s*>
    """,
    re.IGNORECASE | re.VERBOSE,
)


def check_length(pair: PairView) -> str | None:
    """Instruction and answer present (non-blank) and not over-long."""
    settings: FilterSettings = pair.ctx.settings
    ins, ans = pair.instruction.strip(), pair.answer.strip()
    if len(ins) < settings.min_instruction_chars:
        return f"instruction has {len(ins)} chars < min_instruction_chars={settings.min_instruction_chars}"
    if len(ins) > settings.max_instruction_chars:
        return f"instruction has {len(ins)} chars > max_instruction_chars={settings.max_instruction_chars}"
    if len(ans) < settings.min_answer_chars:
        return f"answer has {len(ans)} chars < min_answer_chars={settings.min_answer_chars}"
    if len(ans) > settings.max_answer_chars:
        return f"answer has {len(ans)} chars > max_answer_chars={settings.max_answer_chars}"
    return None


def find_id_leak(text: str) -> str | None:
    """The first id-like fragment of `text`, or None."""
    m = _ID_LEAK.search(text)
    return m.group(0) if m else None


def check_id_leak(pair: PairView) -> str | None:
    """Neither the instruction nor the answer mentions internal object ids."""
    for field, text in (("instruction", pair.instruction), ("answer", pair.answer)):
        leak = find_id_leak(text)
        if leak is not None:
            return f"{field} mentions an internal id: {leak!r}"
    return None


def similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """difflib ratio of two normalised word sequences (1.0 = identical)."""
    if a == b:
        return 1.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def check_duplicate(
    key: tuple[str, ...],
    targets: frozenset[int],
    earlier: list[tuple[int, tuple[str, ...], frozenset[int]]],
    threshold: float,
    same_targets_only: bool = True,
) -> str | None:
    """`key` (a dedup_key word sequence) is not a near-duplicate of an earlier accepted instruction of the unit.

    Only accepted pairs count as `earlier`: a good pair after a rejected twin is kept, so the unit
    still yields one copy. An identical normalised instruction is always a duplicate (and with
    other targets a contradiction); a merely similar one only when it has the same targets, unless
    `same_targets_only` is off: "the red cup by the laptop" vs "the blue cup by the laptop" with
    different targets is a useful contrastive pair, not a repeat.
    """
    for idx, other, other_targets in earlier:
        if key == other:
            return f"same normalised instruction as pair {idx}"
        if same_targets_only and targets != other_targets:
            continue
        sm = SequenceMatcher(None, key, other, autojunk=False)
        # real_quick_ratio/quick_ratio are cheap upper bounds: skip the full ratio when they are low.
        if sm.real_quick_ratio() < threshold or sm.quick_ratio() < threshold:
            continue
        r = sm.ratio()
        if r >= threshold:
            return f"near-duplicate of pair {idx} (similarity {r:.2f} >= {threshold})"
    return None


__all__ = [
    "LENGTH",
    "ID_LEAK",
    "DUPLICATE_INSTRUCTION",
    "check_length",
    "check_id_leak",
    "check_duplicate",
    "dedup_key",
    "find_id_leak",
    "similarity",
]
