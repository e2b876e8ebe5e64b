"""`quantkit plan`: the dry run. Every layer, FP4 or kept, and the rule that decided."""

from __future__ import annotations

import json

import typer

from quantkit.cli._options import BackendOpt, ConfigOpt, ExcludeOpt, JsonOpt, RecipeArg, StrictOpt


def register(app: typer.Typer) -> None:
    @app.command("plan", short_help="Dry run: every layer FP4 or kept, and the rule that decided.")
    def plan(recipe: RecipeArg, exclude: ExcludeOpt = None, backend: BackendOpt = None,
             config: ConfigOpt = None, as_json: JsonOpt = False, strict: StrictOpt = False) -> None:
        """Dry run: show which layers go to FP4 and which stay BF16, and why. No weights are read
        (the model is built on the meta device from its config).

        Examples:

          quantkit plan smollm2-135m

          quantkit plan grm-27b --config ./GRM-2.6-Opus/config.json

          quantkit plan Qwen/Qwen3-Next-80B-A3B-Instruct --exclude '*shared_expert*' --json
        """
        from quantkit.plan import plan_recipe
        from quantkit.recipe import resolve_recipe

        r = resolve_recipe(recipe)
        p = plan_recipe(r, backend=backend, cli_patterns=exclude or [],
                        config_path=str(config) if config else None, strict=strict)
        if as_json:
            print(json.dumps(p.to_dict(), indent=2))
            return
        from quantkit.cli.render import render_plan

        render_plan(p)
