"""The recipe: a YAML file that says what to quantize, how, and what to keep out of FP4.

Loaded into strict pydantic models (unknown keys are errors, with the file and line). A recipe
argument is resolved without guessing: a shipped recipe name, a path ending in .yaml/.yml,
a local checkpoint directory, or a Hub model id (`org/name`), in that order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quantkit.backends import BACKENDS, DEFAULT_BACKEND, backend_for_format, formats_of_backend
from quantkit.checkpoint.formats import FORMATS as _FORMATS
from quantkit.datafile import load_yaml_model
from quantkit.errors import PatternError, RecipeError
from quantkit.patterns import Pattern
from quantkit.resources import data_dir

__all__ = [
    "Recipe",
    "ModelSource",
    "ExcludeRule",
    "Calibration",
    "MixedPrecision",
    "FORMATS",
    "load_recipe",
    "resolve_recipe",
    "shipped_recipes",
]

# The registries' names (quantkit.checkpoint.formats, quantkit.backends); each format has exactly
# one producing backend (its module says which).
FORMATS: tuple[str, ...] = tuple(_FORMATS)
Format = Literal[FORMATS]  # type: ignore[valid-type]
Backend = Literal[tuple(BACKENDS)]  # type: ignore[valid-type]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ModelSource(_Strict):
    source: str = Field(description="Hub id (org/name), local checkpoint dir, or embedded:<name>")
    revision: str | None = None
    trust_remote_code: bool = False
    config: str | None = Field(None, description="a config.json to plan with, instead of the source's")


class ExcludeRule(_Strict):
    pattern: str
    reason: str = Field(min_length=3)

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, v: str) -> str:
        try:
            Pattern(v)
        except PatternError as exc:  # re-raised as ValueError so pydantic reports the location
            raise ValueError(exc.message) from None
        return v


Algorithm = Literal["minmax", "mse", "gptq", "awq", "awq_lite"]


class Calibration(_Strict):
    # minmax: plain NVFP4 scales (both backends); mse: MSE scale search for weights;
    # gptq / awq: llm-compressor's GPTQ / AWQ with the NVFP4 scheme; awq_lite: ModelOpt's AWQ
    # (ModelOpt's mse/awq_lite fake-quantize during calibration, which needs CUDA).
    # One name for every backend, or one per backend ({modelopt: awq_lite, llmcompressor: gptq}):
    # each library's best option differs. With one algorithm that one library runs here,
    # `--format both` calibrates once and writes the other format by conversion (same FP4 codes and
    # scales, quantkit.convert); with different algorithms per backend, or `each: true`, every
    # library calibrates its own format (to compare the libraries).
    algorithm: Algorithm | dict[Backend, Algorithm] = "minmax"
    each: bool = False
    dataset: str = "bundled-en"
    samples: int = Field(64, ge=1, le=100_000)
    seq_len: int = Field(512, ge=16, le=131_072)
    seed: int = 0
    # samples per calibration forward (ModelOpt; equal-length samples are batched, never padded).
    # auto: 1 on CPU; on a GPU up to 64k tokens (64 samples) per forward, halved on out-of-memory
    # (measured on an H200, 7.2B Llama, 256 x 1024: batch 8 -> 11.8 s, 32 -> 9.7 s, 64 -> 9.2 s).
    batch_size: int | Literal["auto"] = "auto"
    # MoE: which experts each calibration token reaches (quantkit.calib_health.MOE_MODES). routed:
    # the router's top-k only, as served; all-experts: every expert sees every token (the routed output
    # is unchanged); auto: the library's own default (llm-compressor 0.14: all-experts, ModelOpt 0.47: routed).
    moe: Literal["auto", "routed", "all-experts"] = "auto"
    # experts routed fewer calibration tokens than this are flagged in the manifest's calibration_health
    # (default 16, one NVFP4 block: the reason is quantkit.calib_health.THRESHOLD_REASON); 0 turns it off
    min_expert_tokens: int = Field(16, ge=0)

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("batch_size must be >= 1 or auto")
        return v

    def algorithm_for(self, backend: str) -> str:
        if isinstance(self.algorithm, dict):
            return self.algorithm.get(backend, "minmax")
        return self.algorithm

    def resolved_batch_size(self, cuda: bool) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        return max(1, min(64, 65536 // self.seq_len)) if cuda else 1


class MixedPrecision(_Strict):
    """Sensitivity-guided mixed precision (quantkit.sensitivity): measure how much each FP4 linear
    hurts the model on a few calibration samples, then keep the most sensitive ones in `keep_as`
    while the whole model stays within `budget_bits` per parameter."""

    budget_bits: float = Field(gt=0, le=16, description="bits per parameter of the whole model (FP4 = 4.5, BF16 = 16)")
    keep_as: Literal["bf16", "fp8"] = "bf16"
    samples: int = Field(4, ge=1, le=1024)
    seq_len: int = Field(128, ge=16, le=8192)
    dataset: str | None = Field(None, description="calibration spec for the measurement; default: calibration.dataset")


class ValidateSection(_Strict):
    engine: str = "vllm"
    suite: str = "smoke"
    max_ppl_ratio: float | None = Field(None, gt=1.0)
    engine_args: list[str] = []


class PublishSection(_Strict):
    to: str | None = None
    private: bool = True
    license: str | None = None


class Recipe(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    model: ModelSource
    family: str | None = Field(None, description="architecture family; auto-detected from config.json")
    backend: Backend | None = None
    formats: list[Format] | None = None
    scheme: Literal["nvfp4", "nvfp4-weight-only"] = "nvfp4"
    kv_cache: Literal["none", "fp8"] = "none"
    exclude: list[ExcludeRule] = []
    calibration: Calibration = Calibration()
    mixed_precision: MixedPrecision | None = None
    validate_: ValidateSection = Field(ValidateSection(), alias="validate")
    publish: PublishSection = PublishSection()
    notes: str = ""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _formats_and_backend(self) -> "Recipe":
        if self.formats is not None:
            if not self.formats:
                raise ValueError("formats must not be empty")
            if len(set(self.formats)) != len(self.formats):
                raise ValueError("formats lists a format twice")
            writer = backend_for_format(self.formats[0])
            if self.backend is not None and len(self.formats) == 1 and writer != self.backend:
                raise ValueError(f"backend {self.backend!r} cannot write format {self.formats[0]!r} "
                                 f"(it is written by {writer!r})")
        if self.mixed_precision and self.mixed_precision.keep_as == "fp8" and self.scheme != "nvfp4":
            raise ValueError("mixed_precision.keep_as: fp8 needs scheme nvfp4 (FP8 layers quantize their inputs too)")
        return self

    def resolved_formats(self) -> list[str]:
        if self.formats:
            return list(self.formats)
        return formats_of_backend(self.backend or DEFAULT_BACKEND)

    def patterns(self) -> list[tuple[Pattern, str]]:
        return [(Pattern(r.pattern), r.reason) for r in self.exclude]


# ---------------------------------------------------------------------------- loading
def shipped_recipes() -> dict[str, Path]:
    """Shipped recipe names -> files."""
    root = data_dir("recipes")
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate one recipe file. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}", hint="check the path, or run `quantkit recipes`")
    return load_yaml_model(path, Recipe, "recipe", error=RecipeError, hint="see docs/recipes.md for the schema")


def _adhoc(source: str) -> Recipe:
    slug = re.sub(r"[^a-z0-9._-]+", "-", source.lower().rstrip("/").split("/")[-1]) or "model"
    return Recipe(name=slug.strip("-.") or "model", description=f"ad-hoc recipe for {source}",
                  model=ModelSource(source=source))


def resolve_recipe(arg: str) -> Recipe:
    """A recipe argument -> Recipe. Never guesses between a path and YAML text."""
    shipped = shipped_recipes()
    if arg in shipped:
        return load_recipe(shipped[arg])
    if arg.endswith((".yaml", ".yml")):
        return load_recipe(arg)
    p = Path(arg)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise RecipeError(f"{arg} is a directory without config.json",
                              hint="point at a Hugging Face checkpoint directory")
        return _adhoc(str(p))
    if _HUB_ID.match(arg) and not p.exists():
        return _adhoc(arg)
    known = ", ".join(shipped) or "(none)"
    raise RecipeError(f"unknown recipe {arg!r}; shipped recipes: {known}",
                      hint="run `quantkit recipes`, or pass a .yaml file, a checkpoint dir, or a Hub id org/name")
