"""The one error boundary: every exception leaving a command becomes one line on stderr plus
the next step, and an exit code CI can gate on. Tracebacks only with --debug (or
QUANTKIT_DEBUG=1).

Exit codes: 0 ok, 1 a failed check or step, 2 engine failure, 3 bad input, 70 an internal crash (an
unexpected exception: a quantkit bug, EX_SOFTWARE), so CI can tell a crash from a failed check.
Hugging Face Hub errors are mapped through the one table `quantkit.errors.HUB_ERRORS` (gated,
not found, revision, offline, HTTP) to one line with the next step; torch's out-of-memory to the
memory options.

Interruptions: Ctrl-C (SIGINT) exits 130; SIGTERM (a cancelled CI job, `kill`) and SIGHUP (a
closed terminal) are turned into exceptions for the command's duration (quantkit.interrupts), so
engines are stopped and partial outputs removed exactly as for Ctrl-C, and exit 128 + signal:
143 and 129."""

from __future__ import annotations

import os
import sys

import typer

from quantkit.errors import EXIT_INTERNAL, QuantkitError, first_line, hub_problem
from quantkit.interrupts import Terminated, signals_as_exceptions

__all__ = ["run_with_boundary", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_INTERNAL"]

EXIT_USAGE = 3
EXIT_INTERRUPTED = 130


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("QUANTKIT_DEBUG") == "1"


def _say(msg: str, hint: str | None = None) -> None:
    line = f"error: {msg}"
    if hint:
        line += f" -> {hint}"
    try:
        print(line, file=sys.stderr)
    except OSError:  # stderr was a terminal that is gone (SIGHUP): the exit code still tells
        pass


_OOM_HINT = ("quantize one decoder layer at a time (--mode layerwise), cap it with --max-memory, or use fewer "
             "calibration samples (--samples)")


def _is_torch_oom(exc: BaseException) -> bool:
    """torch's out-of-memory (CUDA or CPU allocator) is a RuntimeError subclass, not MemoryError."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch else None
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in first_line(exc).lower()[:200]


def run_with_boundary(command, argv: list[str]) -> int:
    debug = _debug(argv)
    try:
        with signals_as_exceptions():
            result = command.main(args=argv, prog_name="quantkit", standalone_mode=False)
        if result == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130)
            _say("interrupted", "nothing was written to the output path; run the command again")
        return result if isinstance(result, int) else 0
    except Terminated as exc:  # SIGTERM / SIGHUP, after every engine and partial output is cleaned up
        _say(f"interrupted by {exc.signame}", "engines were stopped and nothing was written to the output path; "
             "run the command again")
        return exc.exit_code
    except QuantkitError as exc:
        if debug:
            raise
        _say(exc.message, exc.hint)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _say("interrupted", "nothing was written to the output path; run the command again")
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:  # usage errors (unknown option, bad value...)
        exc.show()
        return EXIT_USAGE
    except typer.Exit as exc:
        return exc.exit_code
    except MemoryError:
        if debug:
            raise
        _say("out of memory", _OOM_HINT)
        return 1
    except Exception as exc:  # not a QuantkitError: still one line, traceback on demand
        if debug:
            raise
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    """An exception quantkit did not raise itself: a Hub error (possibly wrapped, e.g. by
    transformers), torch's out-of-memory, or else an internal crash, which gets its own exit code."""
    hub = hub_problem(exc)
    if hub:
        _say(hub.message, hub.hint)
        return hub.exit_code
    if _is_torch_oom(exc):
        _say(f"out of memory: {first_line(exc, 160)}", _OOM_HINT)
        return 1
    _say(f"{type(exc).__name__}: {first_line(exc)}",
         "run again with --debug for the traceback, and report it if it is a quantkit bug")
    return EXIT_INTERNAL
