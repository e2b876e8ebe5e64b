"""The one error boundary: torch's out-of-memory, Hub errors and unexpected crashes become one line
with the next step, an exception with an empty message included; an internal crash exits 70."""

from __future__ import annotations

import pytest
import typer

from quantkit.cli._errors import run_with_boundary
from quantkit.errors import (EXIT_INTERNAL, HUB_ERRORS, EngineError, UsageError, VerificationError, first_line,
                             hub_problem)


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
    assert code == EXIT_INTERNAL and err == ["error: RuntimeError:  -> run again with --debug for the traceback, and "
                                             "report it if it is a quantkit bug"]


def test_internal_crash_has_its_own_exit_code_distinct_from_failed_check_engine_and_usage():
    assert EXIT_INTERNAL == 70 and EXIT_INTERNAL not in (0, 1, 2, 3, 129, 130, 143)
    assert run_with_boundary(_app(KeyError("x")), ["boom"]) == EXIT_INTERNAL
    assert run_with_boundary(_app(VerificationError("bad")), ["boom"]) == 1
    assert run_with_boundary(_app(EngineError("died")), ["boom"]) == 2
    assert run_with_boundary(_app(UsageError("bad value")), ["boom"]) == 3


def test_internal_crash_exit_code_through_the_real_cli(monkeypatch, capsys):
    from quantkit.cli import main as cli_main

    def crash(*_a, **_k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("quantkit.recipe.resolve_recipe", crash)
    assert cli_main.main(["plan", "smollm2-135m"]) == EXIT_INTERNAL
    assert capsys.readouterr().err.startswith("error: ZeroDivisionError: division by zero -> run again with --debug")


def _hub_error(cls_name: str, status: int, repo_id: str | None = "org/model"):
    httpx = pytest.importorskip("httpx")
    errors = pytest.importorskip("huggingface_hub.errors")
    request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
    exc = getattr(errors, cls_name)(f"{status} Client Error.\n\nsomething long", response=httpx.Response(status, request=request))
    exc.repo_id = repo_id
    return exc


@pytest.mark.parametrize("cls_name,status,code,line,hint", [
    ("RepositoryNotFoundError", 404, 3, "Hub repository not found (or private): org/model (HTTP 404)", "check the id"),
    ("GatedRepoError", 403, 3, "the Hub repository is gated: org/model (HTTP 403)", "accept its terms"),
    ("RevisionNotFoundError", 404, 3, "revision not found on the Hub: org/model (HTTP 404)", "--revision"),
    ("RemoteEntryNotFoundError", 404, 3, "file not found in the Hub repository: org/model (HTTP 404)", "config.json"),
    ("HfHubHTTPError", 503, 1, "a Hub request failed: org/model (HTTP 503)", "try again later"),
])
def test_hub_errors_are_one_line_with_the_next_step(capsys, cls_name, status, code, line, hint):
    assert run_with_boundary(_app(_hub_error(cls_name, status)), ["boom"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {line} -> ") and hint in err[0]


def test_offline_hub_error_wrapped_by_another_library_is_found(capsys):
    """transformers raises OSError from the Hub's error: the boundary looks through the chain."""
    errors = pytest.importorskip("huggingface_hub.errors")
    try:
        try:
            raise errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
        except Exception as inner:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from inner
    except OSError as exc:
        wrapped = exc
    assert run_with_boundary(_app(wrapped), ["boom"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {HUB_ERRORS[4][2]} -> {HUB_ERRORS[4][3]}"] and "HF_HUB_OFFLINE" in err[0]


def test_hub_table_is_most_specific_first():
    """A class must come before every class it derives from, or the base row would shadow it."""
    errors = pytest.importorskip("huggingface_hub.errors")
    classes = [getattr(errors, name, None) for name, *_ in HUB_ERRORS]
    for i, cls in enumerate(classes):
        for later in classes[i + 1:]:
            assert cls is None or later is None or not issubclass(later, cls), (later, cls)
    assert hub_problem(ValueError("not a Hub error")) is None


def test_first_line():
    assert first_line(ValueError("")) == "" and first_line("a\nb") == "a" and first_line("abcdef", 3) == "abc"
