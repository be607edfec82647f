"""What every CLI in pipelines/cli/ shares: the same `--output/--config/key=value` arguments
(before or after a subcommand) and the one error layer of pipelines/exits.py."""

from __future__ import annotations

import argparse
import re

from pipelines.config import ConfigError, GroundVConfig, load_config
from pipelines.exits import NotFound, run  # noqa: F401 - re-exported for the CLIs
from pipelines.storage.fs import StorageError, StorageSpec
from pipelines.storage.output import output_of
from pipelines.storage.preflight import check_reachable

OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*=")  # key=value (never an option or a path)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(arguments, key=value overrides): overrides may stand anywhere, also after a subcommand."""
    args, overrides = [], []
    for a in argv:
        (overrides if OVERRIDE.match(a) else args).append(a)
    return args, overrides


def common_parent() -> argparse.ArgumentParser:
    """--output/--config, accepted before and after a subcommand (defaults only set once)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--output", default=argparse.SUPPRESS, help="output uri (default: the config's output.uri)")
    p.add_argument("--config", action="append", default=argparse.SUPPRESS, help="YAML config file (repeatable)")
    return p


def load(args: argparse.Namespace, overrides: list[str]) -> tuple[GroundVConfig, StorageSpec, str]:
    """The config (defaults <- --config <- key=value), the store and the normalised output uri."""
    cfg = load_config(getattr(args, "config", []) or [], overrides)
    store, output = output_of(cfg, getattr(args, "output", None))
    # A missing bucket or refused credentials are said as such, not as "no committed version".
    try:
        check_reachable(output, store, "--output / output.uri")
    except StorageError as exc:  # before any work, like the build's pre-flight: exit code 2
        raise ConfigError(str(exc)) from None
    return cfg, store, output


