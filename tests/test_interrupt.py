"""An interrupted quantize leaves nothing at --out: Ctrl-C (SIGINT) cleans up and exits 130;
SIGKILL leaves only a hidden partial sibling, which the next run removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import default_signals
from tiny_models import save_tiny_checkpoint


def _start(recipe: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe), "--out", str(out),
                             "--format", "ct", "--backend", "llmcompressor"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_signals)


def _wait_for_partial(out: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(out.parent.glob(f".{out.name}.partial-*"))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"quantize ended before the output was started: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no partial output directory appeared")


@pytest.fixture()
def slow_recipe(tmp_path) -> Path:
    src = tmp_path / "src"
    save_tiny_checkpoint("llama", src)
    r = tmp_path / "r.yaml"
    # enough calibration work (64 x 512 byte-level tokens) to be interrupted mid-way
    r.write_text(f"name: slow\nmodel:\n  source: {src}\ncalibration:\n  samples: 64\n  seq_len: 512\n")
    return r


@pytest.mark.e2e  # quantizes in a subprocess; the atomic_dir tests below are fast unit tests
def test_sigint_leaves_no_output(slow_recipe, tmp_path):
    out = tmp_path / "out" / "ckpt"
    proc = _start(slow_recipe, out)
    _wait_for_partial(out, proc)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err, (err[-2000:], out_text)
    assert not out.exists()
    assert not list(out.parent.glob(".*partial*")), "temporary directory was not cleaned up"


@pytest.mark.e2e
def test_sigint_during_the_shared_calibration_leaves_nothing(slow_recipe, tmp_path):
    """--format ct calibrates with ModelOpt into a hidden directory, then converts: interrupted
    there, neither the output nor the hidden calibration is left."""
    out = tmp_path / "out" / "ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "quantkit.cli.main", "quantize", str(slow_recipe), "--out", str(out),
                             "--format", "ct"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_signals)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.parent.glob(".*calibrated-modelopt*partial*")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not out.exists() and not list(out.parent.iterdir()), list(out.parent.iterdir())


@pytest.mark.e2e
def test_sigkill_leaves_no_output_and_next_run_cleans(slow_recipe, tmp_path):
    out = tmp_path / "out" / "ckpt"
    proc = _start(slow_recipe, out)
    partial = _wait_for_partial(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists()
    assert partial.exists()
    from quantkit.checkpoint.atomic import atomic_dir

    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("done")
    assert (out / "x").read_text() == "done"
    assert not partial.exists(), "stale partial of a dead process was not removed"


def test_existing_output_is_refused_without_overwrite(tmp_path):
    from quantkit.errors import UsageError
    from quantkit.checkpoint.atomic import atomic_dir

    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(UsageError):
        with atomic_dir(out):
            pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("1")
    assert (out / "new").is_file()


def test_failure_inside_leaves_previous_output_untouched(tmp_path):
    from quantkit.checkpoint.atomic import atomic_dir

    out = tmp_path / "o"
    out.mkdir()
    (out / "old").write_text("keep")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash mid-export")
    assert (out / "old").read_text() == "keep" and not (out / "half").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_place_dir_renames_a_finished_directory_into_place(tmp_path):
    from quantkit.checkpoint.atomic import place_dir
    from quantkit.errors import UsageError

    def done(text):
        d = tmp_path / f".done-{text}"
        d.mkdir()
        (d / "f").write_text(text)
        return d

    out = tmp_path / "o" / "modelopt"
    place_dir(done("1"), out)  # the parent is made
    assert (out / "f").read_text() == "1"
    second = done("2")
    with pytest.raises(UsageError):
        place_dir(second, out)
    assert (out / "f").read_text() == "1" and second.is_dir()  # refused: both left as they were
    place_dir(second, out, overwrite=True)
    assert (out / "f").read_text() == "2" and not second.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["modelopt"]  # no .old- copy left
