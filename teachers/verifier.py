"""The second-model verifier: prompts, keys, requests and verdict parsing (pure; no Ray, no vLLM).

Two kinds (docs/teachers.md#verifier):
* `listener` — the model sees the image, the object table and only the instruction and answers
  `{"target_ids": [...]}` (JSON schema, ids enum, [] = nothing matches). Pass iff the set equals
  the teacher's targets; a hallucination pair passes only with [].
* `mask_judge` — the model sees the image with the union mask drawn, a zoomed crop and the
  instruction, and answers one verdict of the prompt file. With log-probabilities the stored score
  is P(pass verdict) and `verify.threshold` decides; otherwise the verdict does.

Keys: `pair_key` hashes the pair content (generation key = image + annotations + teacher + prompt,
plus instruction, answer, subtype, targets); `verify_key` adds the verifier identity and the
verifier prompt's hash. A verdict is stored once per verify_key, so changing the verifier or its
prompt re-verifies stored pairs without calling the teacher. (Moves to pipelines/core/keys.py once
that module exists on main.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from pipelines.core.keys import VERIFY_REQUEST_VERSION, pair_key, verify_key  # noqa: F401  (one home: keys.py)
from pipelines.core.object_table import build_object_table, render_object_table, table_entries

KINDS = ("listener", "mask_judge")
PROMPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")


class VerifyPromptError(ValueError):
    """A verifier prompt file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class VerifyPrompt:
    kind: str
    system: str
    user: str
    examples: tuple[dict[str, Any], ...]
    verdicts: tuple[str, ...]  # mask_judge only
    pass_verdicts: tuple[str, ...]
    content_hash: str
    path: str


def default_prompt_path(kind: str) -> str:
    return os.path.join(PROMPTS_DIR, f"verify_{kind}.yaml")


def load_verify_prompt(kind: str, path: str | None = None) -> VerifyPrompt:
    """Load and check a verifier prompt file; its sha256 is the prompt hash."""
    if kind not in KINDS:
        raise VerifyPromptError(f"verify.kind must be one of {KINDS}, got {kind!r}")
    path = path or default_prompt_path(kind)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise VerifyPromptError(f"{path}: cannot read verifier prompt ({exc})") from None
    doc = yaml.safe_load(data) or {}
    if doc.get("kind") != kind:
        raise VerifyPromptError(f"{path}: kind is {doc.get('kind')!r}, expected {kind!r}")
    for key in ("system", "user"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise VerifyPromptError(f"{path}: {key!r} must be a non-empty string")
    examples = doc.get("examples") or []
    if not isinstance(examples, list) or not examples:
        raise VerifyPromptError(f"{path}: needs at least one few-shot example")
    verdicts = tuple(doc.get("verdicts") or ())
    passes = tuple(doc.get("pass_verdicts") or ())
    if kind == "mask_judge":
        if len(verdicts) < 2 or not passes or not set(passes) <= set(verdicts):
            raise VerifyPromptError(f"{path}: mask_judge needs verdicts and pass_verdicts (a subset)")
        bad = [e.get("response") for e in examples if e.get("response") not in verdicts]
        if bad:
            raise VerifyPromptError(f"{path}: example verdict {bad[0]!r} is not one of {list(verdicts)}")
    return VerifyPrompt(
        kind,
        doc["system"].strip(),
        doc["user"],
        tuple(examples),
        verdicts,
        passes,
        hashlib.sha256(data).hexdigest(),
        path,
    )


# ------------------------------------------------------------------------------------------ keys
def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------- requests
def object_table(objects: list[Mapping[str, Any]], width: int, height: int) -> tuple[str, dict[int, int]]:
    """The object table text (source-pixel boxes) and ann_id -> local id."""
    rows = build_object_table(objects)
    text = render_object_table(table_entries(rows, "xyxy", width, height))
    return text, {r.ann_id: r.local_id for r in rows}


def make_item(
    sample: Mapping[str, Any], image: Mapping[str, Any], verifier_hash: str, prompt_hash: str
) -> dict[str, Any]:
    """Everything one verification needs, as plain JSON-able data (ships to Ray tasks / JSONL)."""
    pk = pair_key(sample)
    table, ann_to_local = object_table(list(image["objects"] or []), int(image["width"]), int(image["height"]))
    return {
        "verify_key": verify_key(pk, verifier_hash, prompt_hash),
        "pair_key": pk,
        "gen_key": sample["gen_key"],
        "sample_id": sample["sample_id"],
        "task": sample["task"],
        "subtype": sample["subtype"],
        "instruction": sample["instruction"],
        "image_uri": sample["image_uri"],
        "width": int(image["width"]),
        "height": int(image["height"]),
        "object_table": table,
        "local_ids": sorted(ann_to_local.values()),
        "expected_ids": sorted(ann_to_local[int(a)] for a in sample["target_ids"] or []),
        "mask": dict(sample["mask"]) if sample["mask"] else None,
    }


def _few_shot_listener(prompt: VerifyPrompt) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for ex in prompt.examples:
        user = prompt.user.format(object_table=str(ex["object_table"]).strip(), instruction=ex["instruction"])
        turns += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": json.dumps(ex["response"], separators=(",", ":"))},
        ]
    return turns


def _few_shot_judge(prompt: VerifyPrompt) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    verdicts = ", ".join(prompt.verdicts)
    for ex in prompt.examples:
        user = f"(example: {ex['situation']})\n" + prompt.user.format(instruction=ex["instruction"], verdicts=verdicts)
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": str(ex["response"])}]
    return turns


def build_messages(item: Mapping[str, Any], prompt: VerifyPrompt, image_urls: list[str]) -> list[dict[str, Any]]:
    """Chat messages of one verification: system, few-shot turns, then the request with its images
    (listener: the photo when given; mask_judge: the overlay and the zoomed crop)."""
    if prompt.kind == "listener":
        few = _few_shot_listener(prompt)
        text = prompt.user.format(object_table=item["object_table"], instruction=item["instruction"])
    else:
        few = _few_shot_judge(prompt)
        text = prompt.user.format(instruction=item["instruction"], verdicts=", ".join(prompt.verdicts))
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": prompt.system}, *few, {"role": "user", "content": content}]


def output_constraint(item: Mapping[str, Any], prompt: VerifyPrompt) -> dict[str, Any]:
    """vLLM structured output: the listener's JSON schema (ids enum) or the judge's verdict choice.
    No `uniqueItems` (xgrammar rejects it): a repeated id changes nothing in a set comparison, so
    the length is capped at the number of ids instead."""
    if prompt.kind == "mask_judge":
        return {"choice": list(prompt.verdicts)}
    ids = list(item["local_ids"])
    target: dict[str, Any] = {"type": "array", "items": {"type": "integer"}, "maxItems": len(ids)}
    if ids:
        target["items"] = {"type": "integer", "enum": ids}
    schema = {
        "type": "object",
        "properties": {"target_ids": target},
        "required": ["target_ids"],
        "additionalProperties": False,
    }
    return {"json": json.dumps(schema, separators=(",", ":"))}


# -------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: the verifier's answer was unusable (no verdict is stored)
    verdict: str
    score: float | None
    detail: str


def _json_ids(text: str) -> list[int] | None:
    t = text.strip().strip("`")
    start, end = t.find("{"), t.rfind("}")
    try:
        doc = json.loads(t[start : end + 1]) if start >= 0 else json.loads(t)
    except ValueError:
        return None
    ids = doc.get("target_ids") if isinstance(doc, dict) else doc
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        return None
    return ids


def judge_listener(response: str | None, expected: list[int]) -> Verdict:
    """Listener: pass iff the ids it names equal the teacher's targets (as sets)."""
    ids = _json_ids(response or "")
    if ids is None:
        return Verdict(
            None, "unparseable", None, f'listener answer is not {{"target_ids": [...]}}: {str(response)[:200]!r}'
        )
    got, want = set(ids), set(expected)
    if got == want:
        return Verdict(True, "match", None, f"listener picked {sorted(got)}")
    if not want:
        verdict = "found_object"  # hallucination pair, but the listener found something
    elif not got:
        verdict = "no_match"
    elif got > want:
        verdict = "ambiguous"  # the instruction fits more objects than the targets
    elif got < want:
        verdict = "incomplete"
    else:
        verdict = "other_target"
    return Verdict(False, verdict, None, f"listener picked {sorted(got)}, teacher targets {sorted(want)}")


def judge_mask(response: str | None, prompt: VerifyPrompt, p_pass: float | None, threshold: float) -> Verdict:
    """Mask judge: the verdict word decides, unless a probability of passing is known (threshold)."""
    text = (response or "").strip().strip('"').strip().lower()
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("verdict", "")).lower()
        except (ValueError, AttributeError):
            text = ""
    verdict = next((v for v in prompt.verdicts if text == v or text.startswith(v)), None)
    if verdict is None:
        return Verdict(None, "unparseable", p_pass, f"not one of {list(prompt.verdicts)}: {str(response)[:200]!r}")
    if p_pass is not None:
        ok = p_pass >= threshold
        return Verdict(ok, verdict, p_pass, f"P({prompt.pass_verdicts[0]}) = {p_pass:.3f} vs threshold {threshold}")
    return Verdict(verdict in prompt.pass_verdicts, verdict, None, f"verdict {verdict}")


def p_pass_from_logprobs(first_token: Mapping[Any, Any] | None, prompt: VerifyPrompt) -> float | None:
    """P(pass verdict) from the first generated token's top log-probs (vLLM `logprobs=k`).

    Each candidate token counts for the verdict it starts (its text is a prefix of the verdict);
    the probability mass of the pass verdicts is normalised over the mass of all verdicts, so
    tokens outside the verdict set (which the choice constraint forbids anyway) do not count.
    """
    if not first_token:
        return None
    mass: dict[str, float] = {}
    for info in first_token.values():
        tok = str((info or {}).get("decoded_token") or "").strip().lower()
        lp = (info or {}).get("logprob")
        if not tok or lp is None or not math.isfinite(float(lp)):
            continue
        for v in prompt.verdicts:
            if v.startswith(tok):
                mass[v] = mass.get(v, 0.0) + math.exp(float(lp))
                break
    total = sum(mass.values())
    if total <= 0:
        return None
    return sum(mass.get(v, 0.0) for v in prompt.pass_verdicts) / total


def decide(
    item: Mapping[str, Any], response: str | None, p_pass: float | None, prompt: VerifyPrompt, threshold: float
) -> Verdict:
    if prompt.kind == "listener":
        return judge_listener(response, list(item["expected_ids"]))
    return judge_mask(response, prompt, p_pass, threshold)


def redecide(stored: Mapping[str, Any], prompt: VerifyPrompt, threshold: float) -> bool:
    """A stored verdict under the current threshold (changing the threshold never re-verifies)."""
    if stored.get("score") is not None and prompt.kind == "mask_judge":
        return float(stored["score"]) >= threshold
    return bool(stored["passed"])
