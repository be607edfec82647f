"""Does the instruction refer to anything, and to exactly its targets?

`no_referent`: the instruction names nothing — no category, synonym or group word (lexicon
mention), no part name, and no content word at all ("Segment it.", "Segment the thing.", "What
should be segmented?"). Reasoning instructions describe a use or a fact instead of naming the
category ("something to sit on", "the pet that purrs"): their content words ("sit", "purrs") are
the reference, so they stay legal. Tasks whose pairs are defined by categories (multi_object,
multi_granularity) must name a known category when `no_referent_needs_category` is on.

`ambiguous_reference`: an *unqualified* reference (every word a category mention, article,
quantifier, number or filler; see checks_granularity) names a category, synonym or group word
("the dog", "the animal", "the two dogs") whose non-crowd instances in the image are more than the
targets it picks out. With three dogs, "the dog" fits all three whatever the teacher meant (the
largest error class of VLM-written referring expressions: "multiple matches").
"""

from __future__ import annotations

from pipelines.filters.checks_granularity import NUMBER_WORDS, unqualified
from pipelines.filters.context import PairView
from pipelines.filters.lexicon import FILLER

NO_REFERENT = "no_referent"
AMBIGUOUS_REFERENCE = "ambiguous_reference"

_CATEGORY_TASKS = frozenset({"multi_object", "multi_granularity"})
_AMBIGUITY_TASKS = frozenset({"multi_object", "reasoning", "multi_granularity"})
# Words that point without naming: pronouns, placeholder nouns, question / request scaffolding and
# the segmentation verbs themselves. An instruction made only of these (plus FILLER) names nothing.
EMPTY_WORDS = frozenset(
    "it its they them their thing things object objects item items stuff something anything everything"
    " one ones region regions area areas target targets should be been being do does did need needs"
    " needed want wanted i we my our your now also just only some any other another segmented segmenting"
    " segmentation mask masked masks outlined highlighted highlight selected shown output return"
    " whatever whichever how why when over somewhere".split()
)


def content_words(toks: list[str]) -> list[str]:
    """Tokens that could describe something: not filler, not a pointing/scaffolding word, not a number."""
    return [t for t in toks if t not in FILLER and t not in EMPTY_WORDS and t not in NUMBER_WORDS and not t.isdigit()]


def check_no_referent(pair: PairView) -> str | None:
    """See module doc. Hallucination `object` pairs are left to present_category (same question, more precise code)."""
    ctx = pair.ctx
    if pair.mentions:
        return None
    if ctx.task == "hallucination" and pair.subtype == "object":
        return None
    if ctx.settings.no_referent_needs_category and ctx.task in _CATEGORY_TASKS:
        return f"a {ctx.task} instruction must name a category, synonym or group word; {pair.instruction!r} names none"
    if not content_words(pair.tokens):
        return f"{pair.instruction!r} names no category, part, use or fact"
    return None


def check_ambiguous_reference(pair: PairView) -> str | None:
    """See module doc: each mention of an unqualified reference must cover all its instances or none."""
    ctx = pair.ctx
    if ctx.task not in _AMBIGUITY_TASKS or not pair.mentions or not pair.target_ids:
        return None
    if not unqualified(pair.tokens, pair.mentions):
        return None
    targets = set(pair.target_ids)
    for m in pair.mentions:
        inst = set(ctx.instances(m.term.categories))
        mine = targets & inst
        if mine and mine != inst:
            return (
                f"unqualified {m.text!r} fits {len(inst)} instances {sorted(inst)} but targets only {sorted(mine)}:"
                " a listener cannot tell which"
            )
    return None
