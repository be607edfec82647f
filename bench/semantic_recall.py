"""Seeded corpus of realistic teacher mistakes on the sample data: recall per semantic reason code
and false rejects on valid pairs.

Units are the sample dataset's COCO and PACO images (pipelines/sources/sample_data.py, read by the
real readers). Valid pairs: every pair the template teacher writes for every task (its output is
accepted 100 % by construction, so any reject there is a false reject), plus valid variants a VLM
teacher writes that the new checks must keep (bare references to a category with one instance,
correct PACO colours, part synonyms). Mistakes are seeded per code in the forms VLM teachers
actually produce; each code also gets "hard" forms outside what a pure filter can see (a qualifier
that does not disambiguate, predicative attributes, vague but non-empty words) so the table shows
what is left for the verifier.

    python bench/semantic_recall.py [--seed 0] [--per-code 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.core.knowledge import load_knowledge  # noqa: E402
from pipelines.core.object_table import build_object_table  # noqa: E402
from pipelines.filters import FilterSettings, check_unit  # noqa: E402
from pipelines.filters.checks_attributes import ATTRIBUTE_WORDS, annotated  # noqa: E402
from pipelines.sources.readers.annotations import read_source  # noqa: E402
from pipelines.sources.sample_data import ensure_sample_dataset  # noqa: E402
from schemas.columns import TASKS  # noqa: E402
from teachers.prompts import default_prompts_dir, load_prompts  # noqa: E402
from teachers.template import template_response  # noqa: E402

KN = load_knowledge()
CODES = ("ambiguous_reference", "no_referent", "attribute_mismatch", "part_name_mismatch")
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "brown", "grey", "orange", "pink", "purple"]
MATERIALS = ["wooden", "metal", "plastic", "glass", "ceramic", "leather", "paper", "fabric"]
VAGUE = ["Segment it.", "Segment the thing.", "What should be segmented?", "Find the object.",
         "Highlight this one.", "Show me that.", "Can you segment something here?", "Mark the item.",
         "Please outline the object in the image.", "Which one is it?", "Segment this region."]  # fmt: skip
VAGUE_HARD = ["the thing on the left", "the shiny object", "that one near the middle"]
AMBIG_FORMS = ["the {c}", "Segment the {c}.", "Find the {c} in the image.", "{C}", "Can you see the {c}?"]
AMBIG_HARD = ["the {c} in the scene standing still", "the {c} on the ground"]


def load_units(root: str) -> list[dict[str, Any]]:
    units = []
    for src in ensure_sample_dataset(root):
        if src["format"] == "lvis":
            continue
        table = read_source(src["name"], src["format"], src["annotations"], src["images"])
        units += [r for r in table.to_pylist() if not r["image_error"]]
    return units


def P(ins: str, ids: list[int], sub: str) -> dict[str, Any]:
    return {"instruction": ins, "answer": "Sure, [SEG].", "target_ids": ids, "subtype": sub}


def wholes_by_cat(rows: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in rows:
        if not r.is_part and not r.iscrowd:
            out.setdefault(KN.canonical(r.name), []).append(r)
    return out


def seed_ambiguous(rng: random.Random, rows: list[Any]) -> list[tuple[str, str, dict, bool]]:
    out = []
    for c, rs in wholes_by_cat(rows).items():
        if len(rs) < 2:
            continue
        t = [rng.choice(rs).local_id]
        for form in AMBIG_FORMS:
            out.append(("reasoning", "knowledge", P(form.format(c=c, C=c.capitalize()), t, "knowledge"), False))
        for syn in KN.synonyms(c)[:1]:
            out.append(("reasoning", "knowledge", P(f"the {syn}", t, "knowledge"), False))
        if len(rs) >= 3:
            ids = [r.local_id for r in rng.sample(rs, 2)]
            out.append(("multi_object", "same_category", P(f"the two {KN.plural(c)}", ids, "same_category"), False))
        for form in AMBIG_HARD:
            out.append(("reasoning", "knowledge", P(form.format(c=c), t, "knowledge"), True))
    for c, rs in wholes_by_cat(rows).items():  # hypernym over two categories
        for g in KN.ancestors(c)[:1]:
            members = [x for cc, xs in wholes_by_cat(rows).items() if g in KN.ancestors(cc) for x in xs]
            if len(members) > len(rs):
                out.append(("reasoning", "knowledge", P(f"the {g}", [rs[0].local_id], "knowledge"), False))
    return out


def seed_no_referent(rng: random.Random, rows: list[Any]) -> list[tuple[str, str, dict, bool]]:
    wholes = [r for r in rows if not r.is_part and not r.iscrowd]
    if not wholes:
        return []
    t = [rng.choice(wholes).local_id]
    out = [("reasoning", "function", P(v, t, "function"), False) for v in rng.sample(VAGUE, 4)]
    if len(wholes) >= 2:
        two = [r.local_id for r in rng.sample(wholes, 2)]
        out.append(("multi_object", "same_category", P(rng.choice(VAGUE), two, "same_category"), False))
    out.append(("hallucination", "attribute", P(rng.choice(VAGUE), [], "attribute"), False))
    out += [("reasoning", "function", P(v, t, "function"), True) for v in VAGUE_HARD[:1]]
    return out


def seed_attributes(rng: random.Random, rows: list[Any]) -> list[tuple[str, str, dict, bool]]:
    out: list[tuple[str, str, dict, bool]] = []
    by_local = {r.local_id: r for r in rows}
    for r in rows:
        have = annotated(r.attributes)
        if r.iscrowd or not have.get("color"):
            continue
        wrong = rng.choice([c for c in COLOURS if c not in have["color"]])
        right = sorted(have["color"])[0]
        if r.is_part:
            parent = KN.display(by_local[r.parent_local_id].name)
            out.append(("part", "part", P(f"the {wrong} {r.name} of the {parent}", [r.local_id], "part"), False))
            out.append(
                ("part", "part", P(f"the {r.name} of the {parent}, which is {wrong}", [r.local_id], "part"), True)
            )
            out.append(("part", "part", P(f"the {right} {r.name} of the {parent}", [r.local_id], "part"), None))
            continue
        name = KN.display(r.name)
        out.append(("reasoning", "knowledge", P(f"the {wrong} {name} you can see", [r.local_id], "knowledge"), False))
        if have.get("material"):
            bad = rng.choice([m for m in MATERIALS if ATTRIBUTE_WORDS[m][1] not in have["material"]])
            out.append(("reasoning", "knowledge", P(f"the {bad} {name} you can see", [r.local_id], "knowledge"), False))
        out.append(("reasoning", "knowledge", P(f"the {name} painted {wrong}", [r.local_id], "knowledge"), True))
        out.append(("reasoning", "knowledge", P(f"the {right} {name} you can see", [r.local_id], "knowledge"), None))
    return out


def seed_part_names(rng: random.Random, rows: list[Any]) -> list[tuple[str, str, dict, bool]]:
    out: list[tuple[str, str, dict, bool]] = []
    by_local = {r.local_id: r for r in rows}
    for r in rows:
        if not r.is_part or r.parent_local_id is None:
            continue
        parent = by_local[r.parent_local_id]
        pname = KN.display(parent.name)
        siblings = [p for p in KN.parts(pname) if p not in KN.part_names(r.name) and r.name not in KN.part_names(p)]
        if len(wholes_by_cat(rows).get(KN.canonical(pname), [])) != 1 or not siblings:
            continue
        q = rng.choice(siblings)
        out.append(("part", "part", P(f"the {q} of the {pname}", [r.local_id], "part"), False))
        out.append(("part", "part", P(f"the {pname}'s {q}", [r.local_id], "part"), False))
        syn = [n for n in KN.part_names(r.name) if n != r.name and " " not in n]
        if syn:
            out.append(("part", "part", P(f"the {syn[0]} of the {pname}", [r.local_id], "part"), None))
    return out


SEEDERS = {"ambiguous_reference": seed_ambiguous, "no_referent": seed_no_referent,
           "attribute_mismatch": seed_attributes, "part_name_mismatch": seed_part_names}  # fmt: skip


def judge(unit: dict, task: str, pair: dict) -> str | None:
    res = check_unit(dict(unit, task=task), json.dumps({"pairs": [pair]}), "stop", FilterSettings(), KN)
    return res.rejected[0].reason if res.rejected else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print seeded mistakes caught under another code")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "groundv-sample-recall"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    units = load_units(args.data)
    specs = load_prompts(default_prompts_dir(), TASKS)
    stats: dict[str, Counter] = {c: Counter() for c in CODES}
    valid = Counter()
    for unit in units:
        rows = build_object_table(unit["objects"])
        for task in TASKS:  # template teacher: all valid
            u = dict(unit, task=task)
            pairs = json.loads(template_response(u, specs[task], KN, 50))["pairs"]
            for p in pairs:
                got = judge(unit, task, p)
                valid["template"] += 1
                valid["template_rejected"] += got is not None
                valid["template_rejected_new_codes"] += got in CODES
                if got is not None:
                    print(f"  template false reject {got}: {p['instruction']!r} -> {p['target_ids']}")
        for code, seeder in SEEDERS.items():
            for task, _sub, pair, hard in seeder(rng, rows):
                got = judge(unit, task, pair)
                if hard is None:  # a valid variant
                    valid["variants"] += 1
                    valid["variants_rejected"] += got is not None
                    valid["variants_rejected_new_codes"] += got in CODES
                    if got is not None:
                        print(f"  false reject {got}: {pair['instruction']!r}")
                    continue
                kind = "hard" if hard else "easy"
                stats[code][f"{kind}_n"] += 1
                stats[code][f"{kind}_hit"] += got == code
                stats[code][f"{kind}_other"] += got is not None and got != code
                if got != code and not hard and args.verbose:
                    print(f"  {code} seeded, got {got}: {pair['instruction']!r}")
    print(f"{'code':22} {'seeded':>7} {'recall':>7} {'any code':>8} | {'hard':>5} {'recall':>7} {'any code':>8}")
    table = {}
    for code, s in stats.items():
        rec = s["easy_hit"] / max(s["easy_n"], 1)
        hrec = s["hard_hit"] / max(s["hard_n"], 1)
        table[code] = {"seeded": s["easy_n"], "recall": round(rec, 3), "other_code": s["easy_other"],
                       "hard": s["hard_n"], "hard_recall": round(hrec, 3), "hard_other": s["hard_other"]}  # fmt: skip
        anyc = (s["easy_hit"] + s["easy_other"]) / max(s["easy_n"], 1)
        hany = (s["hard_hit"] + s["hard_other"]) / max(s["hard_n"], 1)
        print(f"{code:22} {s['easy_n']:7d} {rec:7.1%} {anyc:8.1%} | {s['hard_n']:5d} {hrec:7.1%} {hany:8.1%}")
    print(
        f"valid template pairs: {valid['template']}, rejected {valid['template_rejected']} "
        f"(by the four new codes: {valid['template_rejected_new_codes']})"
    )
    new = valid["variants_rejected_new_codes"]
    print(f"valid variants (bare unique refs, right colours, part synonyms): {valid['variants']}, "
          f"rejected {valid['variants_rejected']} (by the four new codes: {new})")  # fmt: skip
    out = {"seed": args.seed, "units": len(units), "codes": table, "valid": dict(valid)}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "semantic_recall.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
