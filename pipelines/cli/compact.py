#!/usr/bin/env python
"""Compact the latest version of a Ground-V output into few large shards (a new version).

    python pipelines/cli/compact.py [--output URI] [--max-rows 100000] [--max-mb 64]

The new version holds exactly the same rows (ledger included); older versions stay readable until
`manifest.py gc` removes the shards no kept version references. Killed before it commits, the
previous version stays the latest (docs/incremental.md).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.build.commit import CommitConflict
from pipelines.build.compact import DEFAULT_MAX_MB, DEFAULT_MAX_ROWS, compact
from pipelines.config import ConfigError, load_config
from pipelines.storage.output import output_of


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", help="output uri (default: the config's output.uri)")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows per shard at most")
    ap.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB, help="stored MB per shard at most")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, [])
    except ConfigError as exc:
        print(f"compact: configuration error: {exc}", file=sys.stderr)
        return 2
    store, output = output_of(cfg, args.output)
    try:
        m = compact(output, store, args.max_rows, args.max_mb)
    except CommitConflict as exc:
        print(f"compact: {exc}; a build committed meanwhile, run compact again", file=sys.stderr)
        return 3
    if m is None:
        print(f"compact: nothing to compact under {output}")
        return 0
    c = m.stats["compaction"]
    print(f"compact: v{m.version} = v{m.parent_version} in {c['shards_after']} shards (was {c['shards_before']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
