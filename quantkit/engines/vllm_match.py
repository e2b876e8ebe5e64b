"""How vLLM 0.32 decides, for each module it builds, whether the checkpoint's quantization applies:
a port of its matching code, checked against vLLM itself by tests/test_conformance.py.

Which metadata vLLM reads (`weight_utils.get_quant_config`): config.json's `quantization_config`
(or `text_config`'s, or `compression_config`) when present, else the format's own file
(`hf_quant_config.json`, with `--quantization modelopt` as quantkit serves ModelOpt).

compressed-tensors (`compressed_tensors.py`, `utils.py`, `config_utils.py`): literal `ignore` /
target entries that contain a dot are renamed through the model class's `hf_to_vllm_mapper`;
`re:` entries are not, and are matched (`re.match`) against vLLM's names. A fused module is
ignored when an entry matches its own name, else when every shard (from packed_modules_mapping)
is matched; some-but-not-all raises. MoE experts are decided from expert 0's projection names.

ModelOpt (`modelopt.py` `is_layer_excluded`, `quant_utils.is_layer_skipped`): entries `X*` become
`X` and `X.*`, then are renamed; a fused module is skipped when listed by its own name, else by
exact per-shard entries (some-but-not-all raises); then any entry that is a *substring* of the
name excludes it (`model.layers.1` excludes layers 10-19 too), then fnmatch wildcards; names with
`vision_tower` / `vision_model` / `vit_large_projector` are never quantized.
"""

from __future__ import annotations

import re
from fnmatch import fnmatch

from quantkit.engines.vllm_layers import EngineModule, VllmArch, rename

__all__ = ["QUANTIZED", "read_quant_config", "Matcher", "matcher_for", "decide_all"]

QUANTIZED = "fp4"  # the decision for a module vLLM builds with the checkpoint's quantized method
BF16 = "bf16"
_VISION = ("vision_tower", "vision_model", "vit_large_projector")


def read_quant_config(config: dict, hf_quant_config: dict | None) -> tuple[str | None, dict | None]:
    """(file, body) of the quantization metadata vLLM 0.32 uses."""
    qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config") \
        or config.get("compression_config")
    if qc:
        return "config.json", qc
    if hf_quant_config:
        return "hf_quant_config.json", hf_quant_config
    return None, None


def _regex_or_equal(value: str, target: str) -> bool:
    """config_utils.is_equal_or_regex_match (no fnmatch, no contains)."""
    if target.startswith("re:"):
        return re.match(target[3:], value) is not None
    return target == value


def _shards(name: str, packed: dict) -> list[str] | None:
    proj = name.split(".")[-1]
    if proj not in packed:
        return None
    return [name.replace(proj, s) for s in packed[proj]]  # vLLM's str.replace, every occurrence


class Matcher:
    """One checkpoint's quantization config as vLLM holds it after the model's mappers."""
    entries: list[str]  # the unquantized-module list as written in the file vLLM reads

    def decide(self, m: EngineModule) -> str:
        raise NotImplementedError


class CompressedTensorsMatcher(Matcher):
    def __init__(self, qc: dict, arch: VllmArch):
        def mapped(t: str) -> str:
            return rename(t, arch) if "." in t and not t.startswith("re:") else t

        self.entries = list(qc.get("ignore") or [])
        self.ignore = [mapped(t) for t in self.entries]
        self.targets: dict[str, int] = {}
        for i, group in enumerate((qc.get("config_groups") or {}).values()):
            for t in group.get("targets") or []:
                self.targets[mapped(t)] = i
        self.packed = {k: list(v) for k, v in arch.packed.items()}
        self.arch = arch

    def _ignored(self, name: str) -> bool:
        """utils.should_ignore_layer / config_utils.find_matching_patterns."""
        direct = [p for p in self.ignore if _regex_or_equal(name, p)]
        if direct:
            return True
        shards = _shards(name, self.packed)
        if shards is None:
            return False
        hit = [any(_regex_or_equal(s, p) for p in self.ignore) for s in shards]
        if any(hit) and not all(hit):
            raise ValueError(f"Found different quantization schemes for the shards of {name}. "
                             "vLLM requires all to use the same scheme.")
        return all(hit)

    def _target(self, name: str, cls_name: str, targets: dict[str, int]) -> int | None:
        """get_scheme_dict: None when ignored, else the matched target's group."""
        if self._ignored(name):
            return None
        for t in targets:
            if _regex_or_equal(name, t):
                return targets[t]
        fused = next((k for k in self.packed if name.endswith(k)), None)
        if fused is not None:
            found = [next((t for t in targets if _regex_or_equal(name.replace(fused, u), t)), None)
                     for u in self.packed[fused]]
            if all(found):
                return targets[found[0]]
        for t in targets:  # module class name, substring match (vLLM's classes: *Linear, RoutedExperts)
            if not t.startswith("re:") and t.lower() in cls_name.lower():
                return targets[t]
        return None

    def decide(self, m: EngineModule) -> str:
        try:
            if m.kind == "experts":
                return self._experts(m)
            if m.kind == "lm_head":
                try:
                    return BF16 if self._target(m.name, "ParallelLMHead", self.targets) is None else QUANTIZED
                except ValueError:
                    return BF16
            return BF16 if self._target(m.name, "Linear", self.targets) is None else QUANTIZED
        except ValueError as e:
            return f"error: {e}"

    def _experts(self, m: EngineModule) -> str:
        targets = dict(self.targets)
        if "Linear" in targets and "RoutedExperts" not in targets:
            targets["RoutedExperts"] = targets["Linear"]
        gate, down, up = self.arch.experts
        groups = [self._target(f"{m.name}.0.{p}", "RoutedExperts", targets) for p in (gate, up, down)]
        if len(set(groups)) > 1:
            raise ValueError("All MoE projections need to have same quantization scheme but found multiple")
        return BF16 if groups[0] is None else QUANTIZED


class ModelOptMatcher(Matcher):
    def __init__(self, qc: dict, arch: VllmArch):
        q = qc.get("quantization") if isinstance(qc.get("quantization"), dict) else None
        entries = self.entries = list((q.get("exclude_modules") if q is not None else qc.get("ignore")) or [])
        split: list[str] = []
        for e in entries:  # apply_vllm_mapper (vLLM issue 28072)
            split += [e[:-1], e[:-1] + ".*"] if len(e) >= 2 and e[-1] == "*" and e[-2] != "." else [e]
        self.exclude = [rename(e, arch) for e in split]
        self.packed = {k: list(v) for k, v in arch.packed.items()}

    def _skipped(self, prefix: str) -> bool:
        """quant_utils.is_layer_skipped, exact mode."""
        shards = _shards(prefix, self.packed)
        if shards is not None and prefix in self.exclude:
            return True
        if shards is not None:
            hit = [s in self.exclude for s in shards]
            if any(hit) and not all(hit):
                raise ValueError(f"Detected some but not all shards of {prefix} are quantized. "
                                 "All shards of fused layers to have the same precision.")
            return all(hit)
        if "experts" in prefix:
            return any(prefix in e for e in self.exclude if "experts" in e)
        return prefix in self.exclude

    def excluded(self, prefix: str) -> bool:
        if not self.exclude:
            return False
        if self._skipped(prefix):
            return True
        for e in self.exclude:
            if e != prefix and (e in prefix or (prefix.startswith("language_model.")
                                               and e in prefix.removeprefix("language_model."))):
                return True
        return any(fnmatch(prefix, p) for p in self.exclude)

    def decide(self, m: EngineModule) -> str:
        try:
            if self.excluded(m.name):
                return BF16
        except ValueError as e:
            return f"error: {e}"
        return BF16 if any(v in m.name for v in _VISION) else QUANTIZED


def matcher_for(config: dict, hf_quant_config: dict | None, arch: VllmArch) -> tuple[Matcher | None, str | None]:
    """The matcher of the metadata vLLM reads, and that file's name; None for metadata whose
    matching quantkit does not model (ModelOpt MIXED_PRECISION, other methods)."""
    where, qc = read_quant_config(config, hf_quant_config)
    if qc is None:
        return None, None
    method = str(qc.get("quant_method") or ("modelopt" if where == "hf_quant_config.json" else "")).lower()
    algo = str(((qc.get("quantization") or {}) if isinstance(qc.get("quantization"), dict) else qc).get("quant_algo") or "")
    if method == "compressed-tensors":
        return CompressedTensorsMatcher(qc, arch), where
    if method.startswith("modelopt") and algo.upper() != "MIXED_PRECISION":
        return ModelOptMatcher(qc, arch), where
    return None, where


def decide_all(modules: dict[str, EngineModule], matcher: Matcher, arch: VllmArch) -> dict[str, str]:
    """vLLM name -> 'fp4' (built with the quantized method), 'bf16', or 'error: <vLLM's message>'."""
    never = [re.compile(p) for p in arch.unquantized]
    out = {}
    for name, m in modules.items():
        out[name] = BF16 if any(p.search(name) for p in never) else matcher.decide(m)
    return out
