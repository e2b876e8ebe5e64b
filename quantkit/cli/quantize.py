"""`quantkit quantize`: recipe -> NVFP4 checkpoint(s), ModelOpt and/or compressed-tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.cli._options import BackendOpt, ExcludeOpt, FormatOpt, RecipeArg, StrictOpt


class RichReporter:
    """Progress bars and stage lines on the terminal (rich)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from quantkit.cli.render import console

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def stage(self, name: str, detail: str = "") -> None:
        from rich.markup import escape

        self.console.print(f"[bold cyan]>[/] {escape(name)}" + (f"  [dim]{escape(detail)}[/]" if detail else ""))

    def advance(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)
        if done >= total:
            self.progress.remove_task(self.tasks.pop(name))

    def info(self, message: str) -> None:
        from rich.markup import escape

        style = "yellow" if message.startswith("warning") else "dim"
        self.console.print(f"  [{style}]{escape(message)}[/]")


def _summary(results) -> None:
    from rich.table import Table

    from quantkit.cli.render import console, human_bytes

    t = Table(title="quantkit quantize", box=None, pad_edge=False)
    for col in ("format", "FP4/kept", "size", "calib", "export", "total", "peak RSS"):
        t.add_column(col)
    for r in results:
        tm = r.timings
        t.add_row(r.format, f"{r.fp4_modules}/{r.kept_modules}",
                  f"{human_bytes(r.source_bytes)} -> {human_bytes(r.size_bytes)}",
                  f"{tm.get('calibrate', 0):.1f}s", f"{tm.get('export', 0):.1f}s",
                  f"{sum(tm.values()):.1f}s", human_bytes(r.peak_rss_bytes))
    console.print(t)
    for r in results:
        console.print(f"[green]wrote[/] {r.path}  [dim]({r.manifest['content_hash'][:19]}...)[/]")


def register(app: typer.Typer) -> None:
    @app.command("quantize", short_help="Quantize to NVFP4 (ModelOpt and/or compressed-tensors) from a recipe.")
    def quantize(
        recipe: RecipeArg,
        exclude: ExcludeOpt = None,
        fmt: FormatOpt = None,
        backend: BackendOpt = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory (with --format both: "
                       "one subdirectory per format, modelopt/ and ct/)", show_default=False)] = None,
        model: Annotated[Optional[str], typer.Option("--model", help="override the recipe's model source "
                         "(Hub id or local directory)", show_default=False)] = None,
        samples: Annotated[Optional[int], typer.Option("--samples", min=1, help="calibration samples",
                           show_default=False)] = None,
        seq_len: Annotated[Optional[int], typer.Option("--seq-len", min=16, help="calibration sequence length",
                           show_default=False)] = None,
        algorithm: Annotated[Optional[str], typer.Option("--algorithm", help="calibration algorithm: minmax, mse, "
                             "gptq, awq (llmcompressor), awq_lite (modelopt, GPU)", show_default=False)] = None,
        mode: Annotated[str, typer.Option("--mode", help="auto: full if the model fits in memory, else layerwise; "
                        "full: load the whole model; layerwise: one decoder layer in memory at a time "
                        "(resumable)")] = "auto",
        max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="memory quantkit may use, e.g. "
                              "20GiB (default: what is available now); the pre-flight picks or refuses a mode "
                              "by it", show_default=False)] = None,
        resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted layerwise run from its last "
                          "finished layer (same command, same --out)")] = False,
        nproc: Annotated[int, typer.Option("--nproc", min=1, help="GPUs to place the model across (accelerate "
                         "device_map; ModelOpt backend) when it fits none of them alone")] = 1,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output directory (and "
                             "discard an interrupted run's state)")] = False,
        strict: StrictOpt = False,
    ) -> None:
        """Quantize a model to NVFP4 from a recipe.

        The output directory appears only when the checkpoint is complete and verified
        (weights, config with quantization_config, hf_quant_config.json for ModelOpt, tokenizer,
        quantkit.json manifest); an interrupted run leaves nothing there.

        Examples:

          quantkit quantize smollm2-135m --format both --out out/smollm2

          quantkit quantize grm-27b --exclude '*linear_attn*' --format modelopt --out out/grm-27b-nvfp4

          quantkit quantize ./my.yaml --format both

          quantkit quantize Qwen/Qwen3.6-27B --backend llmcompressor

          quantkit quantize qwen3.5-122b-a10b --max-memory 100GiB --out out/q122b   (then --resume if killed)
        """
        from quantkit.quantize import QuantizeOptions, parse_format
        from quantkit.quantize import quantize as run
        from quantkit.recipe import resolve_recipe
        from quantkit.stream.preflight import parse_size

        r = resolve_recipe(recipe)
        opts = QuantizeOptions(formats=parse_format(fmt) if fmt else None, backend=backend, exclude=exclude or [],
                               out=out, overwrite=overwrite, strict=strict, samples=samples, seq_len=seq_len,
                               model=model, algorithm=algorithm, mode=mode, resume=resume, nproc=nproc,
                               max_memory=parse_size(max_memory) if max_memory else None)
        with RichReporter() as rep:
            results = run(r, opts, rep)
        _summary(results)
