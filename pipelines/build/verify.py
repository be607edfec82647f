"""The verify step: a second model checks the version's accepted pairs (docs/teachers.md#verifier).

Runs after the stream, on the shards the new version will name: every sample row (and every row a
previous verifier rejected, kept whole in `verify_failed` shards) gets a verification key
(teachers/verifier.py: pair content + verifier identity + verifier prompt hash). Keys with a stored
verdict (`verdicts` shards the parent manifest names) are not asked again; the others go to the
verifier in batches. Then, per (batch, task):
  * samples       = rows that passed or are unverified, with `verify_verdict` / `verify_score`;
  * verify_failed = rows that failed (readers of `samples` never see them);
  * rejects       = the stream's rejects + one `verify_<verdict>` row per failed pair (verdict text,
                    raw verifier response);
rewritten only when something changed, under the same batch label, so the next build's plan and
commit treat them like any shard of that unit. Changing the verifier or its prompt therefore
re-verifies stored pairs with zero teacher calls; turning verification on for an existing output
verifies the reused pairs; turning it off restores every pair to `samples` unverified.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Container

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.build.stages.shards import write_shard
from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage.fs import StorageSpec
from schemas.columns import KIND_REJECTS, KIND_SAMPLES, KIND_VERDICTS, KIND_VERIFY_FAILED
from schemas.manifest import Manifest, ShardEntry
from teachers.verifier import Verdict, decide, make_item, pair_key, redecide, verify_key
from teachers.verify_backends import Verifier, iter_chunks

VERDICT_BATCH = "verdicts"  # batch label of verdict shards (not a write batch of units)
VERIFY_REASON_PREFIX = "verify_"
MAX_PAIR_INDEX = 64  # sample_id = sha(gen_key:pair_index); recovered by trying indices up to this

ImageLookup = Callable[[str, int], dict[str, Any] | None]  # (source, image_id) -> image row


@dataclass
class VerifyResult:
    shards: list[ShardEntry]
    stats: dict[str, Any] = field(default_factory=dict)


def read_rows(output: str, entry: ShardEntry, store: StorageSpec, columns: list[str] | None = None) -> list[dict]:
    fs, path = storage.fs_and_path(guard.shard_uri(output, entry.path), store)
    t = storage.with_retries(lambda: pq.read_table(path, filesystem=fs, columns=columns), store, f"read {entry.path}")
    return t.to_pylist()


def _pair_index(gen_key: str, sid: str) -> int:
    for i in range(MAX_PAIR_INDEX):
        if hashlib.sha256(f"{gen_key}:{i}".encode()).hexdigest()[:32] == sid:
            return i
    return -1


def _verified_before(current: Manifest | None) -> bool:
    v = (current.stats or {}).get("verify") if current else None
    return bool(v and v.get("enabled"))


def stored_verdicts(
    output: str, current: Manifest | None, store: StorageSpec
) -> tuple[dict[str, dict], list[ShardEntry]]:
    """verify_key -> verdict row, from the verdict shards of the parent version."""
    shards = current.shards_of(KIND_VERDICTS) if current else []
    out: dict[str, dict] = {}
    for s in shards:
        for r in read_rows(output, s, store):
            out[r["verify_key"]] = r
    return out, shards


def _reject_row(row: dict, v: dict, label: str) -> dict[str, Any]:
    return {
        "gen_key": row["gen_key"],
        "source": row["source"],
        "image_id": row["image_id"],
        "task": row["task"],
        "pair_index": _pair_index(row["gen_key"], row["sample_id"]),
        "reason": VERIFY_REASON_PREFIX + str(v["verdict"]),
        "detail": f"{label}: {v['detail']}",
        "subtype": row["subtype"],
        "instruction": row["instruction"],
        "answer": row["answer"],
        "target_local_ids": [],
        "raw_response": v["response"],
        "prompt_hash": row["prompt_hash"],
        "teacher": row["teacher"],
        "filter_version": row["filter_version"],
    }


def _verdict_row(item: dict, v: Verdict, response: str | None, verifier: Verifier) -> dict[str, Any]:
    return {
        "verify_key": item["verify_key"],
        "pair_key": item["pair_key"],
        "verifier_hash": verifier.identity_hash(),
        "prompt_hash": verifier.prompt.content_hash,
        "verifier": verifier.label(),
        "gen_key": item["gen_key"],
        "task": item["task"],
        "passed": bool(v.passed),
        "verdict": v.verdict,
        "score": v.score,
        "detail": v.detail,
        "response": response,
    }


def _ask(
    verifier: Verifier,
    missing: list[dict],
    images: ImageLookup,
    prepare: Callable,
    batch_size: int,
    stats: dict[str, Counter],
) -> list[dict]:
    """Send the rows without a stored verdict to the verifier; return the new verdict rows."""
    vh, ph = verifier.identity_hash(), verifier.prompt.content_hash
    items = []
    for row in missing:
        image = images(row["source"], int(row["image_id"]))
        if image is None:  # the source no longer lists the image: leave the pair unverified
            stats[row["task"]]["unverified_no_image"] += 1
            continue
        items.append(make_item(row, image, vh, ph))
    new: list[dict] = []
    for chunk in iter_chunks(items, batch_size):
        answers = verifier.answer(chunk, prepare)
        for it in chunk:
            stats[it["task"]]["verifier_calls"] += 1
            a = answers.get(it["verify_key"])
            if a is None:
                stats[it["task"]]["no_answer"] += 1
                continue
            v = decide(it, a["response"], a.get("p_pass"), verifier.prompt, verifier.threshold)
            if v.passed is None:  # the verifier's answer was unusable: ask again next build
                stats[it["task"]]["unusable_answer"] += 1
                continue
            new.append(_verdict_row(it, v, a["response"], verifier))
    return new


def verify_version(
    output: str,
    store: StorageSpec,
    verifier: Verifier,
    shards: list[ShardEntry],
    current: Manifest | None,
    images: ImageLookup,
    prepare: Callable,
) -> VerifyResult:
    """See module doc. `shards` are the new version's shards (from the commit's selection)."""
    # Stored verdicts outlive a build with verification off: turning it back on reuses them.
    kept_verdicts = current.shards_of(KIND_VERDICTS) if current else []
    if not verifier.enabled and not _verified_before(current):
        return VerifyResult([*shards, *kept_verdicts], {"enabled": False})
    stored, old_verdict_shards = stored_verdicts(output, current, store) if verifier.enabled else ({}, kept_verdicts)
    groups: dict[tuple[str, str], list[ShardEntry]] = defaultdict(list)
    keep: list[ShardEntry] = []
    for s in shards:
        if s.kind in (KIND_SAMPLES, KIND_VERIFY_FAILED, KIND_REJECTS):
            groups[(s.batch, s.task)].append(s)
        elif s.kind != KIND_VERDICTS:
            keep.append(s)
    vh, ph = verifier.identity_hash(), verifier.prompt.content_hash
    base: dict[tuple[str, str], list[dict]] = {}
    missing: list[dict] = []
    stats_reused: Counter = Counter()
    pair_keys: set[str] = set()
    for g, entries in groups.items():
        rows = [r for e in entries if e.kind in (KIND_SAMPLES, KIND_VERIFY_FAILED) for r in read_rows(output, e, store)]
        base[g] = rows
        for r in rows:
            pk = pair_key(r)
            pair_keys.add(pk)
            r["_vkey"] = verify_key(pk, vh, ph)
            if not verifier.enabled:
                continue
            if r["_vkey"] in stored:
                stats_reused[r["task"]] += 1
            else:
                missing.append(r)
    stats: dict[str, Counter] = defaultdict(Counter)
    for t, n in stats_reused.items():
        stats[t]["verdicts_reused"] = n
    new = _ask(verifier, missing, images, prepare, verifier.cfg.batch_size, stats) if missing else []
    verdicts = {**stored, **{v["verify_key"]: v for v in new}}
    out = list(keep)
    for g, entries in groups.items():
        out += _regroup(output, store, g, entries, base[g], verdicts if verifier.enabled else {}, verifier, stats)
    out += [s for s in old_verdict_shards if _still_used(output, s, store, pair_keys)]
    out += _write_verdicts(output, store, new)
    return VerifyResult(out, _summary(verifier, stats))


def _regroup(
    output: str,
    store: StorageSpec,
    g: tuple[str, str],
    entries: list[ShardEntry],
    rows: list[dict],
    verdicts: dict[str, dict],
    verifier: Verifier,
    stats: dict[str, Counter],
) -> list[ShardEntry]:
    batch, task = g
    passed, failed, vrejects = [], [], []
    changed = False
    for r in rows:
        v = verdicts.get(r.pop("_vkey"))
        old = (r.get("verify_verdict"), r.get("verify_score"))
        if v is None:
            r["verify_verdict"], r["verify_score"] = None, None
            stats[task]["unverified"] += 1
        else:
            ok = redecide(v, verifier.prompt, verifier.threshold)
            r["verify_verdict"], r["verify_score"] = ("pass" if ok else "fail"), v["score"]
            stats[task]["passed" if ok else "failed"] += 1
            if not ok:
                stats[task][f"failed:{VERIFY_REASON_PREFIX}{v['verdict']}"] += 1
                vrejects.append(_reject_row(r, v, v["verifier"]))
        changed |= old != (r["verify_verdict"], r["verify_score"])
        (failed if r["verify_verdict"] == "fail" else passed).append(r)
    if not changed:
        return entries
    rejects = [
        x
        for e in entries
        if e.kind == KIND_REJECTS
        for x in read_rows(output, e, store)
        if not str(x["reason"]).startswith(VERIFY_REASON_PREFIX)
    ]
    out: list[ShardEntry] = []
    for kind, kind_rows in ((KIND_SAMPLES, passed), (KIND_VERIFY_FAILED, failed), (KIND_REJECTS, rejects + vrejects)):
        if kind_rows:
            out.append(ShardEntry(**write_shard(output, store, kind, task, kind_rows), batch=batch))
    return out


def _still_used(output: str, entry: ShardEntry, store: StorageSpec, pair_keys: set[str]) -> bool:
    """Keep a stored verdict shard while any of its pairs is in the version (verifier A/B switches
    then reuse both verifiers' verdicts); drop it once none is."""
    return any(r["pair_key"] in pair_keys for r in read_rows(output, entry, store, ["pair_key"]))


def _write_verdicts(output: str, store: StorageSpec, rows: list[dict]) -> list[ShardEntry]:
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    return [
        ShardEntry(**write_shard(output, store, KIND_VERDICTS, t, rs), batch=VERDICT_BATCH)
        for t, rs in sorted(by_task.items())
    ]


def _summary(verifier: Verifier, stats: dict[str, Counter]) -> dict[str, Any]:
    tasks = {}
    for t, c in sorted(stats.items()):
        verified = c["passed"] + c["failed"]
        tasks[t] = {
            "verifier_calls": c["verifier_calls"],
            "verdicts_reused": c["verdicts_reused"],
            "verified": verified,
            "passed": c["passed"],
            "failed": c["failed"],
            "unverified": c["unverified"],
            "no_answer": c["no_answer"],
            "unusable_answer": c["unusable_answer"],
            "failed_by_reason": {k.split(":", 1)[1]: n for k, n in sorted(c.items()) if k.startswith("failed:")},
            "pass_rate": round(c["passed"] / verified, 4) if verified else None,
        }
    return {
        "enabled": verifier.enabled,
        "verifier": verifier.label() if verifier.enabled else None,
        "identity": verifier.identity() if verifier.enabled else None,
        "prompt_hash": verifier.prompt.content_hash if verifier.enabled else None,
        "threshold": verifier.threshold,
        "verifier_calls": sum(t["verifier_calls"] for t in tasks.values()),
        "verdicts_reused": sum(t["verdicts_reused"] for t in tasks.values()),
        "passed": sum(t["passed"] for t in tasks.values()),
        "failed": sum(t["failed"] for t in tasks.values()),
        "tasks": tasks,
    }


# ------------------------------------------------------------------------------------- dry run
def verify_plan(
    output: str, store: StorageSpec, verifier: Verifier, current: Manifest | None, reused_keys: Container[str]
) -> dict[str, Counter]:
    """Per task: why each stored pair of the reused units would be (re-)verified, or that it reuses
    a stored verdict. Reads the parent version's sample / verify_failed / verdict shards only."""
    out: dict[str, Counter] = defaultdict(Counter)
    if not verifier.enabled or current is None:
        return out
    stored, _ = stored_verdicts(output, current, store)
    seen: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for v in stored.values():
        seen[v["pair_key"]].add((v["verifier_hash"], v["prompt_hash"]))
    vh, ph = verifier.identity_hash(), verifier.prompt.content_hash
    for s in current.shards:
        if s.kind not in (KIND_SAMPLES, KIND_VERIFY_FAILED):
            continue
        rows = read_rows(output, s, store)
        isin = getattr(reused_keys, "isin", None)  # a KeySet answers for the whole shard at once
        inside = isin(pa.array([r["gen_key"] for r in rows], pa.string())) if isin else \
            [r["gen_key"] in reused_keys for r in rows]
        for r, reused in zip(rows, inside, strict=True):
            if not reused:
                continue
            pk = pair_key(r)
            if verify_key(pk, vh, ph) in stored:
                out[r["task"]]["stored verdict"] += 1
            elif any(h == vh for h, _ in seen[pk]):
                out[r["task"]]["verifier prompt changed"] += 1
            elif seen[pk]:
                out[r["task"]]["verifier changed"] += 1
            else:
                out[r["task"]]["never verified"] += 1
    return out


def image_lookup(sources: list[Any], store: StorageSpec, cache: str | None) -> ImageLookup:
    """(source, image_id) -> image row, reading each source's (cached) index on first use."""
    from pipelines.sources.resolve import read_source_cached

    by_name = {s.name: s for s in sources}
    loaded: dict[str, dict[int, dict]] = {}

    def lookup(source: str, image_id: int) -> dict[str, Any] | None:
        if source not in loaded:
            src = by_name.get(source)
            rows = read_source_cached(src, store, cache).to_pylist() if src is not None else []
            loaded[source] = {int(r["image_id"]): r for r in rows}
        return loaded[source].get(image_id)

    return lookup
