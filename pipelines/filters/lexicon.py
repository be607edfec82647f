"""Which categories an instruction names: tokenising and matching against the knowledge table.

The semantic checks (present_category, granularity, spatial, part_parent_mismatch) all need the
same thing: the category / group words an instruction mentions, where, and whether they are
plural. Terms come from `pipelines.core.knowledge` (names, plurals, synonyms and group words such as
"animals" -> {dog, cat, ...}); names the table does not know (most LVIS categories) are added per
unit with a rule-based plural, so an unknown category is still recognised by its own name.

Matching is greedy longest-first over word n-grams, so "hot dog" is one mention, never "dog".
"""

from __future__ import annotations

import re
import unicodedata
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

from pipelines.core.knowledge import normalize, regular_plural

_NON_WORD = re.compile(r"[\W_]+")  # any non-letter/digit, Unicode-aware: "寿司" and "crème" are words
_POSSESSIVE = re.compile(r"'s\b|’s\b")
# Tokens a near-duplicate comparison ignores: "Segment the dogs." == "find all the dogs in this
# image" is not a new instruction, but "left" vs "right" must still differ.
_DUP_STOPWORDS = frozenset(
    "the a an of in please all this these those image picture photo scene segment find show highlight"
    " locate select identify mark point out me can you see visible".split()
)


def tokens(text: str) -> list[str]:
    """Lower-case word tokens; possessive 's dropped, hyphens and punctuation split words."""
    # Accents are dropped ("crème" == "creme"); letters of any script are kept (an ASCII-only
    # tokenizer turned a category like "寿司" into no word at all).
    t = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    t = _POSSESSIVE.sub("", t)
    return [w for w in _NON_WORD.split(t) if w]


def dedup_key(text: str) -> tuple[str, ...]:
    """Normalised word sequence used by the near-duplicate check.

    Words, not characters: "where is the car" / "where is the chair" or "the pet on the far right" /
    "the cat on the far right" differ in one content word and are different instructions, although
    their character-level similarity is > 0.9.
    """
    return tuple(w for w in tokens(text) if w not in _DUP_STOPWORDS)


# Words that do not restrict a reference: "find all the dogs in this image" refers to every dog
# exactly like "the dogs", "the one on the far left" like "the leftmost". Any other word
# ("sleeping", "two", "next") qualifies the reference, and the group-completeness and superlative
# rules no longer apply (the comparison set is then a subset we cannot compute).
FILLER = frozenset(
    "the a an all every each both of in on at to within this that these those image picture photo"
    " photograph scene frame shot view segment find show highlight mark locate select identify detect"
    " outline point out give me please can you see visible here there are is which who and together"
    " entire whole present shown appear appears appearing where what could would tell draw get us".split()
)


# Colour / material words that are also category names ("orange", "glass", "paper", "wood"...):
# directly before another noun they are attributes, not references (see context._drop_modifiers).
MODIFIER_WORDS = frozenset(
    "black blue brown green grey gray orange pink purple red white yellow stone wood wooden rattan"
    " fabric wool leather velvet metal paper plastic glass ceramic".split()
)


@dataclass(frozen=True)
class Term:
    categories: frozenset[str]  # canonical category names the word can refer to
    plural: bool  # a plural / mass form ("dogs", "people", "furniture"): refers to a group
    group: bool = False  # a hierarchy word ("animal", "vehicles") rather than a category's own name
    either: bool = False  # singular and plural at once ("sheep", "aircraft"): number unknown


@dataclass(frozen=True)
class Mention:
    start: int  # token index of the first word
    end: int  # token index after the last word
    text: str
    term: Term


class Lexicon:
    """Term table of one Knowledge object (built once per process, ~1 ms)."""

    def __init__(self, knowledge: Any) -> None:
        self.knowledge = knowledge
        terms: dict[str, tuple[set[str], bool]] = {}
        singular: set[str] = set()
        cats = list(knowledge.categories())
        self.known: frozenset[str] = frozenset(cats)
        for c in cats:
            singular.add(c)
            singular.update(knowledge.synonyms(c))
        groups = knowledge.group_words()
        for g in groups:
            # A group word whose own plural is also a group word is the singular form ("animal").
            gp = knowledge.group_plural(g)
            if gp != g and gp in groups:
                singular.add(g)
        for c in cats:
            for t in knowledge.names_for(c):
                _add(terms, t, {c})
        for w, members in groups.items():
            _add(terms, w, set(members))
        self.terms: dict[str, Term] = {
            t: Term(frozenset(cs), t not in singular, bool(knowledge.is_group(t)), t in singular and t in groups)
            for t, (cs, _) in terms.items()
            if cs
        }
        self.max_words = max((len(t.split()) for t in self.terms), default=1)
        self._canon: dict[str, str] = {}
        self._unknown_terms: dict[str, dict[str, Term]] = {}

    def canonical(self, name: str) -> str:
        """Canonical category name (knowledge key, or the cleaned name when unknown); cached."""
        c = self._canon.get(name)
        if c is None:
            c = self.knowledge.canonical(name)
            self._canon[name] = c
        return c

    def unit_terms(self, names: Iterable[str]) -> dict[str, Term]:
        """Extra terms for category names the knowledge table does not know (LVIS long tail)."""
        extra: dict[str, Term] = {}
        for name in names:
            c = self.canonical(name)
            if c in self.known or not c:
                continue
            got = self._unknown_terms.get(c)
            if got is None:
                key = " ".join(tokens(c))  # the form instructions are matched in (accents folded)
                if not key:
                    continue
                got = {key: Term(frozenset({c}), False)}
                p = regular_plural(key)
                if p != key:
                    got[p] = Term(frozenset({c}), True)
                self._unknown_terms[c] = got
            for t, term in got.items():
                if t not in self.terms:
                    extra[t] = term
        return extra

    def mentions(self, toks: list[str], extra: dict[str, Term] | None = None) -> list[Mention]:
        """Category / group mentions in `toks`, left to right, longest match first."""
        out: list[Mention] = []
        i, n = 0, len(toks)
        terms = self.terms
        max_words = self.max_words
        if extra:
            max_words = max(max_words, max(len(t.split()) for t in extra))
        while i < n:
            hit = None
            for k in range(min(max_words, n - i), 0, -1):
                text = toks[i] if k == 1 else " ".join(toks[i : i + k])
                term = (extra.get(text) if extra else None) or terms.get(text)
                if term is not None:
                    hit = Mention(i, i + k, text, term)
                    break
            if hit is None:
                i += 1
            else:
                out.append(hit)
                i = hit.end
        return out


def _add(terms: dict[str, tuple[set[str], bool]], text: str, cats: set[str]) -> None:
    t = " ".join(tokens(normalize(text)))
    if not t:
        return
    entry = terms.setdefault(t, (set(), False))
    entry[0].update(cats)


_LEXICONS: weakref.WeakKeyDictionary[Any, Lexicon] = weakref.WeakKeyDictionary()


def lexicon_for(knowledge: Any) -> Lexicon:
    """The (cached) lexicon of a Knowledge object."""
    lex = _LEXICONS.get(knowledge)
    if lex is None:
        lex = Lexicon(knowledge)
        _LEXICONS[knowledge] = lex
    return lex
