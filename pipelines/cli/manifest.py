#!/usr/bin/env python
"""Inspect and maintain the versions of a Ground-V output.

    python pipelines/cli/manifest.py show [VERSION] [--output URI]
    python pipelines/cli/manifest.py diff V1 V2 [--output URI]
    python pipelines/cli/manifest.py gc --keep N [--delete] [--grace-s S] [--output URI]

`--output` defaults to the config's output.uri (configs/default.yaml + --config/overrides).
`gc` lists the shards that no manifest among the newest N references and deletes them only with
`--delete` (a dry run by default). Shards named by a pending receipt (a crashed or running build's
paid-for work) and shards younger than --grace-s (default 6 h) are never deleted, nor are manifests.
Every tool also takes key=value config overrides.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import pyarrow.parquet as pq  # noqa: E402

from pipelines.cli.common import NotFound, common_parent, load, run, split_overrides  # noqa: E402
from pipelines.storage import fs as storage  # noqa: E402
from pipelines.storage import guard  # noqa: E402
from pipelines.storage.fs import StorageSpec  # noqa: E402
from pipelines.storage.gc import DEFAULT_GRACE_S, collect  # noqa: E402
from pipelines.storage.output import list_versions, load_manifest  # noqa: E402
from schemas.columns import KIND_SAMPLES, TASKS  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402


def show(m: Manifest) -> str:
    lines = [f"version {m.version} (parent {m.parent_version}), created {m.created_at}, build {m.build_id}",
             f"teacher: {m.teacher}", f"filters: {m.filters.get('version')}"]
    by: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for s in m.shards:
        acc = by[(s.task, s.kind)]
        acc[0] += 1
        acc[1] += s.rows
        acc[2] += s.bytes
    lines.append(f"{'task':<18} {'kind':<8} {'shards':>6} {'rows':>8} {'bytes':>10}")
    for (task, kind), (n, rows, size) in sorted(by.items()):
        lines.append(f"{task:<18} {kind:<8} {n:>6} {rows:>8} {size:>10}")
    for t in TASKS:
        if t in m.prompts:
            lines.append(f"prompt {t}: {m.prompts[t][:16]}")
    st = m.stats
    lines.append(f"stats: units planned {st.get('units_planned')}, reused {st.get('units_reused')}, "
                 f"teacher calls {st.get('teacher_calls')}, wall {st.get('wall_s')}s")
    return "\n".join(lines)


def sample_keys(output: str, m: Manifest, store: StorageSpec) -> dict[str, set[str]]:
    """task -> sample ids of a version (reads one column of its sample shards)."""
    out: dict[str, set[str]] = defaultdict(set)
    for s in m.shards:
        if s.kind != KIND_SAMPLES:
            continue
        fs, path = storage.fs_and_path(guard.shard_uri(output, s.path), store)
        ids = pq.read_table(path, filesystem=fs, columns=["sample_id"]).column("sample_id").to_pylist()
        out[s.task].update(ids)
    return out


def diff(output: str, a: Manifest, b: Manifest, store: StorageSpec) -> str:
    ka, kb = sample_keys(output, a, store), sample_keys(output, b, store)
    lines = [f"v{a.version} -> v{b.version}", f"{'task':<18} {'added':>7} {'removed':>7} {'kept':>7}  changes"]
    for t in TASKS:
        sa, sb = ka.get(t, set()), kb.get(t, set())
        notes = []
        if a.prompts.get(t) != b.prompts.get(t):
            notes.append("prompt changed")
        lines.append(f"{t:<18} {len(sb - sa):>7} {len(sa - sb):>7} {len(sa & sb):>7}  {', '.join(notes)}")
    if a.teacher != b.teacher:
        lines.append(f"teacher changed: {a.teacher} -> {b.teacher}")
    if a.filters.get("version") != b.filters.get("version"):
        lines.append(f"filters changed: {a.filters.get('version')} -> {b.filters.get('version')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run("manifest", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    argv, overrides = split_overrides(argv)
    common = common_parent()
    ap = argparse.ArgumentParser(prog="manifest.py", description=__doc__.split("\n\n")[0], parents=[common])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_show = sub.add_parser("show", parents=[common])
    p_show.add_argument("version", nargs="?", type=int)
    p_diff = sub.add_parser("diff", parents=[common])
    p_diff.add_argument("v1", type=int)
    p_diff.add_argument("v2", type=int)
    p_gc = sub.add_parser("gc", parents=[common])
    p_gc.add_argument("--keep", type=int, required=True, help="versions whose shards are kept (>= 1)")
    p_gc.add_argument("--delete", action="store_true", help="really delete (default: list only)")
    p_gc.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S,
                      help="never delete shards younger than this (a running build may still commit them)")
    args = ap.parse_args(argv)
    if args.cmd == "gc" and args.keep < 1:
        raise ValueError(f"--keep must be >= 1 (got {args.keep}): the latest version is always kept")
    _, store, output = load(args, overrides)
    versions = list_versions(output, store)
    if not versions:
        raise NotFound(f"no versions under {output} (nothing committed there yet)")

    def version(v: int) -> Manifest:
        if v not in versions:
            raise NotFound(f"no version {v} under {output} (committed versions: {versions[0]}..{versions[-1]})")
        return load_manifest(output, v, store)

    if args.cmd == "show":
        from pipelines.quality.report import audits_of_version

        m = version(args.version or versions[-1])
        print("\n".join([show(m), *audits_of_version(output, m.version, store)]))
    elif args.cmd == "diff":
        print(diff(output, version(args.v1), version(args.v2), store))
    else:
        r = collect(output, args.keep, store, args.grace_s, args.delete)
        verb = "deleted" if args.delete else "would delete (dry run; pass --delete)"
        for p in r.garbage:
            print(p)
        print(f"{verb}: {len(r.garbage)} shards, {r.size} bytes not referenced by the newest {args.keep} "
              f"versions; kept {r.kept_for_receipts} named by pending receipts and {r.kept_recent} younger "
              f"than {args.grace_s:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
