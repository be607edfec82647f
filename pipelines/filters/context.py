"""Per-unit and per-pair facts shared by the checks, each computed at most once.

`UnitContext` is built once per unit (object table, local-id maps, mask geometry, category sets)
and `PairView` once per pair (tokens, category mentions); the check functions are pure functions of
these two, so their order can change without recomputing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pipelines.core.object_table import TableRow, build_object_table
from pipelines.filters.geometry import RleGeometry
from pipelines.filters.lexicon import MODIFIER_WORDS, Lexicon, Mention, Term, lexicon_for, tokens
from pipelines.filters.settings import FilterSettings

GeometryFactory = Callable[[Mapping[int, Any], int, int], Any]


def _names(values: Any) -> list[str]:
    # Arrow -> pandas may hand us numpy arrays or None; never rely on their truthiness.
    if values is None:
        return []
    return [str(v) for v in values if v is not None and str(v) != ""]


class UnitContext:
    """Everything about one unit that the pair checks read."""

    def __init__(
        self,
        unit: Mapping[str, Any],
        settings: FilterSettings,
        knowledge: Any,
        geometry_factory: GeometryFactory | None = None,
    ) -> None:
        self.settings = settings
        self.knowledge = knowledge
        self.task = str(unit["task"])
        self.width = int(unit["width"])
        self.height = int(unit["height"])
        self.dataset_format = str(unit.get("dataset_format") or "")
        objects = list(unit.get("objects") if unit.get("objects") is not None else [])
        self.rows: list[TableRow] = build_object_table(objects)
        self.by_local: dict[int, TableRow] = {r.local_id: r for r in self.rows}
        self.local_to_ann: dict[int, int] = {r.local_id: r.ann_id for r in self.rows}
        obj_by_ann = {int(o["ann_id"]): o for o in objects}
        counts = {r.local_id: obj_by_ann[r.ann_id].get("rle_counts") for r in self.rows}
        factory = geometry_factory or RleGeometry
        self.geometry = factory(counts, self.height, self.width)
        self.lex: Lexicon = lexicon_for(knowledge)
        self._absent_names = _names(unit.get("absent_categories"))
        self._not_exhaustive_names = _names(unit.get("not_exhaustive_categories"))
        self._category: dict[int, str] = {}
        self._by_category: dict[str, list[int]] | None = None
        self._present: set[str] | None = None
        self._absent: set[str] | None = None
        self._not_exhaustive: set[str] | None = None
        self._extra_terms: dict[str, Term] | None = None
        self._part_names: frozenset[str] | None = None

    # ---------------------------------------------------------------- categories
    def category(self, local_id: int) -> str:
        """Canonical category of a whole object (for a part: its part name)."""
        c = self._category.get(local_id)
        if c is None:
            c = self.lex.canonical(self.by_local[local_id].name)
            self._category[local_id] = c
        return c

    def instances(self, categories: frozenset[str] | set[str]) -> list[int]:
        """Local ids of the non-crowd whole objects whose category is in `categories`."""
        if self._by_category is None:
            by: dict[str, list[int]] = {}
            for r in self.rows:
                if not r.is_part and not r.iscrowd:
                    by.setdefault(self.category(r.local_id), []).append(r.local_id)
            self._by_category = by
        out: list[int] = []
        for c in categories:
            out.extend(self._by_category.get(c, ()))
        return sorted(out)

    @property
    def present(self) -> set[str]:
        """Categories with at least one whole object in the image, crowd regions included."""
        if self._present is None:
            self._present = {self.category(r.local_id) for r in self.rows if not r.is_part}
        return self._present

    @property
    def absent(self) -> set[str]:
        """Verified-absent categories (COCO: every other category; LVIS/PACO: neg_category_ids)."""
        if self._absent is None:
            self._absent = {self.lex.canonical(n) for n in self._absent_names}
        return self._absent

    @property
    def not_exhaustive(self) -> set[str]:
        if self._not_exhaustive is None:
            self._not_exhaustive = {self.lex.canonical(n) for n in self._not_exhaustive_names}
        return self._not_exhaustive

    @property
    def part_names(self) -> frozenset[str]:
        """Last words of the unit's part names ("handle", "light" of "tail light")."""
        if self._part_names is None:
            self._part_names = frozenset(r.name.split()[-1] for r in self.rows if r.is_part and r.name)
        return self._part_names

    @property
    def extra_terms(self) -> dict[str, Term]:
        """Terms for this unit's category names that the knowledge table does not know."""
        if self._extra_terms is None:
            names = [r.name for r in self.rows if not r.is_part]
            self._extra_terms = self.lex.unit_terms(names + self._absent_names + self._not_exhaustive_names)
        return self._extra_terms


@dataclass
class PairView:
    """One well-formed pair (schema already checked) plus lazily derived text facts."""

    index: int
    instruction: str
    answer: str
    subtype: str
    target_ids: list[int]
    ctx: UnitContext
    _tokens: list[str] | None = field(default=None, repr=False)
    _mentions: list[Mention] | None = field(default=None, repr=False)

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None:
            self._tokens = tokens(self.instruction)
        return self._tokens

    @property
    def mentions(self) -> list[Mention]:
        if self._mentions is None:
            found = self.ctx.lex.mentions(self.tokens, self.ctx.extra_terms)
            self._mentions = _drop_modifiers(found, self.tokens, self.ctx.part_names) if found else found
        return self._mentions


def _drop_modifiers(mentions: list[Mention], toks: list[str], part_names: frozenset[str]) -> list[Mention]:
    """Drop category words used as attributes ("the **orange** bicycle", "the **glass** bottle") or verbs.

    A one-word mention that is also a PACO attribute word (colour / material) and is directly
    followed by another mention or by a part name of the unit modifies that noun; "the orange next
    to the banana" keeps its fruit.
    """
    out: list[Mention] = []
    for k, m in enumerate(mentions):
        if m.text == "can" and toks[m.end : m.end + 1] in (["you"], ["i"], ["we"], ["it"], ["they"]):
            continue  # "Can you see the cup?": the modal verb, not a tin can
        if m.end - m.start == 1 and m.text in MODIFIER_WORDS and m.end < len(toks):
            nxt = mentions[k + 1] if k + 1 < len(mentions) else None
            if (nxt is not None and nxt.start == m.end) or toks[m.end] in part_names:
                continue
        out.append(m)
    return out
