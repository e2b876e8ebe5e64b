"""`quantkit variants`: both NVFP4 formats of one recipe, validated and compared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.cli._options import ExcludeOpt, RecipeArg


def register(app: typer.Typer) -> None:
    @app.command("variants", short_help="Both NVFP4 formats of one recipe, validated and compared.")
    def variants(
        recipe: RecipeArg,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory (modelopt/, ct/, "
                       "validation/, comparison.{md,html,json})", show_default=False)] = None,
        exclude: ExcludeOpt = None,
        engine: Annotated[str, typer.Option("--engine", "-e", help="engine profile for validation")] = "vllm-cpu",
        engine_python: Annotated[Optional[str], typer.Option("--engine-python", show_default=False)] = None,
        samples: Annotated[Optional[int], typer.Option("--samples", min=1, show_default=False)] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    ) -> int:
        """Produce the ModelOpt and the compressed-tensors NVFP4 checkpoints of one recipe (one load,
        one calibration, one plan: the second format is converted from the first, same numbers), validate each against the BF16 source (served once, by the same
        engine), and write a comparison: size and bits/param, kept layers, verdicts, every check's value
        and margin (perplexity ratio, knowledge retained, long-generation drift), probe outputs side by
        side, time and peak memory of each step, with bar charts (comparison.html).

        Examples:

          quantkit variants smollm2-135m --out out/smollm2

          quantkit variants grm-27b --out out/grm-27b --engine vllm-docker
        """
        from quantkit.cli.render import RichReporter, console
        from quantkit.quantize import QuantizeOptions
        from quantkit.recipe import resolve_recipe
        from quantkit.validate import ValidateOptions
        from quantkit.variants import comparison_rows
        from quantkit.variants import variants as run

        r = resolve_recipe(recipe)
        with RichReporter() as rep:
            cmp = run(r, QuantizeOptions(out=out, exclude=exclude or [], samples=samples, overwrite=overwrite),
                      ValidateOptions(engine=engine, engine_python=engine_python, suite=r.validate_.suite,
                                      max_ppl_ratio=r.validate_.max_ppl_ratio), rep)
        for row in comparison_rows(cmp):
            ratio = f" (x{row['ppl_ratio']})" if row["ppl_ratio"] and row["variant"] != "bf16" else ""
            console.print(f"{row['variant']:<10} {row['verdict']:<12} ppl {row['perplexity']}{ratio}  "
                          f"knowledge {row['knowledge_accuracy']}  "
                          f"{row['size_bytes'] / 1e6:.1f} MB  {row['bits_per_param']} bits/param")
            for r in row.get("reasons") or []:
                console.print(f"  [red]-[/] {r}")
        console.print(f"[dim]comparison: {cmp.out / 'comparison.md'}, {cmp.out / 'comparison.html'}[/]")
        return cmp.exit_code
