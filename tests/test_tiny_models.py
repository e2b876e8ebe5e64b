"""Self-test of tests/tiny_models.py: every kind builds (on meta, fast); llama round-trips on disk."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models as tm  # noqa: E402


@pytest.mark.parametrize("kind", tm.KINDS)
def test_builds_on_meta(kind):
    with torch.device("meta"):
        model = tm.tiny_model(kind)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears, f"{kind}: no nn.Linear"
    assert model.config.vocab_size <= 512
    assert model.config.hidden_size == 64
    assert 2 <= model.config.num_hidden_layers <= 6
    # NVFP4 needs every Linear input width to be a multiple of the 16-element block.
    assert all(m.in_features % 16 == 0 for m in linears), kind


def test_unknown_kind():
    with pytest.raises(ValueError):
        tm.tiny_config("nope")


def test_llama_checkpoint_roundtrip(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tm.save_tiny_checkpoint("llama", tmp_path / "llama")
    assert (path / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok("The quick brown fox, naïve café — 42!", return_tensors="pt")
    assert len(tok) <= 512 and int(enc.input_ids.max()) < len(tok)
    assert tok.decode(enc.input_ids[0]) == "The quick brown fox, naïve café — 42!"
    model = AutoModelForCausalLM.from_pretrained(path)
    ref = tm.tiny_model("llama")
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc.input_ids.shape[1], model.config.vocab_size)
