#!/usr/bin/env python
"""Compact the latest version of a Ground-V output into few large shards (a new version).

    python pipelines/cli/compact.py [--output URI] [--config FILE] [--max-rows 100000] [--max-mb 64] [key=value ...]

The new version holds exactly the same rows (ledger included); older versions stay readable until
`manifest.py gc` removes the shards no kept version references. Killed before it commits, the
previous version stays the latest (docs/incremental.md).

Runs in this process, one group after the other, without starting Ray: compaction is I/O-bound,
a standalone run has the machine to itself, and a group in flight holds at most one input shard
plus the compressed output (<= --max-mb), so Ray's ~4 s start and ~1.4 GB would cost more than
they save. (The build's commit, where Ray is already up, runs the groups as Ray tasks instead.)
"""

from __future__ import annotations

import argparse
import sys

from pipelines.build.compact import DEFAULT_MAX_MB, DEFAULT_MAX_ROWS, compact
from pipelines.cli.common import common_parent, load, run, split_overrides


def main(argv: list[str] | None = None) -> int:
    # The shared error layer: a lost commit race (CommitConflict) exits 3 like the build's.
    return run("compact", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    argv, overrides = split_overrides(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common_parent()])
    ap.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows per shard at most")
    ap.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB, help="stored MB per shard at most")
    args = ap.parse_args(argv)
    if args.max_rows < 1 or args.max_mb <= 0:
        raise ValueError("--max-rows must be >= 1 and --max-mb > 0")
    _, store, output = load(args, overrides)
    m = compact(output, store, args.max_rows, args.max_mb)
    if m is None:
        print(f"compact: nothing to compact under {output}")
        return 0
    c = m.stats["compaction"]
    print(f"compact: v{m.version} = v{m.parent_version} in {c['shards_after']} shards (was {c['shards_before']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
