"""`quantkit convert`: an NVFP4 checkpoint into the other format, without recalibrating."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert", short_help="Convert an NVFP4 checkpoint between ModelOpt and compressed-tensors.")
    def convert(
        source: Annotated[str, typer.Argument(help="checkpoint directory or Hub id", show_default=False)],
        to: Annotated[str, typer.Option("--to", help="target format: modelopt or compressed-tensors (ct)",
                                        show_default=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="output directory (appears only when complete "
                                          "and inspected)", show_default=False)],
        overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output directory")] = False,
    ) -> None:
        """Convert an NVFP4 checkpoint to another format: FP4 codes and FP8 block scales copied byte
        for byte, per-tensor scales mapped to the target's convention, the unquantized-module
        lists rewritten in the target's syntax; streamed one shard at a time, then inspected.

        Refused, with the reason: FP8 / mixed-precision modules, AWQ pre-quant scales,
        weight-only NVFP4, quantized KV-cache scales (none has a lossless counterpart here).

        Examples:

          quantkit convert out/smollm2/modelopt --to ct --out out/smollm2-ct

          quantkit convert some-org/Model-NVFP4 --to modelopt --out out/model-modelopt
        """
        from quantkit.checkpoint.formats import get_format
        from quantkit.cli.render import RichReporter, console
        from quantkit.convert import convert as run

        with RichReporter() as rep:
            res = run(source, get_format(to).name, out, overwrite=overwrite, reporter=rep)
        exact = "all exact" if not res.inexact_scales else (
            f"{res.inexact_scales} per-tensor scales moved by 1 ulp (float32 reciprocal)")
        console.print(f"[bold]{res.path}[/]: {res.source_format} -> {res.format}, {res.modules} NVFP4 linears "
                      f"({exact}), inspected, {res.seconds:.1f} s")
