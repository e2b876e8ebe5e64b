"""A cancelled command leaves nothing running: SIGTERM (a cancelled CI job) and SIGHUP (a closed
terminal) are handled like Ctrl-C. quantkit stops the engine's whole process group, exits
128 + signal (143, 129; 130 for Ctrl-C), and the engine's port is free again. Hidden temporary
directories of embedded-model conversions killed mid-way are removed by the next run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import default_signals

DATA = Path(__file__).parent / "data"
SIGNALS = [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]


# ---------------------------------------------------------------- helpers


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(d.name))
    return members


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(what, proc: subprocess.Popen, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = what()
        if got:
            return got
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"quantkit ended before it was signalled (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the engine")


def _pids(path: Path) -> tuple[int, int] | None:
    try:
        child, leader = map(int, path.read_text().split())
    except (OSError, ValueError):
        return None
    return child, leader


def _engine_port(leader: int) -> int:
    argv = Path(f"/proc/{leader}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--port") + 1])


def _validate(tmp_path: Path, engine_script: Path, **env) -> subprocess.Popen:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return subprocess.Popen(
        [sys.executable, "-m", "quantkit.cli.main", "validate", str(ckpt), "--engine", "vllm",
         "--engine-python", str(engine_script), "--skip-inspect", "--timeout", "120",
         "--report-dir", str(tmp_path / "rep")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals,
        env={**os.environ, "QUANTKIT_CACHE": str(tmp_path / "cache"), "FAKE_ENGINE_PY": sys.executable, **env})


def _signal_and_check(proc: subprocess.Popen, sig: int, code: int, leader: int, port: int) -> None:
    proc.send_signal(sig)  # quantkit alone, as `kill <pid>` does; the engine is in its own session
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "interrupted" in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    deadline = time.time() + 3  # SIGKILLed processes take a moment to disappear from /proc
    while time.time() < deadline and _group_members(leader):
        time.sleep(0.05)
    assert not _group_members(leader), "engine processes survived quantkit"
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        pass  # the group is gone
    else:  # only zombies, re-parented to an init that does not reap (some containers): no memory, no port
        assert not _group_members(leader)
    assert not _port_open(port), f"port {port} still open"


# ---------------------------------------------------------------- validate, interrupted


@pytest.fixture()
def groups(tmp_path):
    """Process groups of fake engines: what is left of them at teardown (a failing test) is
    SIGKILLed, only processes whose environment names this test's directory."""
    started: list[int] = []
    yield started
    for pgid in started:
        for pid in _group_members(pgid):
            try:
                if str(tmp_path).encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


@pytest.mark.parametrize("sig,code", SIGNALS, ids=lambda x: getattr(x, "name", str(x)))
def test_signal_during_engine_boot_stops_the_engine_group(tmp_path, groups, sig, code):
    pids = tmp_path / "pids"
    proc = _validate(tmp_path, DATA / "fake_engine_hang.sh", FAKE_ENGINE_PIDS=str(pids))
    child, leader = _wait_for(lambda: _pids(pids), proc)
    groups.append(leader)
    port = _engine_port(leader)
    time.sleep(0.3)  # quantkit is polling /health
    assert _group_members(leader)
    _signal_and_check(proc, sig, code, leader, port)
    assert not (tmp_path / "rep" / "validation.json").exists()


@pytest.mark.parametrize("sig,code", SIGNALS, ids=lambda x: getattr(x, "name", str(x)))
def test_signal_during_probing_stops_the_engine_group(tmp_path, groups, sig, code):
    pids, requests = tmp_path / "pids", tmp_path / "requests"
    proc = _validate(tmp_path, DATA / "fake_engine_serve.sh", FAKE_ENGINE_PIDS=str(pids),
                     FAKE_REQUESTS=str(requests), FAKE_DELAY="60")
    _wait_for(lambda: requests.is_file() and requests.read_text(), proc)  # a probe is in flight
    child, leader = _pids(pids)
    groups.append(leader)
    port = _engine_port(leader)
    assert _port_open(port) and child in _group_members(leader)
    _signal_and_check(proc, sig, code, leader, port)


def test_engine_left_outside_a_with_is_killed_at_exit(tmp_path, groups):
    """The atexit hook, last resort: an engine started without `with` and never stopped."""
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        from quantkit.engines.server import EngineServer, free_port
        port = free_port()
        s = EngineServer([{str(DATA / "fake_engine_serve.sh")!r}, "--port", str(port)], {{}},
                         {str(tmp_path / "engine.log")!r}, port, ready_timeout=60, poll=0.1)
        s.start()
        print(port, s.pgid, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FAKE_ENGINE_PY": sys.executable, "FAKE_ENGINE_PIDS": str(pids)})
    assert out.returncode == 0, out.stderr[-2000:]
    port, pgid = map(int, out.stdout.split())
    groups.append(pgid)
    assert not _group_members(pgid) and not _port_open(port)


# ---------------------------------------------------------------- the signal handling itself


def test_signals_raise_terminated_and_handlers_are_restored(default_signal_handlers):
    from quantkit.interrupts import Terminated, deferred, signals_as_exceptions

    before = signal.getsignal(signal.SIGTERM)
    with signals_as_exceptions():
        with pytest.raises(Terminated) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert info.value.exit_code == 143 and info.value.signame == "SIGTERM"
        # inside deferred() the signal waits for the block's end
        reached = False
        with pytest.raises(Terminated) as info:
            with deferred():
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.05)
                reached = True
        assert reached and info.value.exit_code == 129
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_sighup_stays_ignored():
    """`nohup quantkit ...` keeps running when the terminal closes."""
    from quantkit.interrupts import signals_as_exceptions

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_exceptions():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, old)


# ---------------------------------------------------------------- embedded-model cache


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _fake_conversion(monkeypatch, tmp_path):
    import quantkit.embedded as emb

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(emb, "_gguf_path", lambda spec: tmp_path / "model.gguf")
    monkeypatch.setattr(emb, "_convert", lambda spec, gguf, dest: (dest / "model.safetensors").write_bytes(b"w"))
    return emb


def test_stale_embedded_temp_dirs_are_removed(tmp_path, monkeypatch):
    emb = _fake_conversion(monkeypatch, tmp_path)
    cache = tmp_path / "cache" / "embedded"
    cache.mkdir(parents=True)
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead = cache / f".smollm2-135m.partial-{_dead_pid()}-ab12cd34"
        alive = cache / f".smollm2-135m.partial-{live.pid}-ef56gh78"
        mine = cache / f".smollm2-135m.partial-{os.getpid()}-zz99yy88"  # an earlier process with our pid
        old_legacy, new_legacy = cache / ".smollm2-135m.k3j4h5g6", cache / ".smollm2-135m.a1b2c3d4"
        for d in (dead, alive, mine, old_legacy, new_legacy):
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"half")
        os.utime(old_legacy, (time.time() - 7 * 3600,) * 2)
        dest = emb.materialize("smollm2-135m")
        assert (dest / "model.safetensors").read_bytes() == b"w" and (dest / emb._MARKER).is_file()
        assert not dead.exists() and not mine.exists() and not old_legacy.exists()
        assert alive.exists(), "a running conversion's directory was removed"
        assert new_legacy.exists(), "a legacy directory younger than the age limit was removed"
    finally:
        live.kill()
        live.wait()
    # a current cache is returned as is, and still cleaned
    dead2 = cache / f".smollm2-135m.partial-{_dead_pid()}-00000000"
    dead2.mkdir()
    assert emb.materialize("smollm2-135m") == dest and not dead2.exists()


_SLOW_CONVERSION = """
import sys, time
from pathlib import Path
import quantkit.embedded as emb
from quantkit.interrupts import signals_as_exceptions

def slow(spec, gguf, dest):
    (dest / "model.safetensors").write_bytes(b"half")
    time.sleep(60)

emb._gguf_path = lambda spec: Path("model.gguf")
emb._convert = slow
with signals_as_exceptions():
    emb.materialize("smollm2-135m")
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_conversion_then_next_run_succeeds(tmp_path, monkeypatch, sig):
    cache = tmp_path / "cache" / "embedded"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERSION], cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "QUANTKIT_CACHE": str(tmp_path / "cache")},
                            preexec_fn=default_signals)
    partial = _wait_for(lambda: [p for p in cache.glob(".smollm2-135m.partial-*") if (p / "model.safetensors").exists()]
                        if cache.is_dir() else None, proc)[0]
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode != 0 and not (cache / "smollm2-135m").exists()
    # SIGTERM unwinds through atomic_dir's cleanup; SIGKILL leaves the directory to the next run
    assert partial.exists() == (sig == signal.SIGKILL)
    emb = _fake_conversion(monkeypatch, tmp_path)
    dest = emb.materialize("smollm2-135m")
    assert (dest / "model.safetensors").read_bytes() == b"w"
    assert not list(cache.glob(".smollm2-135m.*")), "a hidden temporary directory was left"


def test_a_signal_between_the_renames_of_an_overwrite_waits_for_both(tmp_path, monkeypatch, default_signal_handlers):
    """Replacing an output moves the old one aside, then renames the new one in: a SIGTERM
    arriving after the first rename is raised only after the second, so `final` is never missing,
    and the old copy is removed all the same."""
    from quantkit.checkpoint import atomic
    from quantkit.interrupts import Terminated, signals_as_exceptions

    final, new = tmp_path / "out", tmp_path / ".new"
    for d, text in ((final, "old"), (new, "new")):
        d.mkdir()
        (d / "f").write_text(text)
    real, calls = os.replace, []

    def replace(a, b):
        real(a, b)
        calls.append(Path(b).name)
        if len(calls) == 1:  # the old output is aside, the new one not yet in
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with signals_as_exceptions():
        with pytest.raises(Terminated):
            atomic.place_dir(new, final, overwrite=True)
    assert calls == [".out.old-%d" % os.getpid(), "out"]
    assert (final / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
