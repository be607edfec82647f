#!/usr/bin/env python
"""Write a dataset card for a committed version: README.md (Hugging Face format), plots, HTML page.

    python pipelines/cli/card.py [--version N] [--out DIR] [--output URI] [--config FILE] [key=value ...]

Default DIR: <output>/cards/v<N>/. The README's configs point at the version's sample shards,
relative to the output root. docs/quality.md describes the plots.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.config import ConfigError, load_config
from pipelines.exits import run as run_cli
from pipelines.quality.store import AuditError
from pipelines.storage.fs import StorageError
from pipelines.storage.output import output_of


def main(argv: list[str] | None = None) -> int:
    # The shared error layer (pipelines/exits.py): no traceback, the exit-code table, Ctrl-C hint.
    return run_cli("card", lambda: _main(argv))


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="card.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", help="output uri (default: the config's output.uri)")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--version", type=int, help="manifest version (default: the latest)")
    ap.add_argument("--out", help="where to write the card (default: <output>/cards/v<N>/)")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"card: configuration error: {exc}", file=sys.stderr)
        return 2
    store, output = output_of(cfg, args.output)
    from pipelines.quality.card import write_card  # matplotlib: only once the arguments are fine

    try:
        written = write_card(output, store, args.version, args.out)
    except (AuditError, StorageError) as exc:
        print(f"card: {exc}", file=sys.stderr)
        return 1
    for uri in written:
        print(f"card: wrote {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
