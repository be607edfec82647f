"""One error-to-message layer for every CLI (the build and pipelines/cli/*): any failure becomes
`tool: message` on stderr and an exit code from one table (docs/reliability.md, "Exit codes").

No CLI prints a traceback: set GROUNDV_DEBUG=1 to get one for a bug report. Ctrl-C and SIGTERM
unwind the same way and say that re-running resumes (receipts keep every durable batch).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, Callable

from pipelines.build.commit import CommitConflict
from pipelines.config import ConfigError
from pipelines.core.secrets import scrub
from pipelines.storage.fs import StorageError

EXIT_OK = 0
EXIT_NOT_FOUND = 1  # nothing to work on: no committed version, no such version
EXIT_USAGE = 2  # bad arguments, config or input; an operation refused (nothing was changed)
EXIT_RACE = 3  # build only: the commit was lost to concurrent builds too many times
EXIT_FAILED = 4  # the store or the work failed after it started (nothing committed)
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM

RESUME_HINT = "work already written is kept: re-run the same command to resume"


class NotFound(LookupError):
    """Nothing to work on (no committed version, no such version): exit code 1."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the CLI unwinds like on Ctrl-C."""


def exit_code(exc: BaseException) -> tuple[int, str]:
    """The exit code and the message for a failure."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"interrupted; {RESUME_HINT}"
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, f"terminated (SIGTERM); {RESUME_HINT}"
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, f"configuration error: {exc}"
    if isinstance(exc, CommitConflict):  # another build or compaction committed meanwhile
        return EXIT_RACE, f"{exc}; run the same command again"
    if isinstance(exc, (NotFound, LookupError)):
        return EXIT_NOT_FOUND, str(exc).strip("'\"")
    if isinstance(exc, StorageError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, FileNotFoundError):
        return EXIT_USAGE, f"{exc.filename}: {exc.strerror or 'not found'}" if exc.filename else f"not found: {exc}"
    if isinstance(exc, IsADirectoryError):
        return EXIT_USAGE, f"{exc.filename or exc} is a directory, expected a file"
    if isinstance(exc, (PermissionError, NotADirectoryError)):
        return EXIT_USAGE, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    if isinstance(exc, ValueError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, RuntimeError) and type(exc).__module__.startswith(("pipelines.", "schemas.", "teachers.")):
        return EXIT_USAGE, str(exc)  # our own refusals (ExportError, CommitRefused): the message is for users
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    return EXIT_FAILED, f"failed: {type(exc).__name__}: {exc} (set GROUNDV_DEBUG=1 for the traceback)"


_SIGNALLED: list[int] = []  # signals received during this run (Ray may wrap the exception they raise)


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGNALLED.append(signum)
    raise Terminated()


def _on_sigint(signum: int, frame: Any) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt()


def interrupted() -> BaseException | None:
    """Terminated / KeyboardInterrupt when a signal arrived during this run, else None: a failure
    that follows a signal (Ray Data reports the interrupted execution as its own error) is the
    interruption, not a failure of the work."""
    if signal.SIGTERM in _SIGNALLED:
        return Terminated()
    if signal.SIGINT in _SIGNALLED:
        return KeyboardInterrupt()
    return None


def install_sigterm() -> None:
    """(Re)install our SIGTERM handler. Call after ray.init(): Ray's core worker installs a C++
    failure-signal handler that turns SIGTERM into a stack dump and exit -6."""
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass


def run(tool: str, fn: Callable[[], int]) -> int:
    """Run a CLI body: SIGTERM unwinds like Ctrl-C; any failure -> `tool: message` + exit code."""
    previous = None
    _SIGNALLED.clear()
    try:
        previous = (signal.signal(signal.SIGTERM, _on_sigterm), signal.signal(signal.SIGINT, _on_sigint))
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass
    try:
        return fn()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place that turns failures into messages
        if os.environ.get("GROUNDV_DEBUG"):
            traceback.print_exc()
        code, msg = exit_code(interrupted() or exc)
        print(f"{tool}: {scrub(msg)}", file=sys.stderr)
        _stop_local_ray()
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


def _stop_local_ray() -> None:
    """Shut our Ray driver down in an orderly way (a killed driver dumps a C++ stack, exit -6)."""
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
