"""`granularity`: the level of a reference (group / counted / single instance) matches its targets.

Only *unqualified* references are checked: every word of the instruction is a category mention, a
quantifier or number, a conjunction or filler ("segment all the dogs and the cat in the image").
Any other word ("the dogs on the left", "the pets that purr") restricts the set to something the
annotations do not describe, so a subset of the group is then legitimate and nothing is checked.
For an unqualified reference, per mentioned category / group word:

* counted ("the three chairs", "both cars") -> exactly that many targets of it;
* group-level (plural, quantified by all/every/each/both, or a `subtype: group` pair) -> every
  non-crowd instance of it in the image;
* singular ("the cat") -> exactly one target of it;
and every target must be an instance of some mentioned category. Independently, a
multi_granularity `subtype: instance` pair must not target the whole group named by its head noun
when that group has several members ("the dog on the left" is one dog).
"""

from __future__ import annotations

from pipelines.filters.context import PairView
from pipelines.filters.lexicon import FILLER, Mention

GRANULARITY = "granularity"

_TASKS = frozenset({"multi_object", "reasoning", "multi_granularity"})
_QUANTIFIERS = frozenset({"all", "every", "each", "both"})
NUMBER_WORDS: dict[str, int] = {
    w: i + 1 for i, w in enumerate("one two three four five six seven eight nine ten eleven twelve".split())
} | {"both": 2, "pair": 2}
# Multi-word conjunctions that join references like "and" does.
_CONJUNCTIONS: tuple[tuple[str, ...], ...] = (("together", "with"), ("along", "with"), ("as", "well", "as"))
_QUANTIFIER_WINDOW = 4  # "every one of the drinking vessels": quantifier up to 4 words before the noun


def _conjunction_positions(toks: list[str]) -> set[int]:
    out: set[int] = set()
    for i in range(len(toks)):
        for conj in _CONJUNCTIONS:
            if tuple(toks[i : i + len(conj)]) == conj:
                out.update(range(i, i + len(conj)))
    return out


def unqualified(toks: list[str], mentions: list[Mention]) -> bool:
    skip = _conjunction_positions(toks)
    for m in mentions:
        skip.update(range(m.start, m.end))
    for j, t in enumerate(toks):
        if j in skip or t in FILLER or t in NUMBER_WORDS or t.isdigit():
            continue
        return False
    return True


def stated_count(toks: list[str], pos: int) -> int | None:
    """The number stated right before token `pos` ("three chairs", "the two dogs", "both the cars")."""
    j = pos - 1
    if j >= 0 and toks[j] in ("the", "these", "those", "all"):
        j -= 1
    if j < 0:
        return None
    t = toks[j]
    if t.isdigit():
        return int(t)
    # "the one on the left" never reaches here: "one" must directly precede the noun.
    return NUMBER_WORDS.get(t)


def _quantified(toks: list[str], m: Mention, prev_end: int) -> bool:
    lo = max(prev_end, m.start - _QUANTIFIER_WINDOW)
    return any(t in _QUANTIFIERS for t in toks[lo : m.start])


def check_granularity(pair: PairView) -> str | None:
    """See module doc."""
    ctx = pair.ctx
    if ctx.task not in _TASKS or not pair.mentions:
        return None
    toks, mentions = pair.tokens, pair.mentions
    targets = set(pair.target_ids)
    declared_group = ctx.task == "multi_granularity" and pair.subtype == "group"
    if unqualified(toks, mentions):
        covered: set[int] = set()
        prev_end = 0
        for m in mentions:
            inst = set(ctx.instances(m.term.categories))
            covered |= inst
            mine = targets & inst
            n = stated_count(toks, m.start)
            if n is not None:
                if len(mine) != n:
                    return f"{m.text!r} is counted as {n} but {len(mine)} targets are {m.text!r}"
            elif _quantified(toks, m, prev_end) or m.term.plural or (declared_group and not m.term.either):
                if mine != inst:
                    return (
                        f"group-level {m.text!r} must target all {len(inst)} non-crowd instances "
                        f"{sorted(inst)}; missing {sorted(inst - mine)}"
                    )
            elif not m.term.either and len(mine) != 1:
                return f"singular {m.text!r} must target exactly one instance, got {len(mine)}"
            prev_end = m.end
        extra = targets - covered
        if extra:
            named = ", ".join(repr(m.text) for m in mentions)
            return f"targets {sorted(extra)} are none of the named {named}"
    if ctx.task == "multi_granularity" and pair.subtype == "instance":
        head = mentions[0]
        group = ctx.instances(head.term.categories)
        if len(group) >= 2 and targets >= set(group):
            return f"instance-level instruction targets the whole group of {len(group)} {head.text!r}"
    return None
