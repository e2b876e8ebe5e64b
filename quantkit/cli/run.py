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
        from pathlib import Path

        from quantkit.cli.quantize import RichReporter, _summary
        from quantkit.cli.render import console
        from quantkit.publish import publish
        from quantkit.quantize import FORMAT_DIRS, QuantizeOptions, parse_format, quantize
        from quantkit.recipe import resolve_recipe
        from quantkit.report import write_reports
        from quantkit.validate import ValidateOptions, validate

        r = resolve_recipe(recipe)
        target = to or r.publish.to
        with RichReporter() as rep:
            rep.stage("1/3 quantize", r.name)
            results = quantize(r, QuantizeOptions(formats=parse_format(fmt) if fmt else None, exclude=exclude or [],
                                                  overwrite=overwrite), rep)
        _summary(results)
        out_dir = results[0].path.parent if len(results) > 1 else results[0].path.with_name(results[0].path.name + "-reports")
        with RichReporter() as rep:
            rep.stage("2/3 validate", f"{len(results)} variant(s) in {engine or r.validate_.engine}")
            report = validate([str(x.path) for x in results],
                              ValidateOptions(engine=engine or r.validate_.engine, suite=r.validate_.suite,
                                              engine_python=engine_python, extra_args=r.validate_.engine_args,
                                              log_dir=Path(out_dir) / "validation"), rep)
        write_reports(report, Path(out_dir) / "validation" / "validation.json",
                      Path(out_dir) / "validation" / "validation.md", None)
        for v in report.verdicts:
            console.print(f"{v.verdict.upper():<12} {v.target}" + "".join(f"\n  - {x}" for x in v.reasons))
        if report.exit_code:
            console.print(f"[red]stopped at gate 2/3 (validate): exit {report.exit_code}; nothing published[/]")
            return report.exit_code
        if not target:
            console.print("[dim]3/3 publish skipped: no --to and no publish.to in the recipe[/]")
            return 0
        for res in results:
            dest = target if len(results) == 1 else f"{target}-{FORMAT_DIRS[res.format]}"
            pub = publish(res.path, dest, private=r.publish.private, overwrite=overwrite)
            console.print(f"[green]3/3 published[/] {res.path} -> {pub.url}")
        return 0
