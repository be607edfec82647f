"""What every CLI shares: the same `--output/--config/key=value` arguments and one layer that
turns any failure into a one-line message and an exit code (the table in docs/reliability.md).

No CLI prints a traceback: set GROUNDV_DEBUG=1 to get one for a bug report.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import traceback
from typing import Any, Callable

from pipelines.config import ConfigError, GroundVConfig, load_config
from pipelines.core.secrets import scrub
from pipelines.storage.fs import StorageError, StorageSpec
from pipelines.storage.output import output_of

# Exit codes of every CLI (docs/reliability.md, "Exit codes").
EXIT_OK = 0
EXIT_NOT_FOUND = 1  # nothing to work on: no committed version, no such version
EXIT_USAGE = 2  # bad arguments, config or input; an operation refused (nothing was changed)
EXIT_RACE = 3  # build only: the commit was lost to concurrent builds too many times
EXIT_FAILED = 4  # the store or the work failed after it started (nothing committed)
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM

OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*=")  # key=value (never an option or a path)
RESUME_HINT = "work already written is kept: re-run the same command to resume"


class NotFound(LookupError):
    """Nothing to work on (no committed version, no such version): exit code 1."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the CLI unwinds like on Ctrl-C."""


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
    return cfg, store, output


def exit_code(exc: BaseException) -> tuple[int, str]:
    """The exit code and the message for a failure."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"interrupted; {RESUME_HINT}"
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, f"terminated (SIGTERM); {RESUME_HINT}"
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, f"configuration error: {exc}"
    if isinstance(exc, (NotFound, LookupError)):
        return EXIT_NOT_FOUND, str(exc).strip("'\"")
    if isinstance(exc, StorageError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, FileNotFoundError):
        return EXIT_USAGE, f"not found: {exc.filename or exc}"
    if isinstance(exc, IsADirectoryError):
        return EXIT_USAGE, f"{exc.filename or exc} is a directory, expected a file"
    if isinstance(exc, (PermissionError, NotADirectoryError)):
        return EXIT_USAGE, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    if isinstance(exc, ValueError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    return EXIT_FAILED, f"failed: {type(exc).__name__}: {exc} (set GROUNDV_DEBUG=1 for the traceback)"


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def run(tool: str, fn: Callable[[], int]) -> int:
    """Run a CLI body: SIGTERM unwinds like Ctrl-C; any failure -> `tool: message` + exit code."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    try:
        return fn()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place that turns failures into messages
        if os.environ.get("GROUNDV_DEBUG"):
            traceback.print_exc()
        code, msg = exit_code(exc)
        print(f"{tool}: {scrub(msg)}", file=sys.stderr)
        _stop_local_ray()
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_local_ray() -> None:
    """Shut our Ray driver down in an orderly way (a killed driver dumps a C++ stack, exit -6)."""
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
