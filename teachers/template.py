"""The deterministic CPU `template` teacher: all five Ground-V tasks from annotations + knowledge.

It emits exactly what a VLM teacher emits -- the JSON text ``{"pairs": [{"instruction", "answer",
"target_ids", "subtype"}]}`` with local ids of pipelines/core/object_table.py -- so the same filters,
writers and manifest apply. Wording comes from the ``template`` section of each task's prompt file
(data, and part of the prompt hash); facts come from pipelines/core/knowledge.yaml. Every spatial or
size word is computed from boxes / areas with a margin, so it is true by construction; crowd
regions are never targets and a category with a crowd region is never referred to as "all".
Randomness is seeded from the unit's gen_key, so the same unit always yields the same text.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable, Mapping

from pipelines.core.knowledge import Knowledge
from pipelines.core.object_table import TableRow, build_object_table, render_object_table, table_entries
from schemas.columns import ANSWER_PAIRS, TEACHER_OUT_FIELDS
from teachers.messages import build_messages, messages_text
from teachers.prompts import PromptSpec

# Superlatives must win by this much to be stated: 5% of the image side for positions, 1.3x
# for areas. Closer calls are ambiguous to a human annotator too, so we skip them.
POSITION_MARGIN = 0.05
AREA_RATIO = 1.3

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

Pair = dict[str, Any]
Candidate = tuple[str, str, Pair]  # (subtype, topic for de-duplication, pair)


def _count_word(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def _all_count(n: int) -> str:
    return "both" if n == 2 else f"all {_count_word(n)}"


def _article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass
class _Scene:
    """The object table of one unit, indexed the ways the generators need."""

    rows: list[TableRow]
    kn: Knowledge
    width: float
    height: float

    def __post_init__(self) -> None:
        self.wholes = [r for r in self.rows if not r.is_part]
        self.by_cat: dict[str, list[TableRow]] = {}
        for r in self.wholes:
            self.by_cat.setdefault(self.kn.display(r.name), []).append(r)
        self.crowd_cats = {c for c, rs in self.by_cat.items() if any(r.iscrowd for r in rs)}
        # Categories we may call "all of": every instance is a targetable row.
        self.clean_cats = sorted(c for c in self.by_cat if c not in self.crowd_cats)
        # Hypernym claims ("all the animals") are only safe when we know every present category.
        self.all_known = all(self.kn.known(c) for c in self.by_cat)

    def ref(self, cat: str, n: int) -> str:
        """'the dog' / 'both dogs' / 'the three sheep'."""
        if n == 1:
            return f"the {cat}"
        return f"both {self.kn.plural(cat)}" if n == 2 else f"the {_count_word(n)} {self.kn.plural(cat)}"

    def class_rows(self, level: str) -> list[TableRow] | None:
        """Rows of every present category at or under `level`; None if a crowd makes it unsafe."""
        cats = [c for c in self.by_cat if c == level or level in self.kn.ancestors(c)]
        if not cats or any(c in self.crowd_cats for c in cats):
            return None
        return [r for c in cats for r in self.by_cat[c]]


def _area(r: TableRow) -> float:
    return r.area if r.area > 0 else r.bbox[2] * r.bbox[3]


def _metric(key: str, r: TableRow) -> float:
    """Value whose minimum wins the superlative `key`."""
    x, y, w, h = r.bbox
    return {
        "left": x + w / 2,
        "right": -(x + w / 2),
        "top": y + h / 2,
        "bottom": -(y + h / 2),
        "smallest": _area(r),
        "largest": -_area(r),
    }[key]


def _winners(key: str, rows: list[TableRow], k: int, scene: _Scene) -> list[TableRow] | None:
    """The k rows extreme on `key`, if they beat the (k+1)-th clearly; else None."""
    if len(rows) <= k:
        return None
    ranked = sorted(rows, key=lambda r: (_metric(key, r), r.local_id))
    inside, outside = _metric(key, ranked[k - 1]), _metric(key, ranked[k])
    if key in ("left", "right"):
        ok = outside - inside >= POSITION_MARGIN * scene.width
    elif key in ("top", "bottom"):
        ok = outside - inside >= POSITION_MARGIN * scene.height
    else:
        a_in, a_out = abs(inside), abs(outside)
        ok = a_in >= AREA_RATIO * a_out if key == "largest" else a_out >= AREA_RATIO * a_in
    return ranked[:k] if ok else None


class _Writer:
    """Collects candidate pairs, filling the prompt file's phrase patterns ({Name} = capitalised)."""

    def __init__(self, tpl: Mapping[str, Any], rng: random.Random) -> None:
        self.tpl, self.rng = tpl, rng
        self.out: list[Candidate] = []

    def add(self, subtype: str, topic: str, key: str, ids: list[int], **fields: Any) -> None:
        fields = {**fields, **{f"{k[0].upper()}{k[1:]}": _cap(str(v)) for k, v in fields.items()}}
        phrases = self.tpl[key]
        pair = {
            "instruction": self.rng.choice(phrases["instructions"]).format(**fields),
            "answer": self.rng.choice(phrases["answers"]).format(**fields),
            "target_ids": sorted(ids),
            "subtype": subtype,
        }
        self.out.append((subtype, topic, pair))


# ------------------------------------------------------------------------------------ tasks
def _hallucination(s: _Scene, w: _Writer, unit: Mapping[str, Any]) -> None:
    unsafe = {s.kn.display(c) for c in unit.get("not_exhaustive_categories") or []}
    present = list(s.by_cat) + [s.kn.display(r.name) for r in s.rows if r.is_part]
    for raw in sorted(set(unit.get("absent_categories") or [])):
        name = s.kn.display(raw)
        if name in unsafe or any(s.kn.refers_to(name, p) or s.kn.refers_to(p, name) for p in present):
            continue  # could be in the image under another name: not a safe negative
        w.add("object", f"obj:{name}", "object", [], name=name, a_name=_article(name))
    for cat in sorted(s.by_cat):
        # Word overlap, so an annotated "metal" also rules out "made of metal".
        seen = {word for r in s.by_cat[cat] for a in r.attributes for word in a.lower().split()}
        for attr in s.kn.impossible_attributes(cat):
            if not seen & (set(attr.lower().split()) - {"made", "of", "a", "an", "the"}):
                w.add("attribute", f"attr:{cat}", "attribute", [], name=cat, attr=attr, a_name=_article(cat))
    for a, b in ((a, b) for a in sorted(s.by_cat) for b in sorted(s.by_cat) if a != b):
        for rel in s.kn.impossible_relations(a):
            text = rel.format(a=f"the {a}", b=f"the {b}")
            w.add("relation", f"rel:{a}:{b}", "relation", [], rel=text, a=_article(a), b=_article(b))


def _multi_object(s: _Scene, w: _Writer, unit: Mapping[str, Any]) -> None:
    for cat in s.clean_cats:
        rows = s.by_cat[cat]
        n, plural = len(rows), s.kn.plural(cat)
        if n >= 2:
            ids = [r.local_id for r in rows]
            counts = {"count": _count_word(n), "all_count": _all_count(n)}
            w.add("same_category", f"all:{cat}", "same_category", ids, name=cat, plural=plural, **counts)
        for side, (adj, phrase) in sorted(w.tpl["sides"].items()):
            for k in range(2, n):
                won = _winners(side, rows, k, s)
                if won:
                    ids = [r.local_id for r in won]
                    fields = {"plural": plural, "count": _count_word(k), "side": adj, "side_phrase": phrase}
                    w.add("same_category", f"sub:{cat}:{side}:{k}", "same_category_subset", ids, **fields)
    for a, b in combinations(s.clean_cats, 2):
        ra, rb = s.by_cat[a], s.by_cat[b]
        ids = [r.local_id for r in ra + rb]
        w.add("mixed_category", f"mix:{a}:{b}", "mixed_category", ids, ref_a=s.ref(a, len(ra)), ref_b=s.ref(b, len(rb)))


def _reasoning(s: _Scene, w: _Writer, unit: Mapping[str, Any]) -> None:
    first_group = {c: (s.kn.ancestors(c) or [None])[0] for c in s.by_cat}
    for cat in s.clean_cats:
        rows = s.by_cat[cat]
        # A use phrase may fit a sibling category too (cup vs mug): skip uses when one is present.
        sibling = any(o != cat and first_group[o] is not None and first_group[o] == first_group[cat] for o in s.by_cat)
        phrases = [("function", p) for p in ([] if sibling else s.kn.uses(cat))]
        phrases += [("knowledge", p) for p in s.kn.facts(cat)]
        for sub, phrase in phrases:
            w.add(sub, f"phrase:{phrase}", sub, [r.local_id for r in rows], phrase=phrase, ref=s.ref(cat, len(rows)))
            for side, (_, side_phrase) in sorted(w.tpl["sides"].items()):
                won = _winners(side, rows, 1, s)
                if won:
                    fields = {"phrase": phrase, "name": cat, "side_phrase": side_phrase}
                    w.add(sub, f"phrase:{phrase}", "one_instance", [won[0].local_id], **fields)


def _listing(s: _Scene, rows: list[TableRow]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[s.kn.display(r.name)] = counts.get(s.kn.display(r.name), 0) + 1
    items = [s.ref(c, n).replace("both ", "the two ") for c, n in sorted(counts.items())]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _multi_granularity(s: _Scene, w: _Writer, unit: Mapping[str, Any]) -> None:
    levels: list[str] = list(s.clean_cats)
    if s.all_known:
        levels += sorted({g for c in s.by_cat for g in s.kn.ancestors(c)})
    for level in levels:
        rows = s.class_rows(level)
        if not rows:
            continue
        n, is_cat = len(rows), level in s.by_cat
        if n >= 2:
            word = s.kn.plural(level) if is_cat else s.kn.group_plural(level)
            fields = {"word": word, "count": _count_word(n), "all_count": _all_count(n), "listing": _listing(s, rows)}
            key = "group_category" if is_cat else "group"
            w.add("group", f"group:{level}", key, [r.local_id for r in rows], **fields)
        noun = level if is_cat else s.kn.group_noun(level)  # "piece of furniture", not "furniture"
        for sup, pattern in sorted(w.tpl["superlatives"].items()):
            won = [rows[0]] if n == 1 else _winners(sup, rows, 1, s)
            if not won:
                continue
            ref = f"the {noun}" if n == 1 else pattern.format(level=noun)
            name = s.kn.display(won[0].name)
            key = "instance" if name == level else "instance_other_level"
            w.add("instance", f"inst:{level}:{ref}", key, [won[0].local_id], ref=ref, a_name=_article(name))
            if n == 1:
                break


def _part(s: _Scene, w: _Writer, unit: Mapping[str, Any]) -> None:
    parts_of: dict[int, dict[str, list[TableRow]]] = {}
    for r in s.rows:
        if r.is_part and r.parent_local_id is not None and not r.iscrowd:
            parts_of.setdefault(r.parent_local_id, {}).setdefault(s.kn.display(r.name), []).append(r)
    for parent in s.wholes:
        cat = s.kn.display(parent.name)
        if parent.local_id not in parts_of or parent.iscrowd or cat in s.crowd_cats:
            continue  # a crowd of the parent's category could hold "the leftmost" one
        siblings = s.by_cat[cat]
        refs = [f"the {cat}"] if len(siblings) == 1 else []
        for sup, pattern in sorted(w.tpl["parent_superlatives"].items()):
            won = _winners(sup, siblings, 1, s) if len(siblings) > 1 else None
            if won and won[0].local_id == parent.local_id:
                refs.append(pattern.format(name=cat))
        for parent_ref in refs:
            for part, rows in sorted(parts_of[parent.local_id].items()):
                n = len(rows)
                fields = {"part": part, "parts": s.kn.plural(part), "count": _count_word(n), "parent_ref": parent_ref}
                w.add(
                    "part",
                    f"part:{parent.local_id}:{part}",
                    "one" if n == 1 else "many",
                    [r.local_id for r in rows],
                    **fields,
                )


_GENERATORS: dict[str, Callable[[_Scene, _Writer, Mapping[str, Any]], None]] = {
    "hallucination": _hallucination,
    "multi_object": _multi_object,
    "reasoning": _reasoning,
    "multi_granularity": _multi_granularity,
    "part": _part,
}


def _select(cands: list[Candidate], n_pairs: int, rng: random.Random) -> list[Pair]:
    """Up to n pairs, subtypes taken in turn, at most one pair per topic, no repeated text."""
    rng.shuffle(cands)
    queues: dict[str, list[Candidate]] = {}
    for c in cands:
        queues.setdefault(c[0], []).append(c)
    order = sorted(queues)
    rng.shuffle(order)
    chosen: list[Pair] = []
    topics: set[str] = set()
    texts: set[str] = set()
    while len(chosen) < n_pairs and any(queues.values()):
        for sub in order:
            while queues[sub] and len(chosen) < n_pairs:
                _, topic, pair = queues[sub].pop(0)
                if topic in topics or pair["instruction"] in texts:
                    continue
                topics.add(topic)
                texts.add(pair["instruction"])
                chosen.append(pair)
                break
    return chosen


def unit_seed(unit: Mapping[str, Any]) -> int:
    digest = hashlib.sha256(f"{unit.get('gen_key')}|{unit.get('task')}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def template_response(unit: Mapping[str, Any], spec: PromptSpec, knowledge: Knowledge, n_pairs: int) -> str:
    """The JSON answer text for one unit (``{"pairs": []}`` when the task doesn't fit the image)."""
    rng = random.Random(unit_seed(unit))
    rows = build_object_table(list(unit.get("objects") or []))
    scene = _Scene(rows, knowledge, float(unit.get("width") or 1), float(unit.get("height") or 1))
    writer = _Writer(spec.template, rng)
    _GENERATORS[spec.task](scene, writer, unit)
    allowed = set(spec.subtypes)
    pairs = _select([c for c in writer.out if c[0] in allowed], max(0, n_pairs), rng)
    return json.dumps({ANSWER_PAIRS: pairs}, ensure_ascii=False)


def template_respond_batch(
    batch: dict[str, list[Any]], specs: dict[str, PromptSpec], knowledge: Knowledge, n_pairs: int
) -> dict[str, list[Any]]:
    """Add TEACHER_OUT_FIELDS to a column -> list batch of units (no pandas / numpy needed).

    Token counts are approximations, documented as such: whitespace-separated words of the text a
    VLM teacher would have been prompted with (text mode, no image) and of the response. Units that
    already carry a ``unit_error`` are left untouched (all teacher columns None): they go to the
    error shard, never to a teacher.
    """
    n = len(next(iter(batch.values()))) if batch else 0
    out: dict[str, list[Any]] = {name: [None] * n for name, _ in TEACHER_OUT_FIELDS}
    for i in range(n):
        unit = {k: v[i] for k, v in batch.items()}
        if unit.get("unit_error"):
            continue
        try:
            spec = specs[unit["task"]]
            text = template_response(unit, spec, knowledge, n_pairs)
            rows = build_object_table(list(unit.get("objects") or []))
            table = render_object_table(table_entries(rows, "xyxy", int(unit["width"]), int(unit["height"])))
            prompt = messages_text(build_messages(spec, table, n_pairs, with_image=False))
        except Exception as e:  # a bad unit must not kill the batch: record it as a teacher error
            out["finish_reason"][i] = "error"
            out["teacher_error"][i] = f"template teacher: {type(e).__name__}: {e}"
            continue
        out["response"][i] = text
        out["finish_reason"][i] = "stop"
        out["prompt_tokens"][i] = len(prompt.split())
        out["output_tokens"][i] = len(text.split())
    return {**batch, **out}
