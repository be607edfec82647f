"""Draw an audit sample: a stratified (per task), seeded random sample of one committed version's
accepted pairs, plus optionally rejected pairs (to estimate what the filters throw away wrongly).

Selection reads only the id columns of the version's shards, picks ids with a seeded RNG per
(task, kind), then reads the full rows of the picked ids only. Same version + seed + sizes -> the
same sample. The sample stores everything the review page shows (no shard is read while reviewing)
and the shard each pair came from (to tell when the version was garbage-collected).
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.quality.store import AuditError, create_record, sample_uri
from pipelines.storage import fs as storage
from pipelines.storage import guard
from pipelines.storage import output as output_versions
from pipelines.storage.fs import StorageSpec
from schemas.columns import KIND_REJECTS, KIND_SAMPLES, KIND_VERIFY_FAILED, TASKS
from schemas.manifest import Manifest

SAMPLE_FORMAT = 1
KIND_SAMPLE, KIND_REJECT = "sample", "reject"  # item kinds in an audit sample
# Pairs the verifier moved out of `samples`: judged by people only to measure the verifier (they are
# not part of the dataset, so they never count towards its precision).
KIND_FAILED = "verify_failed"
VERIFY_COLUMNS = ("verify_verdict", "verify_score")  # optional, written by the verifier when it ran
SAMPLE_COLUMNS = ["sample_id", "source", "image_id", "image_uri", "width", "height", "task", "subtype",
                  "instruction", "answer", "target_ids", "mask"]
REJECT_COLUMNS = ["gen_key", "source", "image_id", "task", "pair_index", "reason", "detail", "subtype",
                  "instruction", "answer", "target_local_ids"]


def resolve_version(output: str, version: int | None, store: StorageSpec) -> Manifest:
    try:
        return output_versions.resolve_version(output, version, store)
    except output_versions.VersionNotFound as exc:  # said the audit's way (exit 1, one line)
        raise AuditError(f"{exc}") from None


def _read(output: str, path: str, columns: list[str], store: StorageSpec, filt: Any = None):
    fs, p = storage.fs_and_path(guard.shard_uri(output, path), store)
    names = set(pq.read_schema(p, filesystem=fs).names) if filt is not None else set(columns)
    cols = [c for c in columns if c in names] + [c for c in VERIFY_COLUMNS if c in names and c not in columns]
    return storage.with_retries(lambda: pq.read_table(p, filesystem=fs, columns=cols, filters=filt), store,
                                f"read {path}")


def _pick(output: str, m: Manifest, kind: str, task: str, n: int, rng: random.Random,
          store: StorageSpec) -> tuple[list[dict[str, Any]], int]:
    """(n picked rows with their shard path, the population size) of one (kind, task)."""
    sample_like = kind in (KIND_SAMPLES, KIND_VERIFY_FAILED)
    id_cols = ["sample_id"] if sample_like else ["gen_key", "pair_index"]
    ids: list[tuple[str, str, int]] = []  # (shard path, id, pair_index)
    for s in m.shards_of(kind, task):
        t = _read(output, s.path, id_cols, store)
        if sample_like:
            ids.extend((s.path, i, 0) for i in t.column("sample_id").to_pylist())
        else:  # a whole-response reject (pair_index -1) has no pair a person could judge
            ids.extend((s.path, g, p) for g, p in zip(t.column("gen_key").to_pylist(),
                                                       t.column("pair_index").to_pylist(), strict=True) if p >= 0)
    ids.sort()
    chosen = rng.sample(ids, min(n, len(ids))) if n > 0 else []
    by_shard: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for path, i, p in chosen:
        by_shard[path].add((i, p))
    rows: list[dict[str, Any]] = []
    for path, wanted in sorted(by_shard.items()):
        key_col = "sample_id" if sample_like else "gen_key"
        filt = pc.field(key_col).isin(sorted({i for i, _ in wanted}))
        cols = SAMPLE_COLUMNS if sample_like else REJECT_COLUMNS
        for r in _read(output, path, cols, store, filt).to_pylist():
            if (r[key_col], r.get("pair_index", 0)) in wanted:
                rows.append({**r, "shard": path})
    return rows, len(ids)


def _item(kind: str, r: dict[str, Any]) -> dict[str, Any]:
    key = {KIND_SAMPLE: r.get("sample_id"), KIND_FAILED: f"failed:{r.get('sample_id')}"}.get(
        kind, f"reject:{r.get('gen_key')}:{r.get('pair_index')}")
    item = {"key": key, "kind": kind, **{k: v for k, v in r.items()}}
    for c in VERIFY_COLUMNS:
        item.setdefault(c, None)
    return item


def draw_sample(output: str, name: str, store: StorageSpec, per_task: int, version: int | None = None,
                seed: int = 0, rejects: int = 0, verify_failed: int = 0) -> dict[str, Any]:
    """Draw, store (create-once) and return the sample of audit `name`."""
    if min(per_task, rejects, verify_failed) < 0 or per_task + rejects + verify_failed == 0:
        raise AuditError("nothing to draw: --per-task and --rejects must be >= 0, and one of them > 0")
    m = resolve_version(output, version, store)
    items: list[dict[str, Any]] = []
    population: dict[str, dict[str, int]] = {}
    for task in TASKS:
        got, n_samples = _pick(output, m, KIND_SAMPLES, task, per_task, random.Random(f"{seed}:{task}:s"), store)
        items.extend(_item(KIND_SAMPLE, r) for r in got)
        bad, n_rejects = _pick(output, m, KIND_REJECTS, task, rejects, random.Random(f"{seed}:{task}:r"), store)
        items.extend(_item(KIND_REJECT, r) for r in bad)
        failed, n_failed = _pick(output, m, KIND_VERIFY_FAILED, task, verify_failed,
                                 random.Random(f"{seed}:{task}:f"), store)
        items.extend(_item(KIND_FAILED, r) for r in failed)
        population[task] = {KIND_SAMPLE: n_samples, KIND_REJECT: n_rejects, KIND_FAILED: n_failed}
    if not items:
        raise AuditError(f"empty sample: version {m.version} has no accepted pairs"
                         + (" or pair-level rejects" if rejects else "") + f" (per task {per_task})")
    items.sort(key=lambda it: it["key"])
    random.Random(f"{seed}:order").shuffle(items)  # tasks and kinds mixed, so no run of one kind biases people
    sample = {"format": SAMPLE_FORMAT, "name": name, "version": m.version, "build_id": m.build_id,
              "seed": seed, "per_task": per_task, "rejects_per_task": rejects,
              "verify_failed_per_task": verify_failed,
              "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "population": population, "items": items}
    if not create_record(sample_uri(output, name), sample, store):
        raise AuditError(f"audit {name!r} already exists under {output}: pick another --name "
                         "(a sample is never redrawn, its verdicts refer to it)")
    return sample


def collected_shards(output: str, sample: dict[str, Any], store: StorageSpec) -> list[str]:
    """Shards of the sample's pairs that are gone from the output (the version was garbage-collected)."""
    paths = sorted({it["shard"] for it in sample["items"]})
    return [p for p in paths if not storage.exists(storage.join(output, p), store)]
