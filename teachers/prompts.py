"""Load the per-task prompt files (teachers/prompts/<task>.yaml) into :class:`PromptSpec`.

A prompt file is data: role, rules, output rules, three few-shot examples, and the phrase
patterns the CPU template teacher uses (``template``; a VLM never sees them). The prompt version
is the sha256 of the file's bytes, so any edit -- even to a comment -- re-keys exactly that task's
units and no other task's.

File layout::

    task: part
    subtypes: [part]                  # must equal schemas.columns.TASK_SUBTYPES[task]
    system: "You are ..."             # role
    rules: ["...", ...]               # task rules, rendered as a bullet list
    output_rules: ["...", ...]        # answer format rules, rendered as a bullet list
    examples:                         # at least 3
      - objects: [{id, category, part_of?, box, attributes?, crowd?}, ...]
        response: {pairs: [{instruction, answer, target_ids, subtype}, ...]}
    template: {...}                   # optional phrase patterns for teachers/template.py
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from schemas.columns import ANSWER_FIELDS, ANSWER_PAIRS, TARGET_BOUNDS, TASK_SUBTYPES

MIN_EXAMPLES = 3



class PromptError(ValueError):
    """A prompt file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class PromptSpec:
    task: str
    subtypes: tuple[str, ...]
    system: str
    rules: tuple[str, ...]
    output_rules: tuple[str, ...]
    examples: tuple[dict[str, Any], ...]
    content_hash: str  # sha256 hex of the file bytes: the prompt version
    path: str
    template: dict[str, Any] = field(default_factory=dict)  # phrase patterns, template teacher only


def default_prompts_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")


def prompt_path(prompts_dir: str, task: str) -> str:
    return os.path.join(prompts_dir, f"{task}.yaml")


def _str_list(value: Any, key: str, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise PromptError(f"{path}: '{key}' must be a non-empty list of strings")
    return tuple(v.strip() for v in value)


def example_errors(task: str, subtypes: Iterable[str], example: Any) -> list[str]:
    """Problems with one few-shot example (empty when it is consistent with its own table)."""
    errs: list[str] = []
    if not isinstance(example, dict) or "objects" not in example or "response" not in example:
        return ["must be a mapping with 'objects' and 'response'"]
    objects = example["objects"]
    if not isinstance(objects, list) or not objects:
        return ["'objects' must be a non-empty list"]
    by_id: dict[int, dict[str, Any]] = {}
    for o in objects:
        if not isinstance(o, dict) or not isinstance(o.get("id"), int) or not isinstance(o.get("category"), str):
            errs.append(f"object {o!r} needs an integer 'id' and a string 'category'")
            continue
        box = o.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)):
            errs.append(f"object {o['id']} needs 'box' as 4 integers [x1, y1, x2, y2]")
        elif box[0] >= box[2] or box[1] >= box[3]:
            errs.append(f"object {o['id']} has an empty box {box}")
        by_id[o["id"]] = o
    if sorted(by_id) != list(range(1, len(objects) + 1)):
        errs.append("object ids must be 1..K without gaps")
    for o in by_id.values():
        parent = o.get("part_of")
        if parent is not None and (parent not in by_id or "part_of" in by_id[parent]):
            errs.append(f"part {o['id']} has part_of {parent}, which is not a whole object")
    response = example["response"]
    pairs = response.get(ANSWER_PAIRS) if isinstance(response, dict) else None
    if not isinstance(pairs, list) or not pairs:
        return errs + [f"'response' must be {{'{ANSWER_PAIRS}': [...]}} with at least one pair"]
    lo, hi = TARGET_BOUNDS[task]
    allowed = set(subtypes)
    for i, p in enumerate(pairs):
        where = f"pair {i}"
        if not isinstance(p, dict) or set(p) != set(ANSWER_FIELDS):
            errs.append(f"{where}: keys must be exactly {list(ANSWER_FIELDS)}")
            continue
        if p["subtype"] not in allowed:
            errs.append(f"{where}: subtype {p['subtype']!r} not in {sorted(allowed)}")
        ids = p["target_ids"]
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            errs.append(f"{where}: target_ids must be a list of integers")
            continue
        if len(set(ids)) != len(ids):
            errs.append(f"{where}: duplicate target ids")
        if len(ids) < lo or (hi is not None and len(ids) > hi):
            errs.append(f"{where}: {len(ids)} targets, task {task} needs {lo}..{hi if hi is not None else 'n'}")
        for t in ids:
            if t not in by_id:
                errs.append(f"{where}: target id {t} is not in the object table")
            elif by_id[t].get("crowd"):
                errs.append(f"{where}: target id {t} is a crowd region")
            elif task == "part" and "part_of" not in by_id[t]:
                errs.append(f"{where}: target id {t} is not a part")
    return errs


def load_prompt(prompts_dir: str, task: str) -> PromptSpec:
    """Read and validate teachers/prompts/<task>.yaml; errors name the file and the problem."""
    if task not in TASK_SUBTYPES:
        raise PromptError(f"unknown task {task!r}; expected one of {sorted(TASK_SUBTYPES)}")
    path = prompt_path(prompts_dir, task)
    if not os.path.isfile(path):
        raise PromptError(f"{path}: prompt file for task {task!r} not found")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PromptError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise PromptError(f"{path}: top level must be a mapping")
    if doc.get("task") != task:
        raise PromptError(f"{path}: 'task' is {doc.get('task')!r}, expected {task!r}")
    subtypes = tuple(doc.get("subtypes") or ())
    if subtypes != TASK_SUBTYPES[task]:
        raise PromptError(f"{path}: subtypes {list(subtypes)} != TASK_SUBTYPES[{task!r}] {list(TASK_SUBTYPES[task])}")
    system = doc.get("system")
    if not isinstance(system, str) or not system.strip():
        raise PromptError(f"{path}: 'system' must be a non-empty string")
    rules = _str_list(doc.get("rules"), "rules", path)
    output_rules = _str_list(doc.get("output_rules"), "output_rules", path)
    examples = doc.get("examples")
    if not isinstance(examples, list) or len(examples) < MIN_EXAMPLES:
        n = len(examples) if isinstance(examples, list) else 0
        raise PromptError(f"{path}: needs at least {MIN_EXAMPLES} examples, found {n}")
    for i, ex in enumerate(examples):
        errs = example_errors(task, subtypes, ex)
        if errs:
            raise PromptError(f"{path}: example {i}: " + "; ".join(errs))
    template = doc.get("template") or {}
    if not isinstance(template, dict):
        raise PromptError(f"{path}: 'template' must be a mapping")
    return PromptSpec(
        task=task,
        subtypes=subtypes,
        system=system.strip(),
        rules=rules,
        output_rules=output_rules,
        examples=tuple(examples),
        content_hash=hashlib.sha256(raw).hexdigest(),
        path=path,
        template=template,
    )


def load_prompts(prompts_dir: str, tasks: Iterable[str]) -> dict[str, PromptSpec]:
    """Load every task's prompt file (fail fast on the first broken one)."""
    return {t: load_prompt(prompts_dir, t) for t in tasks}
