"""Engine lifecycle: a free port, the server in its own process group, readiness by polling
/health while the log streams to a file, early death detected at once (with the log's last
lines), and teardown of the whole group on success, failure, timeout, Ctrl-C, SIGTERM and SIGHUP.

The engine gets its own session so that one killpg reaches all of it (vLLM's API server, engine
core and workers) and a Ctrl-C in the terminal reaches quantkit alone, which then tears the
engine down in order. Signals reach the teardown as exceptions (quantkit.interrupts, installed
by the CLI boundary); servers still alive when the interpreter exits anyway are killed by an
atexit hook. Only SIGKILL of quantkit itself leaves an engine behind."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from quantkit.engines.client import Client
from quantkit.errors import EngineError
from quantkit.interrupts import Terminated, deferred

__all__ = ["free_port", "EngineServer", "log_tail"]

# Seconds an engine gets to exit on SIGTERM before its group is SIGKILLed: after a normal run,
# and when quantkit itself is being interrupted (CI runners SIGKILL a few seconds after SIGTERM).
GRACE_S = 15.0
INTERRUPTED_GRACE_S = 5.0

_LIVE: set["EngineServer"] = set()  # started and not yet stopped, for the atexit hook


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EngineServer:
    """`with EngineServer(argv, env, log, port) as client:` -> a healthy server, always torn down."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, port: int,
                 ready_timeout: float = 600.0, poll: float = 1.0):
        self.argv, self.env, self.log_path, self.port = argv, env, Path(log_path), port
        self.ready_timeout, self.poll = ready_timeout, poll
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self._owner: int | None = None  # pid of the process that started the engine
        self.boot_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Client:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        t0 = time.perf_counter()
        with deferred():  # a signal between fork and `self.proc = ...` would orphan the engine
            try:
                self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                             start_new_session=True)
            except FileNotFoundError as exc:
                raise EngineError(f"cannot start the engine: {exc}", hint="check --engine / --engine-python") from exc
            finally:
                log.close()
            self.pgid = self.proc.pid  # a new session: the leader's pid is the group's id
            self._owner = os.getpid()
            _LIVE.add(self)
        client = Client(self.base_url)
        deadline = t0 + self.ready_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise EngineError(f"engine exited with code {code} during startup; last log lines:\n{log_tail(self.log_path)}",
                                  hint=f"full log: {self.log_path}")
            if client.healthy():
                self.boot_seconds = round(time.perf_counter() - t0, 2)
                return client
            if time.perf_counter() > deadline:
                raise EngineError(f"engine not healthy within {self.ready_timeout:.0f}s; last log lines:\n"
                                  f"{log_tail(self.log_path)}", hint=f"raise --timeout, or see {self.log_path}")
            time.sleep(self.poll)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = GRACE_S) -> None:
        """SIGTERM to the engine's whole process group; SIGKILL to whatever is left once the
        leader has exited, once `grace` seconds have passed, or at once if another signal cuts
        the wait short (a second Ctrl-C, a CI runner's SIGTERM after its SIGINT)."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                _signal_group(self.pgid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # also when the leader died by itself: no child of the group survives it
            _signal_group(self.pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.pgid = None  # gone: its number may be reused, never signal it again
            _LIVE.discard(self)

    def __enter__(self) -> Client:
        try:
            return self.start()
        except BaseException as exc:
            self.stop(_grace_for(type(exc)))
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(_grace_for(exc_type))


def _grace_for(exc_type) -> float:
    interrupted = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, Terminated))
    return INTERRUPTED_GRACE_S if interrupted else GRACE_S


def _signal_group(pgid: int | None, sig: int) -> None:
    if pgid is None:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (or none of it is ours to signal)


@atexit.register
def _stop_all() -> None:
    """Last resort when the interpreter exits with engines still up (an exception that skipped
    their `with`, sys.exit from elsewhere): no engine outlives quantkit."""
    for server in list(_LIVE):
        if server._owner != os.getpid():  # a forked child inherited the registry, not the engine
            continue
        try:
            server.stop(grace=2.0)
        except Exception:
            _signal_group(server.pgid, signal.SIGKILL)
