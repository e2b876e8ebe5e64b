"""vLLM's own per-module quantization decision for checkpoint directories: the oracle of the
conformance test (tests/test_conformance.py). Runs in the vLLM environment (.venv-vllm), never
imports quantkit.

    .venv-vllm/bin/python tests/conformance/vllm_oracle.py OUT.json CASE_DIR [CASE_DIR ...]
    .venv-vllm/bin/python tests/conformance/vllm_oracle.py --tables OUT.json ARCH [ARCH ...]

For each case directory (config.json, optional hf_quant_config.json), vLLM builds the model class
its `architectures` names on the meta device (no weights read: load_format dummy), with the
quantization config vLLM itself reads from the directory (`get_quant_config`, the model class's
`hf_to_vllm_mapper` and `packed_modules_mapping`). Every call of the quantization config's
`get_quant_method` is recorded: prefix -> "fp4" (a quantized method), "bf16" (unquantized) or
"error: ..." (vLLM raised, e.g. shards of one fused module disagree). Modules built without a
quantization config (routers in some classes) are read from the built model.

Only kernel availability is patched, never a decision: the CPU build has no NVFP4 MoE kernel
and no non-gated (relu^2) MoE; where vLLM would pick one, the decision is recorded as "fp4" and
an unquantized method stands in so construction goes on. torchvision (absent beside the CPU
torch) is replaced by an import-only stub; no image is processed here.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import types

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        v = _Meta(name, (), {})
        setattr(cls, name, v)
        return v


class _StubModule(types.ModuleType):
    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        v = _Meta(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, v)
        return v


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__version__ = "0.0"


class _NoKernel(Exception):
    """vLLM chose a quantized method whose kernel this CPU build lacks."""


_DECISIONS: dict[str, str] = {}  # the case being built: prefix -> decision
_PATCHED = False


def _install_patches():
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    import vllm.model_executor.models.registry as registry

    registry._run_in_subprocess = lambda fn: fn()  # import model classes here (stubbed torchvision)

    import vllm.model_executor.layers.fused_moe.config as moe_config

    post = moe_config.FusedMoEConfig.__post_init__

    def post_init(self):
        try:
            post(self)
        except NotImplementedError as e:  # last check of __post_init__: a platform limit, not a decision
            if "is_act_and_mul" not in str(e):
                raise

    moe_config.FusedMoEConfig.__post_init__ = post_init

    import vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method as unq

    select = unq.select_unquantized_moe_backend

    def select_unquantized(moe_config):
        try:
            return select(moe_config)
        except NotImplementedError:  # e.g. relu^2 experts on CPU: a platform limit, not a decision
            return next(iter(unq.UnquantizedMoeBackend)), None

    unq.select_unquantized_moe_backend = select_unquantized

    def no_kernel(*a, **k):
        raise _NoKernel()

    import vllm.model_executor.layers.quantization as q

    for name in list(q.QUANTIZATION_METHODS):
        try:
            q.get_quantization_config(name)
        except Exception:
            continue
    for mod in list(sys.modules.values()):
        if mod is not None and getattr(mod, "__name__", "").startswith("vllm.") and hasattr(mod, "select_nvfp4_moe_backend"):
            mod.select_nvfp4_moe_backend = no_kernel
    for name in q.QUANTIZATION_METHODS:
        try:
            cls = q.get_quantization_config(name)
        except Exception:
            continue
        for klass in cls.__mro__:
            if "get_quant_method" in klass.__dict__ and not getattr(klass.__dict__["get_quant_method"], "_wrapped", False):
                klass.get_quant_method = _recording(klass.__dict__["get_quant_method"])


def _kind(method) -> str | None:
    if method is None:
        return "bf16"
    name = type(method).__name__
    if "KVCache" in name:
        return None
    return "bf16" if name.startswith("Unquantized") else "fp4"


def _fallback(layer):
    from vllm.model_executor.layers.fused_moe import RoutedExperts
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    if isinstance(layer, RoutedExperts) or hasattr(layer, "moe_config"):
        from vllm.model_executor.layers.fused_moe import UnquantizedFusedMoEMethod

        return UnquantizedFusedMoEMethod(layer.moe_config)
    return UnquantizedLinearMethod()


def _decided(layer) -> bool:
    """Layers whose decision the conformance test compares: linears, MoE experts, the LM head."""
    from vllm.model_executor.layers.fused_moe import RoutedExperts
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    return isinstance(layer, (LinearBase, RoutedExperts, ParallelLMHead))


def _recording(orig):
    def get_quant_method(self, layer, prefix):
        decisions = _DECISIONS if _decided(layer) else {}
        try:
            method = orig(self, layer, prefix)
        except _NoKernel:
            decisions[prefix] = "fp4"
            return _fallback(layer)
        except ValueError as e:
            decisions[prefix] = f"error: {e}"
            return _fallback(layer)
        kind = _kind(method)
        if kind is not None:
            decisions.setdefault(prefix, kind)
        return method

    get_quant_method._wrapped = True
    return get_quant_method


def _built(model) -> dict[str, str]:
    """Linear / MoE / LM-head modules of the built model and their final methods."""
    from vllm.model_executor.layers.fused_moe import RoutedExperts
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (LinearBase, RoutedExperts, ParallelLMHead)):
            kind = _kind(getattr(mod, "quant_method", None))
            if kind is not None:
                out[name] = kind
    return out


def _class_mappings(vc) -> list:
    """Class-level packed_modules_mapping dicts of the model class: some classes add entries in
    __init__ (Qwen3-MoE), which would leak into the next case built in this process; a server
    builds one model per process."""
    from vllm.model_executor.model_loader.utils import get_model_architecture

    cls, _ = get_model_architecture(vc.model_config)
    return [(d, dict(d)) for k in cls.__mro__ if isinstance(d := k.__dict__.get("packed_modules_mapping"), dict)]


def _restore(saved: list) -> None:
    for d, copy in saved:
        d.clear()
        d.update(copy)


def decide(case_dir: str, first: bool) -> dict:
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import destroy_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.utils import initialize_model

    _install_patches()
    _DECISIONS.clear()
    decisions = _DECISIONS
    case = json.loads(open(os.path.join(case_dir, "case.json")).read()) if os.path.isfile(
        os.path.join(case_dir, "case.json")) else {}
    args = EngineArgs(model=case_dir, load_format="dummy", enforce_eager=True, max_model_len=128,
                      skip_tokenizer_init=True, dtype="bfloat16", quantization=case.get("quantization"))
    try:
        vc = args.create_engine_config()
    except Exception as e:  # vLLM refuses the config itself
        return {"config_error": f"{type(e).__name__}: {e}".splitlines()[0], "modules": {}}
    with set_current_vllm_config(vc):
        if first:
            init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                         distributed_init_method="tcp://127.0.0.1:29533", backend="gloo")
        destroy_model_parallel()  # groups depend on the model (the expert-parallel one on MoE)
        initialize_model_parallel(1, 1)
        saved = _class_mappings(vc)
        try:
            with torch.device("meta"):
                model = initialize_model(vllm_config=vc)
        except Exception as e:
            return {"build_error": f"{type(e).__name__}: {e}".splitlines()[0], "modules": dict(decisions)}
        finally:
            _restore(saved)
    asked = dict(decisions)
    modules = dict(asked)
    for name, kind in _built(model).items():  # modules no quantization config was asked about
        if not any(name == p or name.startswith(p + ".") for p in asked):
            modules[name] = kind
    return {"modules": dict(sorted(modules.items())), "architecture": type(model).__name__}


def tables(archs: list[str]) -> dict:
    """Each model class's mapping data as its quantization config receives it: the rename part of
    hf_to_vllm_mapper and the class-level packed_modules_mapping."""
    import vllm.model_executor.models.registry as registry
    from vllm.model_executor.models import ModelRegistry

    registry._run_in_subprocess = lambda fn: fn()
    out = {}
    for arch in archs:
        cls = ModelRegistry._try_load_model_cls(arch)
        mapper = getattr(cls, "hf_to_vllm_mapper", None)
        r = mapper.get_rename_mapper() if mapper is not None else None
        out[arch] = {
            "rename_prefix": dict(r.orig_to_new_prefix) if r else {},
            "rename_substr": dict(r.orig_to_new_substr) if r else {},
            "rename_other": bool(r and (r.orig_to_new_regex or r.orig_to_new_suffix or r.orig_to_new_renaming)),
            "packed": {k: list(v) for k, v in (getattr(cls, "packed_modules_mapping", None) or {}).items()},
        }
    return out


def main(argv: list[str]) -> int:
    sys.meta_path.insert(0, _TorchvisionStub())
    if argv and argv[0] == "--tables":
        with open(argv[1], "w") as f:
            json.dump(tables(argv[2:]), f, indent=1, sort_keys=True)
        return 0
    out, cases = argv[0], argv[1:]
    result = {}
    for i, case in enumerate(cases):
        result[os.path.basename(case.rstrip("/"))] = decide(case, first=(i == 0))
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
