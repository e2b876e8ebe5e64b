"""`quantkit validate`: serve each artefact in a real engine and gate on real completions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("validate", context_settings={"allow_extra_args": False}, short_help="Serve artefacts in a real engine and gate on real completions.")
    def validate(
        targets: Annotated[list[str], typer.Argument(help="checkpoint directories or Hub ids", show_default=False)],
        engine: Annotated[str, typer.Option("--engine", "-e", help="engine profile: vllm-cpu, vllm, vllm-docker, "
                          "vllm-ngc, sglang, endpoint (see validate/engines.yaml)")] = "vllm-cpu",
        suite: Annotated[str, typer.Option("--suite", help="probe suite name or .yaml file")] = "smoke",
        baseline: Annotated[Optional[str], typer.Option("--baseline", help="the BF16 checkpoint to judge against "
                            "(served once by the same engine). Default: the source recorded in the artefact's "
                            "quantkit.json, when it is on this machine", show_default=False)] = None,
        no_baseline: Annotated[bool, typer.Option("--no-baseline", help="judge without a baseline: hard detectors "
                               "and absolute ceilings only (faster, weaker)")] = False,
        url: Annotated[Optional[str], typer.Option("--url", help="server URL for --engine endpoint",
                       show_default=False)] = None,
        engine_python: Annotated[Optional[str], typer.Option("--engine-python", help="Python of the engine's "
                                 "environment (default: .venv-vllm for vllm-cpu)", show_default=False)] = None,
        engine_arg: Annotated[Optional[list[str]], typer.Option("--engine-arg", help="extra argument passed "
                              "through to the engine (repeatable)", show_default=False)] = None,
        moe_marlin: Annotated[bool, typer.Option("--moe-marlin", help="use vLLM's Marlin NVFP4 MoE backend "
                              "(the working path on sm_121)")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the engine to become healthy")] = 600,
        max_model_len: Annotated[int, typer.Option("--max-model-len", help="the engine's context length, capped "
                                 "at the checkpoint's max_position_embeddings")] = 2048,
        report_dir: Annotated[Path, typer.Option("--report-dir", help="where reports and engine logs go")] = Path("reports"),
        junit: Annotated[Optional[Path], typer.Option("--junit", help="also write a JUnit XML report here",
                         show_default=False)] = None,
        skip_inspect: Annotated[bool, typer.Option("--skip-inspect", help="boot the engine even if inspect "
                                "finds errors")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the JSON report")] = False,
        config: Annotated[Optional[str], typer.Option("--config", help="serve as deployed: a named configuration of "
                          "the engine profile (vllm-cpu: eager, compiled, emulation-kernel; vllm: compiled, tp2, "
                          "marlin, flashinfer-cutlass), the baseline too; the report and the card record it",
                          show_default=False)] = None,
        matrix: Annotated[Optional[str], typer.Option("--matrix", help="comma-separated configurations to serve ONE "
                          "artefact under and compare with each other (the first is the reference): greedy answers "
                          "and reference-text log-likelihood; a wrong kernel path shows without a baseline",
                          show_default=False)] = None,
    ) -> int:
        """Serve each artefact in a real engine and judge it against its BF16 baseline served by the
        same engine: hard detectors on greedy probes and long generations (blank, '!!!!!', loops,
        replacement characters), teacher-forced knowledge items, reference perplexity, long-generation
        drift. Each check reports its value, threshold and margin (validate/smoke.yaml says why each
        threshold is where it is). Exit codes: 0 pass, 1 a failed check, 2 engine failed to start or
        died, 3 usage error, 70 internal error (a quantkit bug).

        Examples:

          quantkit validate out/smollm2/ct out/smollm2/modelopt

          quantkit validate out/a out/b --engine vllm-docker --junit report.xml

          quantkit validate some-org/Some-Model-NVFP4 --engine endpoint --url http://spark:8000

          quantkit validate out/x --suite validate/smoke.yaml --baseline out/x-bf16

          quantkit validate community/Model-NVFP4 --no-baseline

          quantkit validate out/x --config compiled

          quantkit validate out/x --matrix eager,compiled,emulation-kernel
        """
        import json

        from quantkit.cli.render import RichReporter, console, print_verdict
        from quantkit.report import write_reports
        from quantkit.validate import ValidateOptions
        from quantkit.validate import validate as run

        opts = ValidateOptions(engine=engine, suite=suite, baseline=baseline, no_baseline=no_baseline, url=url, engine_python=engine_python,
                               timeout=timeout, max_model_len=max_model_len, moe_marlin=moe_marlin,
                               extra_args=engine_arg or [], log_dir=report_dir, skip_inspect=skip_inspect, config=config)
        if matrix is not None:
            from quantkit.cli.render import print_matrix
            from quantkit.validate import validate_matrix

            if len(targets) != 1 or config is not None:
                from quantkit.errors import UsageError

                raise UsageError("--matrix serves one artefact under several configurations",
                                 hint="give one target, and no --config")
            with RichReporter() as rep:
                res = validate_matrix(targets[0], [c.strip() for c in matrix.split(",") if c.strip()], opts, rep)
            (report_dir / "matrix.json").write_text(json.dumps(res.to_dict(), indent=2))
            print(json.dumps(res.to_dict(), indent=2)) if as_json else print_matrix(res)
            return res.exit_code
        with RichReporter() as rep:
            report = run(targets, opts, rep)
        write_reports(report, report_dir / "validation.json", report_dir / "validation.md", junit)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            for v in [*report.verdicts, *report.baselines]:
                print_verdict(v)
            console.print(f"[dim]reports: {report_dir / 'validation.md'}, {report_dir / 'validation.json'}"
                          + (f", {junit}" if junit else "") + "[/]")
        return report.exit_code
