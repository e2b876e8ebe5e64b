"""The calibration forwards of the ModelOpt backend: the logits are skipped (`logits_to_keep=1`)
when the output projection is not quantized, without changing a byte of the checkpoint, and
kept when it is; the CUDA warm-up thread is a no-op without a GPU."""

from __future__ import annotations

import dataclasses
import json

import torch

from quantkit.backends.modelopt import calibration_forward_kwargs
from quantkit.plan import build_plan
from quantkit.quantize import QuantizeOptions, quantize
from quantkit.recipe import resolve_recipe
from tiny_models import save_tiny_checkpoint, tiny_model


def _plan(model):
    return build_plan(model.config, model_source="tiny", backend="modelopt", model=model)


def test_logits_are_skipped_only_while_the_head_is_not_quantized():
    model = tiny_model("llama")
    plan = _plan(model)
    assert "lm_head" in plan.kept_names()
    assert calibration_forward_kwargs(model, plan) == {"logits_to_keep": 1}
    # the same forward gives the same hidden states, and one position of logits
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids, use_cache=False, output_hidden_states=True)
        last = model(ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    assert last.logits.shape[1] == 1 and full.logits.shape[1] == 16
    assert torch.equal(last.logits[:, 0], full.logits[:, -1])
    assert all(torch.equal(a, b) for a, b in zip(full.hidden_states, last.hidden_states))

    for precision in ("fp4", "fp8"):  # a quantized head needs the amax of every position's input
        forced = dataclasses.replace(plan, decisions=[
            dataclasses.replace(d, precision=precision) if d.module.name == "lm_head" else d for d in plan.decisions])
        assert calibration_forward_kwargs(model, forced) == {}


def test_no_logits_argument_no_change():
    class Plain(torch.nn.Module):  # a model without get_output_embeddings
        def forward(self, x):
            return x

    class NoKeep(torch.nn.Module):  # a head, but a forward that takes no logits_to_keep
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(2, 2)

        def get_output_embeddings(self):
            return self.head

        def forward(self, input_ids, use_cache=False):
            return self.head(input_ids)

    plan = _plan(tiny_model("llama"))
    assert calibration_forward_kwargs(Plain(), plan) == {}
    assert calibration_forward_kwargs(NoKeep(), plan) == {}


def test_skipping_the_logits_writes_the_same_checkpoint(tmp_path, monkeypatch):
    import quantkit.backends.modelopt as mo

    save_tiny_checkpoint("llama", tmp_path / "src")
    r = tmp_path / "r.yaml"
    r.write_text(f"name: t\nmodel:\n  source: {tmp_path / 'src'}\ncalibration:\n  samples: 4\n  seq_len: 64\n")
    recipe = resolve_recipe(str(r))
    seen = []
    real = mo.calibration_forward_kwargs

    def spy(model, plan):
        seen.append(real(model, plan))
        return seen[-1]

    monkeypatch.setattr(mo, "calibration_forward_kwargs", spy)
    (on,) = quantize(recipe, QuantizeOptions(formats=["modelopt"], out=tmp_path / "on"))
    monkeypatch.setattr(mo, "calibration_forward_kwargs", lambda model, plan: {})
    (off,) = quantize(recipe, QuantizeOptions(formats=["modelopt"], out=tmp_path / "off"))
    assert seen == [{"logits_to_keep": 1}]
    files = [json.loads((x.path / "quantkit.json").read_text())["files"] for x in (on, off)]
    assert files[0] == files[1] and any(f.endswith(".safetensors") for f in files[0])


def test_no_cuda_warm_up_without_a_gpu(monkeypatch):
    from quantkit.quantize import context

    monkeypatch.setattr(context, "cuda", lambda: False)
    assert context.warm_cuda() is None
