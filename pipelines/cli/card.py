#!/usr/bin/env python
"""Write a dataset card for a committed version: README.md (Hugging Face format), plots, HTML page.

    python pipelines/cli/card.py [--version N] [--out DIR] [--output URI] [--config FILE] [key=value ...]

Default DIR: <output>/cards/v<N>/. The README's configs point at the version's sample shards,
relative to the output root. docs/quality.md describes the plots.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cli.common import common_parent, load, run, split_overrides
from pipelines.quality.store import AuditError


def main(argv: list[str] | None = None) -> int:
    # The shared error layer (pipelines/exits.py): no traceback, the exit-code table, Ctrl-C hint.
    return run("card", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    argv, overrides = split_overrides(argv)
    ap = argparse.ArgumentParser(prog="card.py", description=__doc__.split("\n\n")[0], parents=[common_parent()])
    ap.add_argument("--version", type=int, help="manifest version (default: the latest)")
    ap.add_argument("--out", help="where to write the card (default: <output>/cards/v<N>/)")
    args = ap.parse_args(argv)
    _, store, output = load(args, overrides)
    from pipelines.quality.card import write_card  # matplotlib: only once the arguments are fine

    try:
        written = write_card(output, store, args.version, args.out)
    except AuditError as exc:  # no such version, nothing to describe: said as such, exit 1
        print(f"card: {exc}", file=sys.stderr)
        return 1
    for uri in written:
        print(f"card: wrote {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
