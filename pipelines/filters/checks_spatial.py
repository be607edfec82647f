"""`spatial`: explicit spatial / size superlatives must pick the object the masks say.

"the leftmost dog", "the dog on the far left", "the left one", "the largest cup", "the person at
the top" are checked against the non-crowd instances of the named category: the target must be
the extreme one by bbox-centre x / y or by RLE area (ties within `spatial_tolerance` /
`area_tolerance` count). Plain "on the left" / "to the right" is a superlative only between two
objects, so it is checked only when the category has exactly two instances. Relational uses ("on
top of the table", "to the left of the car") are not superlatives and are skipped.

Positions use the bbox centre (from `toBbox`, no decode); see geometry.py for why that suffices.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.filters.checks_granularity import NUMBER_WORDS, stated_count
from pipelines.filters.context import PairView
from pipelines.filters.lexicon import FILLER, Mention, tokens

SPATIAL = "spatial"


@dataclass(frozen=True)
class _Pattern:
    words: tuple[str, ...]
    axis: str  # x | y | area
    largest: bool  # True: the max value wins (rightmost, bottom, largest)
    prefer_next: bool  # bind to the following noun first ("leftmost dog") else the preceding one
    pair_only: bool = False  # only a superlative when there are exactly two candidates
    relational_if_of: bool = False  # "... of <noun>" turns it into a relation ("at the top of")


def _p(text: str, axis: str, largest: bool, prefer_next: bool, **kw: bool) -> _Pattern:
    return _Pattern(tuple(text.split()), axis, largest, prefer_next, **kw)


_PATTERNS: list[_Pattern] = []
for _w, _axis, _max in (
    ("leftmost|left most", "x", False),
    ("rightmost|right most", "x", True),
    ("topmost|top most|uppermost|upper most|highest", "y", False),
    ("bottommost|bottom most|lowermost|lower most|lowest", "y", True),
    ("largest|biggest", "area", True),
    ("smallest|tiniest", "area", False),
):
    _PATTERNS += [_p(w, _axis, _max, True) for w in _w.split("|")]
for _side, _axis, _max in (("left", "x", False), ("right", "x", True), ("top", "y", False), ("bottom", "y", True)):
    _PATTERNS += [
        _p(f"farthest to the {_side}", _axis, _max, False),
        _p(f"furthest to the {_side}", _axis, _max, False),
        _p(f"far {_side}", _axis, _max, False),
        _p(f"farthest {_side}", _axis, _max, False),
        _p(f"furthest {_side}", _axis, _max, False),
        _p(f"very {_side}", _axis, _max, False),
        _p(f"{_side} one", _axis, _max, False),
    ]
_PATTERNS += [
    _p("at the top", "y", False, False, relational_if_of=True),
    _p("at the bottom", "y", True, False, relational_if_of=True),
    _p("upper one", "y", False, False),
    _p("lower one", "y", True, False),
]
for _side, _max in (("left", False), ("right", True)):
    for _prep in ("on", "to"):
        _PATTERNS.append(_p(f"{_prep} the {_side}", "x", _max, False, pair_only=True, relational_if_of=True))
# Longest first so "farthest to the left" wins over "to the left".
_PATTERNS.sort(key=lambda p: -len(p.words))
_BY_FIRST: dict[str, list[_Pattern]] = {}
for _pat in _PATTERNS:
    _BY_FIRST.setdefault(_pat.words[0], []).append(_pat)

_IMAGE_WORDS = frozenset({"image", "picture", "photo", "photograph", "frame", "scene", "view", "shot"})
_SIDE_NOUNS = frozenset({"side", "hand", "edge", "corner", "part", "half"})
_WINDOW = 6  # max tokens between a superlative and the noun it modifies
_SEPARATORS = frozenset({"and", "or", "plus"})
# Also harmless around a superlative: "the one furthest to the right", "the cap that belongs to the
# bottle on the far left".
_SPATIAL_FILLER = FILLER | frozenset({"one", "ones", "side", "most", "its", "their", "belongs", "belonging"})


def _relational(toks: list[str], end: int) -> bool:
    """At the top of the table is a relation; at the top of the image is still a position."""
    j = end
    while j < len(toks) and toks[j] in _SIDE_NOUNS:
        j += 1
    if j >= len(toks) or toks[j] != "of":
        return False
    rest = [t for t in toks[j + 1 : j + 4] if t not in ("the", "this", "that")]
    return not (rest and rest[0] in _IMAGE_WORDS)


def find_superlatives(toks: list[str]) -> list[tuple[int, int, _Pattern]]:
    """(start, end, pattern) of every superlative phrase in the tokens, left to right."""
    out: list[tuple[int, int, _Pattern]] = []
    i = 0
    while i < len(toks):
        hit = None
        for pat in _BY_FIRST.get(toks[i], ()):
            k = len(pat.words)
            if tuple(toks[i : i + k]) == pat.words:
                if pat.relational_if_of and _relational(toks, i + k):
                    continue
                hit = (i, i + k, pat)
                break
        if hit is None:
            i += 1
        else:
            out.append(hit)
            i = hit[1]
    return out


def _bind(start: int, end: int, prefer_next: bool, mentions: list[Mention]) -> Mention | None:
    after = [m for m in mentions if m.start >= end and m.start - end <= _WINDOW]
    before = [m for m in mentions if m.end <= start and start - m.end <= _WINDOW]
    nxt = after[0] if after else None
    prev = before[-1] if before else None
    return (nxt or prev) if prefer_next else (prev or nxt)


def _qualified(toks: list[str], start: int, end: int, noun: Mention, allowed: set[str]) -> bool:
    """Whether the noun phrase around a superlative restricts the comparison set.

    "the leftmost brown dog", "the largest dog on the sofa", "of the pets that purr, the one on the
    right" compare within a subset the annotations do not describe, so they are not checked. The
    phrase is the stretch between "and"/"or" separators around the superlative.
    """
    a = start
    while a > 0 and toks[a - 1] not in _SEPARATORS:
        a -= 1
    b = end
    while b < len(toks) and toks[b] not in _SEPARATORS:
        b += 1
    for j in range(a, b):
        if start <= j < end or noun.start <= j < noun.end:
            continue
        t = toks[j]
        if t not in _SPATIAL_FILLER and t not in allowed and t not in NUMBER_WORDS and not t.isdigit():
            return True
    return False


def check_spatial(pair: PairView) -> str | None:
    """Every unqualified superlative that modifies a target's category picks the extreme instance."""
    ctx = pair.ctx
    if not pair.target_ids:
        return None
    sups = find_superlatives(pair.tokens)
    if not sups or not pair.mentions:
        return None
    relevant = set(pair.target_ids)
    # For parts, "the handle of the leftmost mug" constrains the parent.
    relevant |= {
        ctx.by_local[i].parent_local_id
        for i in pair.target_ids
        if ctx.by_local[i].is_part and ctx.by_local[i].parent_local_id is not None
    }  # type: ignore[misc]
    # Part names of the targets (and their plurals) describe the part, not the compared parents.
    allowed: set[str] = set()
    for i in pair.target_ids:
        if ctx.by_local[i].is_part:
            words = tokens(ctx.by_local[i].name)
            allowed.update(words)
            allowed.update(w + "s" for w in words)
    geo = ctx.geometry
    s = ctx.settings
    for start, end, pat in sups:
        noun = _bind(start, end, pat.prefer_next, pair.mentions)
        if noun is None or _qualified(pair.tokens, start, end, noun, allowed):
            continue
        cands = ctx.instances(noun.term.categories)
        if len(cands) < 2 or (pat.pair_only and len(cands) != 2):
            continue
        hit = relevant.intersection(cands)
        if not hit:
            continue  # the superlative describes a reference object, not the target
        # "the three leftmost cups" / "the two cups that are lowest": the k most extreme ones.
        k = stated_count(pair.tokens, start) or stated_count(pair.tokens, noun.start) or 1
        if k > 1 and len(hit) != k:
            return f"{' '.join(pat.words)!r} {noun.text!r} is counted as {k} but {len(hit)} targets are among them"
        if pat.axis == "area":
            vals = {i: geo.area(i) for i in cands}
        else:
            axis = 0 if pat.axis == "x" else 1
            vals = {i: geo.center(i)[axis] for i in cands}
        ranked = sorted(vals.values(), reverse=pat.largest)
        best = ranked[min(k, len(ranked)) - 1]  # the k-th most extreme value
        if pat.axis == "area":
            tol = s.area_tolerance * best
        else:
            tol = s.spatial_tolerance * (ctx.width if pat.axis == "x" else ctx.height)
        # Within tolerance of the k-th extreme (or beyond it) counts as one of the k extremes.
        winners = {i for i, v in vals.items() if (v >= best - tol if pat.largest else v <= best + tol)}
        ok = hit <= winners if k > 1 else bool(hit & winners)
        if not ok:
            phrase = " ".join(pat.words)
            what = "area" if pat.axis == "area" else f"centre {pat.axis}"
            got = ", ".join(f"{i}: {vals[i]:.0f}" for i in sorted(hit))
            return (
                f"{phrase!r} {noun.text!r} is {sorted(winners)} ({what} {best:.0f}) among "
                f"{len(cands)} candidates; the target has {got}"
            )
    return None
