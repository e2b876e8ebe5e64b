"""`quantkit quantize`: recipe -> NVFP4 checkpoint(s), ModelOpt and/or compressed-tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.cli._options import BackendOpt, ExcludeOpt, FormatOpt, RecipeArg, StrictOpt


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
        max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="largest safetensors shard to write "
                                  "(e.g. 5GiB; --mode layerwise writes one per layer); smaller shards hash, convert and "
                                  "download in parallel")] = "2GiB",
        resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted layerwise run from its last "
                          "finished layer (same command, same --out)")] = False,
        nproc: Annotated[int, typer.Option("--nproc", min=1, help="GPUs to place the model across (accelerate "
                         "device_map; ModelOpt backend) when it fits none of them alone")] = 1,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output directory (and "
                             "discard an interrupted run's state)")] = False,
        strict: StrictOpt = False,
        calibrate_each: Annotated[bool, typer.Option("--calibrate-each", help="with several formats, every "
                                  "library calibrates its own (to compare the libraries); default: one calibrates "
                                  "and the other formats are written from the same FP4 codes and scales")] = False,
    ) -> None:
        """Quantize a model to NVFP4 from a recipe.

        The output directory appears only when the checkpoint is complete and verified
        (weights, config with quantization_config, hf_quant_config.json for ModelOpt, tokenizer,
        quantkit.json manifest); an interrupted run leaves nothing there. With --format both one
        library calibrates (ModelOpt, unless the recipe's algorithm is llm-compressor's) and the
        other format is converted from its output: two layouts of the same numbers.

        Examples:

          quantkit quantize smollm2-135m --format both --out out/smollm2

          quantkit quantize grm-27b --exclude '*linear_attn*' --format modelopt --out out/grm-27b-nvfp4

          quantkit quantize ./my.yaml --format both

          quantkit quantize Qwen/Qwen3.6-27B --backend llmcompressor

          quantkit quantize qwen3.5-122b-a10b --max-memory 100GiB --out out/q122b   (then --resume if killed)
        """
        from quantkit.cli.render import RichReporter, quantize_summary
        from quantkit.quantize import QuantizeOptions, parse_format
        from quantkit.quantize import quantize as run
        from quantkit.recipe import resolve_recipe
        from quantkit.stream.preflight import parse_size

        r = resolve_recipe(recipe)
        opts = QuantizeOptions(formats=parse_format(fmt) if fmt else None, backend=backend, exclude=exclude or [],
                               out=out, overwrite=overwrite, strict=strict, samples=samples, seq_len=seq_len,
                               model=model, algorithm=algorithm, mode=mode, resume=resume, nproc=nproc,
                               calibrate_each=calibrate_each,
                               max_memory=parse_size(max_memory) if max_memory else None,
                               max_shard_size=parse_size(max_shard_size, "--max-shard-size"))
        with RichReporter() as rep:
            results = run(r, opts, rep)
        quantize_summary(results)

