"""What a model is made of, as far as quantization cares: every linear-like module with its
kind and shape. Built from a model on the meta device, so no weights are read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ModuleInfo", "index_modules", "model_class_for", "meta_model", "param_stats"]


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    kind: str  # linear | experts | custom2d | conv
    cls: str
    params: int
    in_features: int | None = None
    out_features: int | None = None
    num_experts: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def model_class_for(config: Any):
    """The transformers class that builds this config: its declared architecture when
    transformers has it, else the causal-LM (or image-text-to-text) auto class."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None and hasattr(cls, "_from_config"):
            return cls
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    return AutoModelForCausalLM  # raises a clear transformers error if unsupported


def meta_model(config: Any):
    """Instantiate the model on the meta device: real module names and shapes, no memory."""
    import torch

    cls = model_class_for(config)
    with torch.device("meta"):
        return cls._from_config(config, dtype=torch.bfloat16)


def index_modules(model: Any) -> list[ModuleInfo]:
    """Every module a quantizer might touch, in model order."""
    from torch import nn

    out: list[ModuleInfo] = []
    for name, mod in model.named_modules():
        if not name:
            continue
        direct = dict(mod.named_parameters(recurse=False))
        cls = type(mod).__name__
        if isinstance(mod, nn.Linear):
            out.append(ModuleInfo(name, "linear", cls, mod.weight.numel(), mod.in_features, mod.out_features))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out.append(ModuleInfo(name, "conv", cls, sum(p.numel() for p in direct.values())))
        elif isinstance(mod, nn.Embedding) or "norm" in cls.lower():
            continue
        elif any(p.ndim == 3 for p in direct.values()):
            three = [p for p in direct.values() if p.ndim == 3]
            out.append(ModuleInfo(name, "experts", cls, sum(p.numel() for p in three),
                                  num_experts=int(three[0].shape[0])))
        elif "weight" in direct and direct["weight"].ndim == 2:
            w = direct["weight"]
            out.append(ModuleInfo(name, "custom2d", cls, w.numel(), int(w.shape[1]), int(w.shape[0])))
    return out


def param_stats(model: Any) -> tuple[int, int]:
    """(unique parameters, bytes at their current dtype); tied weights are counted once."""
    total, nbytes = 0, 0
    for _, p in model.named_parameters():
        total += p.numel()
        nbytes += p.numel() * p.element_size()
    return total, nbytes
