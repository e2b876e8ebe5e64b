"""Directories that appear whole or not at all: written into a hidden sibling
`.{name}.partial-{pid}-XXXXXXXX` and renamed into place. Used for every output quantkit writes
(quantize, publish) and for its caches (embedded models).

A run killed where no `finally` runs (SIGKILL, power loss, OOM killer) leaves its partial sibling
behind. The pid in the name says whose it is: the next run next to the same path removes the
siblings of processes that are gone, and leaves those of live processes (a concurrent run) alone."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from quantkit.errors import UsageError
from quantkit.interrupts import deferred

__all__ = ["atomic_dir", "place_dir", "remove_stale_partials", "pid_alive"]

# Partial directories this process made: a leftover carrying our own pid was made by an earlier
# process that had the same pid (containers start their processes with the same small pids).
_MINE: set[Path] = set()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists; a zombie (exited, not yet reaped) counts as gone."""
    if pid <= 0:
        return True  # not a process id: never treat it as a dead owner
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _owner(p: Path, final: Path) -> int | None:
    """The pid in `.{name}.partial-{pid}-XXXX` / `.{name}.old-{pid}`; None if the name has none."""
    for kind in ("partial", "old"):
        head = f".{final.name}.{kind}-"
        if p.name.startswith(head):
            pid = p.name[len(head):].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def remove_stale_partials(final: Path) -> list[Path]:
    """Remove the hidden siblings of `final` (partial outputs, and the `.old-` copy an overwrite
    moves aside) whose process is gone. Returns what was removed."""
    final = Path(final)
    removed = []
    for p in [*final.parent.glob(f".{final.name}.partial-*"), *final.parent.glob(f".{final.name}.old-*")]:
        pid = _owner(p, final)
        if pid is None:
            continue
        stale = p not in _MINE if pid == os.getpid() else not pid_alive(pid)
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; rename it to `final` only if the block succeeds."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise UsageError(f"output path exists: {final}", hint="choose another --out, or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    tmp: Path | None = None
    try:
        with deferred():  # a signal between mkdtemp and recording `tmp` would leave the partial behind
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
            _MINE.add(tmp)
        yield tmp
        _normalize_modes(tmp)
        _replace(tmp, final)
    finally:
        if tmp is not None:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            _MINE.discard(tmp)


def place_dir(done: Path, final: Path, overwrite: bool = False) -> None:
    """Rename the finished directory `done` (written whole elsewhere on the same filesystem, say
    by an earlier `atomic_dir`) to `final`, replacing an existing `final` only with `overwrite`."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise UsageError(f"output path exists: {final}", hint="choose another --out, or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    _replace(Path(done), final)


def _replace(tmp: Path, final: Path) -> None:
    """`tmp` renamed to `final`; an existing `final` moved aside first and removed after. Signals
    wait until both renames are done: never a moment without the old or the new output."""
    trash = final.with_name(f".{final.name}.old-{os.getpid()}")
    try:
        with deferred():
            if final.exists():
                os.replace(final, trash)
            os.replace(tmp, final)
    finally:  # also when a held-back signal is raised as the block ends
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)


def _normalize_modes(root: Path) -> None:
    """mkdtemp makes 0700 dirs and some writers 0600 files: give the result the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
