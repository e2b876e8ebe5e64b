"""Option aliases shared by several commands (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["RecipeArg", "ExcludeOpt", "BackendOpt", "FormatOpt", "JsonOpt", "StrictOpt", "ConfigOpt"]

RecipeArg = Annotated[str, typer.Argument(
    help="a shipped recipe name (see `quantkit recipes`), a recipe .yaml file, a local checkpoint "
         "directory, or a Hub model id org/name", show_default=False)]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--exclude", "-x", help="keep modules matching this pattern out of FP4 (repeatable); glob such as "
    "'*linear_attn*' or regex 're:.*mlp\\.gate$'", show_default=False)]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", help="modelopt or llmcompressor (default: the recipe's, else modelopt)", show_default=False)]
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", "-f", help="modelopt, compressed-tensors (alias ct), or both", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for machines instead of tables")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="an exclusion pattern that matches nothing is an error")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="plan with this config.json instead of fetching the model's", show_default=False)]
