"""`quantkit recipes`: the shipped recipes, one line each."""

from __future__ import annotations

import json

import typer

from quantkit.cli._options import JsonOpt


def register(app: typer.Typer) -> None:
    @app.command("recipes", short_help="List the shipped recipes, one line each.")
    def recipes(as_json: JsonOpt = False) -> None:
        """List the shipped recipes, one line each.

        Examples:

          quantkit recipes

          quantkit recipes --json | jq '.[].name'
        """
        from quantkit.recipe import load_recipe, shipped_recipes

        rows = []
        for name, path in shipped_recipes().items():
            r = load_recipe(path)
            rows.append({"name": name, "model": r.model.source, "family": r.family or "auto",
                         "formats": r.resolved_formats(), "description": r.description})
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        for r in rows:
            print(f"{r['name']:<18} {','.join(r['formats']):<29} {r['family']:<10} {r['description']}")
