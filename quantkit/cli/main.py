"""Entry point: wires the command groups, nothing else."""

from __future__ import annotations

import sys

import typer

from quantkit import __version__
from quantkit.cli import convert as convert_cmd
from quantkit.cli import inspect as inspect_cmd
from quantkit.cli import plan as plan_cmd
from quantkit.cli import publish as publish_cmd
from quantkit.cli import quantize as quantize_cmd
from quantkit.cli import recipes as recipes_cmd
from quantkit.cli import run as run_cmd
from quantkit.cli import validate as validate_cmd
from quantkit.cli import variants as variants_cmd
from quantkit.cli._errors import run_with_boundary

app = typer.Typer(
    name="quantkit",
    help="NVFP4 quantization and model packaging for NVIDIA Blackwell (DGX Spark).\n\n"
         "Examples:\n\n"
         "  quantkit recipes\n\n"
         "  quantkit plan grm-27b --config ./GRM-2.6-Opus/config.json\n\n"
         "  quantkit quantize smollm2-135m --format both --out out/smollm2\n\n"
         "  quantkit quantize grm-27b --exclude '*linear_attn*' --format modelopt --out out/grm-27b-nvfp4\n\n"
         "  quantkit inspect out/smollm2/ct\n\n"
         "  quantkit convert out/smollm2/modelopt --to ct --out out/smollm2-ct\n\n"
         "  quantkit validate out/smollm2/modelopt out/smollm2/ct --junit report.xml\n\n"
         "  quantkit variants smollm2-135m --out out/smollm2\n\n"
         "  quantkit publish out/smollm2/ct --to dir:/srv/models/smollm2-nvfp4-ct\n\n"
         "Exit codes: 0 ok, 1 a failed check, 2 engine failure, 3 bad input, 70 internal error (a quantkit "
         "bug); interrupted: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (engines stopped, nothing written). Docs: docs/.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"quantkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
    debug: bool = typer.Option(False, "--debug", help="show full tracebacks on errors"),
) -> None:
    """NVFP4 quantization and model packaging for NVIDIA Blackwell."""


recipes_cmd.register(app)
plan_cmd.register(app)
quantize_cmd.register(app)
inspect_cmd.register(app)
validate_cmd.register(app)
publish_cmd.register(app)
variants_cmd.register(app)
convert_cmd.register(app)
run_cmd.register(app)


def main(argv: list[str] | None = None) -> int:
    code = run_with_boundary(typer.main.get_command(app), list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        _exit(code)
    return code


def _exit(code: int) -> None:
    """End the process: exit handlers run (engines stopped, coverage saved) and the streams are
    flushed, but the interpreter's teardown is skipped: freeing a quantized 7B model, CUDA's context
    and thousands of modules one by one took seconds after the work was done (bench/formats.md)."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
