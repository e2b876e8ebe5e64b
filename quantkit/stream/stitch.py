"""Per-layer exports -> one checkpoint: tensor renaming and metadata merging.

Each stand-in export names its layer `<prefix>.0.`; `rename` moves every name (tensor names,
exclude/ignore entries, per-layer metadata keys) to layer i. `merge` folds per-layer metadata
into one: lists of names are unioned in order, dicts merged key by key, other values must agree.
The result is what the backend would have written for the whole model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Names", "rename", "merge", "export_metadata", "export_tensors", "export_prefix"]


@dataclass(frozen=True)
class Names:
    """How the stand-in's export names map to the output: `<export>.0.` -> `<source>.<i>.`, and
    other names under the export's root (e.g. `model.language_model.`, which transformers may
    use when saving a freshly built model) -> the source's root (e.g. `model.`)."""

    export: str  # e.g. model.language_model.layers
    source: str  # e.g. model.layers
    i: int

    def __call__(self, s: str) -> str:
        tag = "re:" if s.startswith("re:") else ""
        body = s[len(tag):]
        if body.startswith(f"{self.export}.0.") or body == f"{self.export}.0":
            return tag + f"{self.source}.{self.i}" + body[len(self.export) + 2:]
        er, sr = self.export[: -len("layers")], self.source[: -len("layers")]
        if er != sr and er and body.startswith(er):
            return tag + sr + body[len(er):]
        return s


def rename(obj: Any, names: Names) -> Any:
    if isinstance(obj, str):
        return names(obj)
    if isinstance(obj, list):
        return [rename(x, names) for x in obj]
    if isinstance(obj, dict):
        return {names(k): rename(v, names) for k, v in obj.items()}
    return obj


def export_prefix(d: Path) -> str:
    """The decoder-layer prefix the stand-in's export used (read from its headers)."""
    from quantkit.checkpoint.headers import read_header
    from quantkit.stream.shards import layer_key

    found = {k[0] for f in d.glob("*.safetensors") for k in map(layer_key, read_header(f)[0]) if k}
    if len(found) != 1:
        from quantkit.errors import VerificationError

        raise VerificationError(f"the stand-in export has layer prefixes {sorted(found)}; expected exactly one",
                                hint="use --mode full for this architecture")
    return found.pop()


def merge(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if k in a else v
        return out
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, str) for x in a + b):
        return a + [x for x in b if x not in a]
    return a


def export_metadata(d: Path) -> dict:
    """The metadata of one stand-in export that must be merged: config.json's
    quantization_config and (ModelOpt) hf_quant_config.json."""
    out = {"quantization_config": json.loads((d / "config.json").read_text()).get("quantization_config")}
    hq = d / "hf_quant_config.json"
    if hq.is_file():
        out["hf_quant_config"] = json.loads(hq.read_text())
    return out


def export_tensors(d: Path, names: Names) -> dict:
    """The layer's tensors from one stand-in export, renamed to layer i (the stand-in's
    embedding, norm and head are dropped: they come from the source)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            if name.startswith(f"{names.export}.0."):
                out[names(name)] = t
    return out
