"""Engine lifecycle: a free port, the server in its own process group, readiness by polling
/health while the log streams to a file, early death detected at once (with the log's last
lines), and teardown of the whole group on success, failure, timeout and Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from quantkit.engines.client import Client
from quantkit.errors import EngineError

__all__ = ["free_port", "EngineServer", "log_tail"]


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
        self.boot_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Client:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env}, start_new_session=True)
        except FileNotFoundError as exc:
            raise EngineError(f"cannot start the engine: {exc}", hint="check --engine / --engine-python") from exc
        finally:
            log.close()
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

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
                # the leader is gone; make sure no child of the group survives it
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
        self.proc.wait(timeout=10)

    def __enter__(self) -> Client:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
