"""The small world-knowledge table (pipelines/core/knowledge.yaml) behind the template teacher and filters.

The data lives in YAML so it can be reviewed and extended without touching code; this module only
indexes it. Every lookup normalises the name the way the readers clean category names
(lower case, ``_`` -> space, LVIS/PACO ``"car_(automobile)"`` -> alias or ``"car"``), so callers
may pass raw or clean names. Unknown names (most LVIS categories) get empty knowledge and a
rule-based plural rather than an error: the template teacher then simply skips them.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

import yaml

_PAREN = re.compile(r"\s*\([^)]*\)")
DEFAULT_KNOWLEDGE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "knowledge.yaml")


def normalize(name: str) -> str:
    """Lower case, ``_``/``:``-free, single-spaced form of a category or part name."""
    return " ".join(str(name).replace("_", " ").lower().split())


def regular_plural(word: str) -> str:
    """English plural by the regular rules (the YAML lists the irregular ones)."""
    if not word:
        return word
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def _memo(fn: Any) -> Any:
    """Per-instance memo of a name lookup: the table never changes after loading, and the template
    teacher and the filters ask the same few hundred names over and over (teacher CPU -26 %,
    bench/pipeline.py). Sets and lists are copied out, so a caller can never edit the memo."""
    name = fn.__name__

    def wrapper(self: Knowledge, *args: Any) -> Any:
        key = (name, *args)
        try:
            value = self._memo[key]
        except KeyError:
            value = self._memo[key] = fn(self, *args)
        except TypeError:  # an unhashable argument: no memo
            return fn(self, *args)
        return value.copy() if isinstance(value, (set, list, dict)) else value

    wrapper.__name__, wrapper.__doc__ = name, fn.__doc__
    return wrapper


class Knowledge:
    """Indexed view of knowledge.yaml. Construct with :func:`load_knowledge`."""

    def __init__(self, data: dict[str, Any], path: str = "") -> None:
        self.path = path
        self._memo: dict[tuple[Any, ...], Any] = {}
        self.version = data.get("version")
        self._aliases = {normalize(k): normalize(v) for k, v in (data.get("aliases") or {}).items()}
        self._groups: dict[str, dict[str, Any]] = {
            normalize(k): dict(v or {}) for k, v in (data.get("groups") or {}).items()
        }
        self._cats: dict[str, dict[str, Any]] = {
            normalize(k): dict(v or {}) for k, v in (data.get("categories") or {}).items()
        }
        self._part_synonyms: dict[str, list[str]] = {
            normalize(k): [normalize(x) for x in v or []] for k, v in (data.get("part_synonyms") or {}).items()
        }
        rel = (data.get("relations") or {}).get("impossible") or {}
        self._relations: dict[str, list[str]] = {k: list(v or []) for k, v in rel.items()}
        self._check()
        self._group_words = self._build_group_words()

    def _check(self) -> None:
        # Fail at load time, not deep inside a Ray task, when the YAML references a missing group.
        for name, entry in self._cats.items():
            for g in entry.get("is_a") or []:
                if normalize(g) not in self._groups:
                    raise ValueError(f"{self.path}: category {name!r} is_a unknown group {g!r}")
        for name, entry in self._groups.items():
            for g in entry.get("parents") or []:
                if normalize(g) not in self._groups:
                    raise ValueError(f"{self.path}: group {name!r} has unknown parent {g!r}")
        for alias, target in self._aliases.items():
            if target not in self._cats:
                raise ValueError(f"{self.path}: alias {alias!r} -> unknown category {target!r}")

    # ------------------------------------------------------------------ names
    @_memo
    def canonical(self, name: str) -> str:
        """The knowledge-table key for a raw or clean name (itself when unknown)."""
        n = normalize(name)
        if n in self._cats:
            return n
        if n in self._aliases:
            return self._aliases[n]
        stripped = normalize(_PAREN.sub("", n))
        if stripped in self._cats:
            return stripped
        return self._aliases.get(stripped, stripped)

    @_memo
    def known(self, name: str) -> bool:
        return self.canonical(name) in self._cats

    def categories(self) -> list[str]:
        """Every category the table describes, in file order."""
        return list(self._cats)

    def _entry(self, name: str) -> dict[str, Any]:
        return self._cats.get(self.canonical(name), {})

    @_memo
    def plural(self, name: str) -> str:
        """Plural of the name as given ("microwave oven" -> "microwave ovens", "mouse" -> "mice")."""
        # Not via canonical(): an alias ("table" -> "dining table") must keep its own words.
        n = normalize(name)
        stripped = normalize(_PAREN.sub("", n))
        for key in (n, stripped):
            if key in self._cats and self._cats[key].get("plural"):
                return str(self._cats[key]["plural"])
            if key in self._groups and self._groups[key].get("plural"):
                return str(self._groups[key]["plural"])
        return regular_plural(stripped)

    @_memo
    def display(self, name: str) -> str:
        """Name as written in a sentence: normalised, LVIS disambiguation in parentheses dropped."""
        return normalize(_PAREN.sub("", normalize(name))) or normalize(name)

    @_memo
    def synonyms(self, name: str) -> list[str]:
        return [normalize(s) for s in self._entry(name).get("synonyms") or []]

    @_memo
    def names_for(self, name: str) -> set[str]:
        """Every word that names the category itself: name, plural, synonyms and their plurals."""
        c = self.canonical(name)
        out = {c, self.plural(c)}
        for s in self.synonyms(c):
            out |= {s, regular_plural(s)}
        return out

    # -------------------------------------------------------------- hierarchy
    @_memo
    def ancestors(self, name: str) -> list[str]:
        """Group words above the category, most specific first (dog -> ["pet", "animal"])."""
        start = [normalize(g) for g in self._entry(name).get("is_a") or []]
        return self._walk_groups(start)

    def _walk_groups(self, start: list[str]) -> list[str]:
        # Breadth-first so nearer groups come before more general ones.
        out: list[str] = []
        queue = list(start)
        while queue:
            g = queue.pop(0)
            if g in out:
                continue
            out.append(g)
            queue.extend(normalize(p) for p in self._groups.get(g, {}).get("parents") or [])
        return out

    @_memo
    def group_plural(self, group: str) -> str:
        g = normalize(group)
        return str(self._groups.get(g, {}).get("plural") or regular_plural(g))

    @_memo
    def group_noun(self, group: str) -> str:
        """Countable singular for one member ("piece of furniture"; "animal" for "animal")."""
        g = normalize(group)
        return str(self._groups.get(g, {}).get("noun") or g)

    @_memo
    def _group_forms(self, group: str) -> list[str]:
        g = normalize(group)
        extra = [normalize(w) for w in self._groups.get(g, {}).get("also") or []]
        return [g, self.group_noun(g), self.group_plural(g), *extra]

    @_memo
    def is_group(self, word: str) -> bool:
        w = normalize(word)
        return any(w in self._group_forms(g) for g in self._groups)

    def _build_group_words(self) -> dict[str, set[str]]:
        words: dict[str, set[str]] = {}
        for g in self._groups:
            members = {c for c in self._cats if g in self.ancestors(c)}
            for w in self._group_forms(g):
                words.setdefault(w, set()).update(members)
        for c in self._cats:
            # Plural forms of a category (and of its synonyms) refer to all of its instances.
            words.setdefault(self.plural(c), set()).add(c)
            for s in self.synonyms(c):
                words.setdefault(regular_plural(s), set()).add(c)
        return words

    def group_words(self) -> dict[str, set[str]]:
        """Every group word and plural form -> the categories it covers (a fresh copy)."""
        return {w: set(m) for w, m in self._group_words.items()}

    @_memo
    def members(self, group_word: str) -> set[str]:
        """Categories a group word covers ("animals" -> {dog, cat, ...}; "dogs" -> {dog})."""
        w = normalize(group_word)
        if w in self._group_words:
            return set(self._group_words[w])
        c = self.canonical(w)
        if c in self._cats:
            return {c}
        for cat in self._cats:
            if w in self.synonyms(cat):
                return {cat}
        return set()

    @_memo
    def refers_to(self, word: str, category: str) -> bool:
        """Whether `word` could name `category` or a group containing it (hallucination guard)."""
        w = normalize(word)
        c = self.canonical(category)
        if w in self.names_for(c) or self.canonical(w) == c:
            return True
        if c in self.members(w):
            return True
        # Two categories sharing a name ("mug" is a cup synonym and a PACO category) collide.
        return bool(self.names_for(w) & self.names_for(c))

    # ------------------------------------------------------------- knowledge
    def uses(self, name: str) -> list[str]:
        return list(self._entry(name).get("uses") or [])

    def facts(self, name: str) -> list[str]:
        return list(self._entry(name).get("facts") or [])

    def parts(self, name: str) -> list[str]:
        return [normalize(p) for p in self._entry(name).get("parts") or []]

    def part_names(self, part: str) -> list[str]:
        """Words that name a PACO part category: itself, its synonyms (part_synonyms), their plurals."""
        p = normalize(part)
        names = [p, *self._part_synonyms.get(p, [])]
        return names + [regular_plural(n) for n in names]

    def kind(self, name: str) -> str:
        """``person``, ``animal`` or ``object``: which relation templates apply to a subject."""
        c = self.canonical(name)
        if c == "person":
            return "person"
        return "animal" if "animal" in self.ancestors(c) else "object"

    def impossible_attributes(self, name: str) -> list[str]:
        """Attributes that cannot hold for the category (its own, then inherited from groups)."""
        out = list(self._entry(name).get("impossible_attributes") or [])
        for g in self.ancestors(name):
            for a in self._groups.get(g, {}).get("impossible_attributes") or []:
                if a not in out:
                    out.append(a)
        return out

    def impossible_relations(self, subject: str) -> list[str]:
        """Templates ``"{a} ... {b}"`` that cannot hold with `subject` as {a}."""
        return list(self._relations.get(self.kind(subject), []))


def default_knowledge_path() -> str:
    return DEFAULT_KNOWLEDGE_PATH


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Knowledge:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    return Knowledge(data, path)


def load_knowledge(path: str | None = None) -> Knowledge:
    """Load (and cache per path and mtime) the knowledge table; default is the YAML beside this."""
    p = os.path.abspath(path or DEFAULT_KNOWLEDGE_PATH)
    if not os.path.exists(p):
        raise FileNotFoundError(f"knowledge file not found: {p}")
    return _load_cached(p, os.path.getmtime(p))
