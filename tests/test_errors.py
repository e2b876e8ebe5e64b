"""The one error boundary: torch's out-of-memory and unexpected crashes become one line with the
next step, an exception with an empty message included."""

from __future__ import annotations

import pytest
import typer

from quantkit.cli._errors import run_with_boundary
from quantkit.errors import first_line


def _app(exc: BaseException):
    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise exc

    @app.command()
    def other() -> None:  # two commands, so typer keeps the group and `boom` is a subcommand
        pass

    return typer.main.get_command(app)


def test_torch_out_of_memory_names_the_next_step(capsys):
    torch = pytest.importorskip("torch")
    code = run_with_boundary(_app(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")), ["boom"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: out of memory: CUDA out of memory") and "--mode layerwise" in err[0]


def test_unexpected_crash_with_empty_message_is_one_line(capsys):
    code = run_with_boundary(_app(RuntimeError("")), ["boom"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["error: RuntimeError:  -> run again with --debug for the traceback, and report it "
                                 "if it is a quantkit bug"]


def test_first_line():
    assert first_line(ValueError("")) == "" and first_line("a\nb") == "a" and first_line("abcdef", 3) == "abc"
