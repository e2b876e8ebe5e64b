"""SIGTERM and SIGHUP handled like Ctrl-C.

A CI runner cancelling a job sends SIGTERM, a closed terminal SIGHUP. Python's default for both is
to die on the spot, skipping every `finally`: an engine started in its own process group
(quantkit.engines.server) would keep running, re-parented to init, holding memory and a port, and
half-written outputs would stay behind. Inside `signals_as_exceptions()` these signals raise
`Terminated` in the main thread instead, so the stack unwinds through the same teardown as a
KeyboardInterrupt, and the CLI boundary exits 128 + the signal's number (143 for SIGTERM, 129 for
SIGHUP, 130 for Ctrl-C), what a shell reports for a process killed by that signal.

`deferred()` marks a few statements that must not be cut in half (starting a process and
recording its pid for teardown): a signal arriving inside is raised when they are done."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Terminated", "signals_as_exceptions", "deferred"]

_HANDLED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

_depth = 0  # nesting of deferred() sections in the main thread
_pending: int | None = None  # a signal that arrived inside one


class Terminated(BaseException):
    """SIGTERM/SIGHUP received. A BaseException, like KeyboardInterrupt, so that `except
    Exception` handlers let it through."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"terminated by {self.signame}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handler(signum: int, frame) -> None:
    global _pending
    if _depth:
        if _pending is None:
            _pending = signum
        return
    _raise(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Terminated and SIGINT KeyboardInterrupt (as
    usual, but deferrable); the previous handlers are restored afterwards. Only signals left at
    Python's default are taken over: one ignored on purpose (SIGHUP under nohup) or handled by the
    embedding program stays as it is. Outside the main thread (where Python cannot install
    handlers) it does nothing."""
    if not _main_thread():
        yield
        return
    previous = {}
    for sig in _HANDLED:
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        if signal.getsignal(sig) is default:
            previous[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back a signal handled by signals_as_exceptions() until the block is done, then raise
    it. Main thread only (elsewhere signals are not delivered to Python code anyway)."""
    global _depth, _pending
    if not _main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            _raise(signum)
