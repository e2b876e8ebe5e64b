"""Recipe + model config + families -> Plan: every linear-like module, FP4 or kept, and the
rule that decided. No weights are read: the model is built on the meta device.

Rule order (first match wins, so the reason shown is the most specific one):
  1. `--exclude` patterns from the command line,
  2. the recipe's `exclude` list,
  3. the architecture family's preset, then the always-on families,
  4. structural limits: input width not divisible by 16 (NVFP4 groups are 16 wide),
  5. what the backend can quantize at all (e.g. fused 3-D experts, non-Linear modules).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from quantkit.errors import PatternError, PlanError
from quantkit.families import Rule, families_for
from quantkit.modules import ModuleInfo, index_modules, meta_model, param_stats
from quantkit.patterns import Pattern

__all__ = ["Decision", "Plan", "build_plan", "GROUP_SIZE"]

GROUP_SIZE = 16
_FP4_BITS = 4 + 8 / GROUP_SIZE  # E2M1 values + one FP8 E4M3 scale per 16 elements
_FP8_BITS = 8  # E4M3 values; per-tensor weight and input scales are counted per module


@dataclass(frozen=True)
class Decision:
    module: ModuleInfo
    precision: str  # fp4 | fp8 | bf16 (fp8 only from sensitivity-guided mixed precision)
    reason: str
    source: str  # cli | recipe | family:<name> | structural | backend | sensitivity
    rule: str | None = None  # the pattern that matched, if any

    def to_dict(self) -> dict:
        return {**self.module.to_dict(), "precision": self.precision, "reason": self.reason,
                "source": self.source, "rule": self.rule}


@dataclass
class Plan:
    model_source: str
    model_type: str
    architecture: str
    families: list[str]
    backend: str
    scheme: str
    decisions: list[Decision]
    total_params: int
    source_bytes: int
    rules: list[Rule]
    unmatched: list[Rule] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mixed_precision: dict | None = None  # sensitivity-guided mixed precision summary (quantkit.sensitivity)
    moe_calibration: dict | None = None  # MoE models: calibration.moe resolved, the expert threshold and its reason

    # ----------------------------------------------------------------- views
    @property
    def fp4(self) -> list[Decision]:
        return [d for d in self.decisions if d.precision == "fp4"]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.precision != "fp4"]

    @property
    def fp8(self) -> list[Decision]:
        return [d for d in self.decisions if d.precision == "fp8"]

    def kept_names(self) -> list[str]:
        """Modules left unquantized (BF16): FP8 ones are kept out of FP4 but still quantized."""
        return [d.module.name for d in self.kept if d.precision != "fp8" and d.module.kind in ("linear", "experts")]

    def fp8_names(self) -> list[str]:
        return [d.module.name for d in self.fp8]

    def fp4_names(self) -> list[str]:
        return [d.module.name for d in self.fp4]

    def estimated_bytes(self) -> int:
        fp4_params = sum(d.module.params for d in self.fp4)
        fp8_params = sum(d.module.params for d in self.fp8)
        per_tensor = 3 * 4 * len(self.fp4) + 2 * 4 * len(self.fp8)  # global / per-tensor scales (fp32)
        other = self.total_params - fp4_params - fp8_params
        return int(fp4_params * _FP4_BITS / 8 + fp8_params * _FP8_BITS / 8 + other * 2 + per_tensor)

    def bits_per_param(self) -> float:
        return 8 * self.estimated_bytes() / max(self.total_params, 1)

    def groups(self) -> list[dict]:
        """Decisions grouped by name with layer indices folded (`layers.*.`), in model order."""
        groups: "OrderedDict[tuple, dict]" = OrderedDict()
        for d in self.decisions:
            key_name = re.sub(r"\.(\d+)\.", ".*.", d.module.name)
            key = (key_name, d.precision, d.reason)
            g = groups.setdefault(key, {"name": key_name, "precision": d.precision, "reason": d.reason,
                                        "source": d.source, "kind": d.module.kind, "count": 0, "params": 0})
            g["count"] += 1
            g["params"] += d.module.params
        return list(groups.values())

    def to_dict(self) -> dict:
        return {
            "model_source": self.model_source, "model_type": self.model_type,
            "architecture": self.architecture, "families": self.families, "backend": self.backend,
            "scheme": self.scheme,
            "summary": {"modules": len(self.decisions), "fp4": len(self.fp4), "kept": len(self.kept),
                        **({"fp8": len(self.fp8)} if self.fp8 else {}),
                        "total_params": self.total_params, "fp4_params": sum(d.module.params for d in self.fp4),
                        "source_bytes": self.source_bytes, "estimated_bytes": self.estimated_bytes(),
                        "bits_per_param": round(self.bits_per_param(), 3)},
            "rules": [r.to_dict() for r in self.rules],
            "unmatched_rules": [r.to_dict() for r in self.unmatched],
            "warnings": self.warnings,
            **({"mixed_precision": self.mixed_precision} if self.mixed_precision else {}),
            **({"moe_calibration": self.moe_calibration} if self.moe_calibration else {}),
            "groups": self.groups(),
            "modules": [d.to_dict() for d in self.decisions],
        }


def _decide(m: ModuleInfo, rules: list[Rule], backend: str, caps: dict[str, bool]) -> Decision:
    """The first rule that covers `m`, else structure, else what the backend quantizes (`caps`)."""
    for r in rules:
        if r.pattern.covers(m.name):
            return Decision(m, r.precision, r.reason, r.source, r.pattern.raw)
    if m.kind == "conv":
        return Decision(m, "bf16", "convolution: NVFP4 covers matmuls only", "structural")
    if m.kind == "custom2d":
        return Decision(m, "bf16", f"{m.cls} is not an nn.Linear: {backend} does not quantize it", "backend")
    if m.kind == "linear" and m.in_features is not None and m.in_features % GROUP_SIZE:
        return Decision(m, "bf16", f"input width {m.in_features} is not divisible by {GROUP_SIZE} (NVFP4 group size)",
                        "structural")
    if not caps.get(m.kind, False):
        return Decision(m, "bf16", f"{backend} does not quantize {m.kind} modules ({m.cls})", "backend")
    return Decision(m, "fp4", "NVFP4", "default")


def build_plan(config: Any, *, model_source: str, backend: str, scheme: str = "nvfp4",
               recipe_rules: list[tuple[Pattern, str]] = (), cli_patterns: list[str] = (),
               family: str | None = None, strict: bool = False, model: Any = None) -> Plan:
    """Plan the quantization of `config` (a transformers config). `model` may be passed to plan
    an already-loaded model instead of a meta-device one (same names)."""
    from quantkit.backends import BACKENDS, backend_class

    if backend not in BACKENDS:
        raise PlanError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}",
                        hint=f"use --backend {' or '.join(BACKENDS)}")
    fams = families_for(config, family)
    user_rules = [Rule(Pattern(p), "excluded on the command line (--exclude)", "cli") for p in cli_patterns]
    user_rules += [Rule(p, reason, "recipe") for p, reason in recipe_rules]
    preset = [r for f in fams for r in f.rules(config)]
    rules = user_rules + preset

    model = model if model is not None else meta_model(config)
    mods = index_modules(model)
    caps = backend_class(backend).quantizes  # what the backend quantizes (its class says; docs/formats.md)
    decisions = [_decide(m, rules, backend, caps) for m in mods]
    total, nbytes = param_stats(model)

    unmatched = [r for r in user_rules if not any(r.pattern.covers(m.name) for m in mods)]
    warnings = [f"pattern {r.pattern.raw!r} ({r.source}) matched no quantizable module" for r in unmatched]
    if unmatched and strict:
        raise PatternError(warnings[0] + (f" (+{len(unmatched) - 1} more)" if len(unmatched) > 1 else ""),
                           hint="fix the pattern (see `quantkit plan` for module names) or drop --strict")
    big_custom = [d for d in decisions if d.module.kind == "custom2d" and d.source == "backend" and d.module.params >= 1 << 20]
    for d in big_custom:
        warnings.append(f"{d.module.name} ({d.module.cls}, {d.module.params:,} params) is not an nn.Linear and stays BF16")
    if not any(d.precision == "fp4" for d in decisions):
        raise PlanError("the plan quantizes nothing: every linear layer is excluded",
                        hint="loosen the exclusion patterns; an 'NVFP4' checkpoint with no FP4 layer is a defect")
    return Plan(
        model_source=model_source,
        model_type=getattr(config, "model_type", "?"),
        architecture=type(model).__name__,
        families=[f.name for f in fams],
        backend=backend, scheme=scheme, decisions=decisions,
        total_params=total, source_bytes=nbytes, rules=rules, unmatched=unmatched, warnings=warnings,
    )


def plan_recipe(recipe: Any, *, backend: str | None = None, cli_patterns: list[str] = (),
                config_path: str | None = None, strict: bool = False) -> Plan:
    """Plan a recipe: its model's config (from --config, the recipe, a local dir or the Hub),
    its exclusions plus `cli_patterns`, for `backend` (default: the recipe's first format's)."""
    from quantkit.backends import backend_for_format
    from quantkit.source import load_config

    m = recipe.model
    config = load_config(m.source, m.revision, m.trust_remote_code, config_path or m.config)
    backend = backend or backend_for_format(recipe.resolved_formats()[0])
    from quantkit.backends import backend_class
    from quantkit.calib_health import moe_setting

    plan = build_plan(config, model_source=m.source, backend=backend, scheme=recipe.scheme,
                      recipe_rules=recipe.patterns(), cli_patterns=list(cli_patterns),
                      family=recipe.family, strict=strict)
    plan.moe_calibration = moe_setting(recipe.calibration, backend_class(backend), config)
    return plan
