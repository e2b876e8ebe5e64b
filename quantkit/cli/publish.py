"""`quantkit publish`: ship a validated checkpoint with an honest model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("publish", short_help="Publish a validated checkpoint with an honest model card.")
    def publish(
        checkpoint: Annotated[Path, typer.Argument(help="a checkpoint made by quantkit quantize", show_default=False)],
        to: Annotated[str, typer.Option("--to", help="hf:ORG/NAME (private by default) or dir:PATH", show_default=False)],
        force: Annotated[bool, typer.Option("--force", help="publish without a passing validation report "
                         "(loud, and written into the model card)")] = False,
        report: Annotated[Optional[Path], typer.Option("--report", help="a validation.json to use instead of the "
                          "registry", show_default=False)] = None,
        public: Annotated[bool, typer.Option("--public", help="create the Hub repo public")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing dir: target")] = False,
    ) -> None:
        """Publish a checkpoint that passed `quantkit validate` at its current content hash, with its
        metadata re-checked and a model card (base model, license, tags, serving commands, kept
        layers with reasons, validation results). The recipe and quantkit.json travel with it.

        Examples:

          quantkit publish out/grm-27b/modelopt --to hf:me/GRM-2.6-Opus-NVFP4

          quantkit publish out/grm-27b/ct --to dir:/srv/models/grm-27b-nvfp4-ct
        """
        from quantkit.cli.render import console
        from quantkit.publish import publish as run

        if force:
            console.print("[bold red]--force: publishing WITHOUT a passing validation for this exact checkpoint; "
                          "the model card will say so[/]")
        res = run(checkpoint, to, force=force, report=report, private=not public, overwrite=overwrite)
        console.print(f"[green]published[/] {checkpoint} -> {res.url}  [dim]({res.format}, {len(res.files)} files, "
                      f"{res.content_hash[:23]}...)[/]")
