"""`quantkit run`: quantize -> validate -> publish as one pipeline with gates. Each stage runs only
if the previous one passed; the result says which gate stopped it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantkit.progress import SILENT, Reporter
from quantkit.publish import PublishResult, publish
from quantkit.checkpoint.formats import get_format
from quantkit.quantize import QuantizeOptions, VariantResult, quantize
from quantkit.recipe import Recipe
from quantkit.report import ValidationReport, write_reports
from quantkit.validate import ValidateOptions, validate

__all__ = ["PipelineResult", "run_pipeline"]


@dataclass
class PipelineResult:
    quantized: list[VariantResult]
    validation: ValidationReport | None = None
    published: list[PublishResult] = field(default_factory=list)
    stopped_at: str | None = None  # None: every gate passed

    @property
    def exit_code(self) -> int:
        return self.validation.exit_code if self.validation is not None else 0


def run_pipeline(recipe: Recipe, qopts: QuantizeOptions, vopts: ValidateOptions, to: str | None = None,
                 reporter: Reporter = SILENT) -> PipelineResult:
    reporter.stage("1/3 quantize", recipe.name)
    results = quantize(recipe, qopts, reporter)
    res = PipelineResult(results)
    first = results[0].path
    reports = (first.parent if len(results) > 1 else first.with_name(first.name + "-reports")) / "validation"
    vopts.log_dir = reports
    reporter.stage("2/3 validate", f"{len(results)} variant(s) in {vopts.engine}")
    res.validation = validate([str(r.path) for r in results], vopts, reporter)
    write_reports(res.validation, reports / "validation.json", reports / "validation.md", None)
    if res.validation.exit_code:
        res.stopped_at = "validate"
        return res
    target = to or recipe.publish.to
    if not target:
        return res
    reporter.stage("3/3 publish", target)
    for r in results:
        dest = target if len(results) == 1 else f"{target}-{get_format(r.format).dir_name}"
        res.published.append(publish(r.path, dest, private=recipe.publish.private, overwrite=qopts.overwrite))
    return res
