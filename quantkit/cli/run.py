"""`quantkit run`: quantize -> validate -> publish, one command, stopping at the first failed gate."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.cli._options import ExcludeOpt, FormatOpt, RecipeArg


def register(app: typer.Typer) -> None:
    @app.command("run", short_help="quantize -> validate -> publish, stopping at the first failed gate.")
    def run(
        recipe: RecipeArg,
        fmt: FormatOpt = None,
        exclude: ExcludeOpt = None,
        to: Annotated[Optional[str], typer.Option("--to", help="publish target (hf:ORG/NAME or dir:PATH); default: "
                      "the recipe's publish.to; with several formats, -modelopt/-ct is appended", show_default=False)] = None,
        engine: Annotated[Optional[str], typer.Option("--engine", "-e", help="engine profile (default: the "
                          "recipe's validate.engine)", show_default=False)] = None,
        engine_python: Annotated[Optional[str], typer.Option("--engine-python", show_default=False)] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    ) -> int:
        """The whole pipeline from a recipe: quantize, validate every variant in a real engine, and
        publish the ones that passed. Stops at the first failed gate and says which.

        Examples:

          quantkit run smollm2-135m --engine vllm-cpu --to dir:out/published

          quantkit run grm-27b --to hf:me/GRM-2.6-Opus-NVFP4
        """
        from quantkit.cli.render import RichReporter, console, quantize_summary
        from quantkit.pipeline import run_pipeline
        from quantkit.quantize import QuantizeOptions, parse_format
        from quantkit.recipe import resolve_recipe
        from quantkit.validate import ValidateOptions

        r = resolve_recipe(recipe)
        qopts = QuantizeOptions(formats=parse_format(fmt) if fmt else None, exclude=exclude or [], overwrite=overwrite)
        vopts = ValidateOptions(engine=engine or r.validate_.engine, suite=r.validate_.suite,
                                engine_python=engine_python, extra_args=r.validate_.engine_args,
                                max_ppl_ratio=r.validate_.max_ppl_ratio)
        with RichReporter() as rep:
            res = run_pipeline(r, qopts, vopts, to, rep)
        quantize_summary(res.quantized)
        for v in res.validation.verdicts:
            console.print(f"{v.verdict.upper():<12} {v.target}" + "".join(f"\n  - {x}" for x in v.reasons))
        if res.stopped_at:
            console.print(f"[red]stopped at gate 2/3 ({res.stopped_at}): exit {res.exit_code}; nothing published[/]")
        elif not res.published:
            console.print("[dim]3/3 publish skipped: no --to and no publish.to in the recipe[/]")
        for p in res.published:
            console.print(f"[green]3/3 published[/] -> {p.url}")
        return res.exit_code
