"""A one-layer model of the real class that stands in for decoder layer i.

The config is the source's with `num_hidden_layers=1` and layer i's per-layer fields, as the
families narrow them (`quantkit.families.slice_layer`: `layer_types`, Nemotron-H's pattern, MoE
`mlp_only_layers`, no MTP layers). Its input embedding table *is* the
calibration activations that reach layer i: token id k of the stand-in means "row k of the
captured hidden states", so both backends calibrate through their own normal path (a model,
input_ids, a forward loop or `oneshot`) and see exactly the inputs that layer i sees in the full
model. Its vocabulary is the number of captured positions, so its lm_head is tiny."""

from __future__ import annotations

import copy
from typing import Any

from quantkit.errors import PlanError
from quantkit.families import slice_layer

__all__ = ["layer_config", "build_stand_in", "capture_outputs", "stand_in_plan"]


def layer_config(config: Any, i: int, vocab: int) -> Any:
    cfg = copy.deepcopy(config)
    name = getattr(cfg, "_name_or_path", "") or ""
    if name.endswith("config.json"):  # llm-compressor copies *.py files from this path: it must be the dir
        cfg._name_or_path = name[: -len("config.json")].rstrip("/") or "."
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = text.num_hidden_layers
    text.num_hidden_layers = 1
    why = slice_layer(text, i, n)  # the families narrow the per-layer fields they know
    if why:
        raise PlanError(f"memory-bounded mode cannot rebuild layer {i}: {why}",
                        hint="use --mode full on a machine with enough memory")
    text.vocab_size = vocab
    text.use_cache = False
    cfg.use_cache = False
    text.tie_word_embeddings = False
    cfg.tie_word_embeddings = False
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(text, key, None), int) and getattr(text, key) >= vocab:
            setattr(text, key, None)
    return cfg


def build_stand_in(config: Any, i: int, layer_tensors: dict, other_tensors: dict, hidden, device: str = "cpu"):
    """The stand-in model for layer i: its weights from `layer_tensors` (already renamed to layer 0),
    final norm from `other_tensors`, embedding rows = `hidden` (N, hidden_size)."""
    import torch
    from torch import nn
    from transformers.initialization import no_init_weights

    from quantkit.modules import model_class_for

    cfg = layer_config(config, i, vocab=int(hidden.shape[0]))
    cls = model_class_for(cfg)
    with no_init_weights():
        model = cls._from_config(cfg, dtype=torch.bfloat16)
    sd = model.state_dict()
    want = {k: v for k, v in sd.items() if k in layer_tensors}
    missing = [k for k in sd if _is_layer_key(k) and k not in layer_tensors]
    extra = [k for k in layer_tensors if k not in sd]
    wrong = [k for k, v in want.items() if tuple(v.shape) != tuple(layer_tensors[k].shape)]
    if wrong:
        raise PlanError(f"memory-bounded mode cannot rebuild layer {i} of {type(model).__name__}: shape mismatch "
                        f"{wrong[:3]}", hint="use --mode full on a machine with enough memory")
    if missing or extra:  # checkpoint names differ from the modules (fused experts, renamed prefixes):
        del model         # let transformers' own loader convert them, as from_pretrained does for the full model
        model = _load_converted(cls, cfg, i, {**layer_tensors, **other_tensors})
    else:
        with torch.no_grad():
            for k, t in layer_tensors.items():
                _set(model, k, t.to(sd[k].dtype))
            for k, t in other_tensors.items():
                if k in sd and not _is_layer_key(k) and sd[k].shape == t.shape:
                    _set(model, k, t.to(sd[k].dtype))
    emb = model.get_input_embeddings()  # keep its class: the backends name it in their metadata
    emb.weight = nn.Parameter(hidden, requires_grad=False)
    if isinstance(getattr(emb, "embed_scale", None), torch.Tensor):  # Gemma: hidden states are already scaled
        emb.embed_scale.fill_(1.0)
    with torch.no_grad():
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
            head.weight.data.zero_()
    return model.to(device).eval()


def _load_converted(cls, cfg, i: int, tensors: dict):
    """The stand-in loaded by transformers from a one-layer checkpoint in a temporary directory,
    so its weight converters apply (per-expert -> fused experts, `backbone.` -> `model.`)."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    source = cfg.name_or_path
    with tempfile.TemporaryDirectory(prefix="quantkit-layer-") as d:
        cfg.save_pretrained(d)
        save_file({k: v.contiguous() for k, v in tensors.items()}, f"{d}/model.safetensors", metadata={"format": "pt"})
        model, info = cls.from_pretrained(d, config=cfg, dtype=torch.bfloat16, output_loading_info=True)
    # from_pretrained names the model after the temporary directory, gone now; llm-compressor's save
    # looks for a recipe under model.name_or_path, its oneshot reloads the config from
    # config.name_or_path: both failed on every converted stand-in (a layerwise MoE)
    model.name_or_path = model.config.name_or_path = source
    bad = [k for key in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info.get(key) or []
           if _is_layer_key(k if isinstance(k, str) else k[0])]
    if bad:
        raise PlanError(f"memory-bounded mode cannot rebuild layer {i} of {cls.__name__}: transformers could not "
                        f"load {bad[:3]}", hint="use --mode full on a machine with enough memory")
    return model


def _is_layer_key(k: str) -> bool:
    return ".layers.0." in f".{k}"


def _set(model, name: str, value) -> None:
    from torch import nn

    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    if isinstance(getattr(mod, attr), nn.Parameter):
        value = nn.Parameter(value, requires_grad=False)
    setattr(mod, attr, value)


def capture_outputs(model, calib: Any):
    """Run the stand-in's decoder layer on every sample of `calib`, in order (consecutive
    equal-length samples batched); return the output hidden states concatenated, (N_tokens, H) on CPU."""
    import torch

    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    layer = base.layers[0]
    device = next(model.parameters()).device
    got: list = []

    def hook(_m, _inp, out):
        h = (out[0] if isinstance(out, (tuple, list)) else out).detach()
        got.append(h.reshape(-1, h.shape[-1]).to("cpu"))

    h = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for b in calib.batches(getattr(calib, "batch_size", 1), ordered=True):
                base(input_ids=b.to(device), use_cache=False)
    finally:
        h.remove()
    return torch.cat(got)


def module_prefix(model: Any) -> str:
    """The dotted path of the stand-in's decoder layer list (e.g. `model.layers`)."""
    from torch import nn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] == "layers":
            return name
    raise PlanError(f"{type(model).__name__} has no decoder layer list", hint="use --mode full")


def stand_in_plan(full_plan: Any, model: Any, i: int, prefix: str | None = None) -> Any:
    """The full plan's decisions for layer i, renamed to the stand-in's layer 0; everything
    outside the layer stays BF16 (it is carried over from the source, not quantized here)."""
    from quantkit.modules import index_modules
    from quantkit.plan import Decision, Plan

    prefix = prefix or module_prefix(model)
    by_name = {d.module.name: d for d in full_plan.decisions}
    decisions = []
    for m in index_modules(model):
        full_name = m.name.replace(f"{prefix}.0.", f"{prefix}.{i}.", 1) if m.name.startswith(f"{prefix}.0.") else None
        d = by_name.get(full_name) if full_name else None
        if d is None:
            decisions.append(Decision(m, "bf16", "outside the streamed layer", "structural"))
        else:
            decisions.append(Decision(m, d.precision, d.reason, d.source, None))
    return Plan(model_source=full_plan.model_source, model_type=full_plan.model_type,
                architecture=full_plan.architecture, families=full_plan.families, backend=full_plan.backend,
                scheme=full_plan.scheme, decisions=decisions, total_params=0, source_bytes=0, rules=[])
