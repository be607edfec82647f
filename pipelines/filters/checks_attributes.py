"""Instruction words checked against annotated facts of the targets themselves.

`part_name_mismatch` (part task): every target part's own PACO part name — or a synonym from
knowledge.yaml `part_synonyms`, or a plural — appears in the instruction. "the handle of the mug"
targeting the mug's rim names a part of another kind.

`attribute_mismatch`: where the source annotates attributes (PACO colour, material, pattern /
marking, transparency), an attribute word placed before a noun that denotes a target ("the red
mug", "the wooden chair's leg", "the striped handle") must not contradict them: the target has
annotated values of that attribute type and the word is none of them (light/dark shades count as
the base colour). Targets without annotations of that type (most COCO/LVIS, ~30 % of PACO boxes)
are never contradicted; predicative uses ("the mug that is red") are not parsed.
"""

from __future__ import annotations

from pipelines.filters.context import PairView

PART_NAME_MISMATCH = "part_name_mismatch"
ATTRIBUTE_MISMATCH = "attribute_mismatch"

# Instruction word -> (PACO attribute type, canonical value). Values are PACO names with
# light_/dark_ shades folded into the base colour.
_COLOURS = "black blue brown green grey orange pink purple red white yellow".split()
_MATERIALS = {
    "stone": "stone", "wood": "wood", "wooden": "wood", "rattan": "rattan", "fabric": "fabric",
    "cloth": "fabric", "crochet": "crochet", "wool": "wool", "woollen": "wool", "woolen": "wool",
    "leather": "leather", "velvet": "velvet", "metal": "metal", "metallic": "metal", "steel": "metal",
    "paper": "paper", "plastic": "plastic", "glass": "glass", "ceramic": "ceramic", "porcelain": "ceramic",
}  # fmt: skip
_PATTERNS = ["plain", "striped", "dotted", "checkered", "woven", "studded", "perforated", "floral"]
_TRANSPARENCY = ["opaque", "translucent", "transparent"]
ATTRIBUTE_WORDS: dict[str, tuple[str, str]] = (
    {c: ("color", c) for c in _COLOURS}
    | {"gray": ("color", "grey")}
    | {w: ("material", v) for w, v in _MATERIALS.items()}
    | {p: ("pattern_marking", p) for p in _PATTERNS}
    | {"checked": ("pattern_marking", "checkered"), "polka": ("pattern_marking", "dotted")}
    | {t: ("transparency", t) for t in _TRANSPARENCY}
    | {"clear": ("transparency", "transparent"), "see": ("transparency", "transparent")}
)
ATTRIBUTE_TYPES: dict[str, str] = {v: t for t, v in ATTRIBUTE_WORDS.values()}


def _tokens_of(text: str) -> tuple[str, ...]:
    return tuple(text.replace("_", " ").split())


def _has_phrase(toks: list[str], phrase: tuple[str, ...], longer: list[tuple[str, ...]]) -> bool:
    """`phrase` occurs in `toks`, not as the tail of a longer name ("body" inside "inner body")."""
    n = len(phrase)
    for i in range(len(toks) - n + 1):
        if tuple(toks[i : i + n]) != phrase:
            continue
        if not any(len(lp) > n and tuple(toks[max(0, i + n - len(lp)) : i + n]) == lp for lp in longer):
            return True
    return False


# ------------------------------------------------------------------------------ part_name_mismatch
def check_part_name(pair: PairView) -> str | None:
    """See module doc."""
    ctx = pair.ctx
    if ctx.task != "part":
        return None
    toks = pair.tokens
    for i in pair.target_ids:
        row = ctx.by_local[i]
        if not row.is_part:
            continue
        names = ctx.knowledge.part_names(row.name)
        parent = ctx.by_local[row.parent_local_id].name if row.parent_local_id is not None else ""
        longer = [_tokens_of(p) for p in ctx.knowledge.parts(parent) if p not in names]
        if not any(_has_phrase(toks, _tokens_of(n), longer) for n in names):
            return f"target {i} is a {row.name!r}, which the instruction does not name (nor a synonym)"
    return None


# ------------------------------------------------------------------------------ attribute_mismatch
def annotated(values: tuple[str, ...] | list[str]) -> dict[str, set[str]]:
    """PACO attribute names of one object -> {type: {canonical values}}; unknown names are skipped."""
    out: dict[str, set[str]] = {}
    for raw in values:
        v = raw.replace("_", " ").strip().lower()
        for shade in ("light ", "dark "):
            if v.startswith(shade):
                v = v[len(shade) :]
        v = "grey" if v == "gray" else v
        kind = ATTRIBUTE_TYPES.get(v)
        if kind is not None:
            out.setdefault(kind, set()).add(v)
    return out


def _noun_targets(pair: PairView, k: int) -> list[int] | None:
    """Targets denoted by the noun starting at token k (a target's own name or a lexicon mention)."""
    ctx, toks = pair.ctx, pair.tokens
    hit = [
        i
        for i in pair.target_ids
        if tuple(toks[k : k + len(_tokens_of(ctx.by_local[i].name))]) == _tokens_of(ctx.by_local[i].name)
    ]
    if hit:
        return hit
    for m in pair.mentions:
        if m.start == k:
            return [i for i in pair.target_ids if ctx.category(i) in m.term.categories]
    return None


def _attached(pair: PairView, j: int) -> list[int]:
    """Targets the attribute word at token j modifies: the first noun after it within the window."""
    toks, window = pair.tokens, pair.ctx.settings.attribute_window
    for k in range(j + 1, min(len(toks), j + 1 + window)):
        # Other adjectives may sit in between ("the red glossy mug"); the first noun ends the scan.
        got = _noun_targets(pair, k)
        if got is not None:
            return got
    return []


def check_attributes(pair: PairView) -> str | None:
    """See module doc."""
    ctx = pair.ctx
    if not pair.target_ids or not any(ctx.by_local[i].attributes for i in pair.target_ids):
        return None
    toks = pair.tokens
    for j, t in enumerate(toks):
        word = ATTRIBUTE_WORDS.get(t)
        if word is None or (t == "see" and toks[j + 1 : j + 2] != ["through"]):
            continue
        kind, value = word
        for i in _attached(pair, j):
            have = annotated(ctx.by_local[i].attributes).get(kind)
            if have and value not in have:
                return f"{t!r} describes target {i} ({ctx.by_local[i].name}), annotated {kind} {sorted(have)}"
    return None
