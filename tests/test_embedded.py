"""Embedded models (`embedded:<name>`): the converted bf16 checkpoints are complete, their
tokenizers survive save/reload (sub-word tokens, exact round trip, BOS where the GGUF asks for
it) and greedy generation is English. Gemma 3's tokenizer is rebuilt from the GGUF vocabulary
(transformers' own GGUF conversion reloads it character by character)."""

from __future__ import annotations

import json

import pytest

from quantkit.embedded import _MARKER, EMBEDDED, _is_current, materialize

SENTENCE = "The capital of France is Paris."
ROUND_TRIP = [
    SENTENCE,
    "Hello world!\n\nA new paragraph,\twith a tab.\n",
    "1234567890 and 3.14159, 2025-01-31",
    "café naïve résumé Straße",
    "emoji 🙂🚀 ok",
    "  two leading spaces and two trailing  ",
    "中文字符 日本語",
    'def f(x):\n    return {"a": x ** 2}\n',
]
PARAGRAPH = ("Once upon a time, in a small village by the sea, there lived an old fisherman who went out "
             "every morning before sunrise. His daughter mended the nets and sold the catch at the market.")
PROMPTS = ["The capital of France is", "Paris is the capital of"]
COMMON = {"the", "of", "and", "is", "a", "in", "to", "it", "city", "country", "capital", "france",
          "paris", "world", "state", "states", "united", "largest", "most", "that", "was", "has", "as"}

# (name, expected tokens of SENTENCE as the tokenizer spells them, BOS prepended)
EXPECTED = {
    "smollm2-135m": (["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis", "."], None),
    "gemma3-270m": (["<bos>", "The", "▁capital", "▁of", "▁France", "▁is", "▁Paris", "."], "<bos>"),
}


def test_cache_marker_records_tokenizer_recipe(tmp_path):
    """A cache made by an older conversion (or before an entry got its tokenizer fix) is converted
    again; a current one is kept."""
    from quantkit.embedded import CONVERSION_VERSION

    marker = tmp_path / _MARKER
    assert not _is_current(marker, EMBEDDED["smollm2-135m"])
    marker.write_text(json.dumps({"name": "x"}))  # written by the first conversion
    assert not _is_current(marker, EMBEDDED["smollm2-135m"])
    marker.write_text(json.dumps({"name": "x", "conversion": CONVERSION_VERSION}))
    assert _is_current(marker, EMBEDDED["smollm2-135m"])
    assert not _is_current(marker, EMBEDDED["gemma3-270m"])
    marker.write_text(json.dumps({"name": "x", "conversion": CONVERSION_VERSION,
                                  "tokenizer_fix": EMBEDDED["gemma3-270m"].tokenizer_fix}))
    assert _is_current(marker, EMBEDDED["gemma3-270m"])
    marker.write_text("{not json")
    assert not _is_current(marker, EMBEDDED["gemma3-270m"])


@pytest.fixture(scope="session")
def gemma3_dir():
    return materialize("gemma3-270m")


@pytest.fixture(scope="module", params=[pytest.param("smollm2-135m", marks=pytest.mark.e2e),
                                        pytest.param("gemma3-270m", marks=pytest.mark.e2e)])
def embedded(request):
    """(name, checkpoint dir, tokenizer, model) reloaded from the converted checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = request.param
    d = request.getfixturevalue("smollm2_dir" if name == "smollm2-135m" else "gemma3_dir")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
    return name, d, tok, model


def test_checkpoint_files_and_bf16_weights(embedded):
    from safetensors import safe_open

    name, d, _, _ = embedded
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", _MARKER):
        assert (d / f).is_file(), f
    marker = json.loads((d / _MARKER).read_text())
    assert marker["name"] == name and marker["tokenizer_fix"] == EMBEDDED[name].tokenizer_fix
    with safe_open(str(d / "model.safetensors"), framework="pt") as st:
        keys = list(st.keys())
        assert len(keys) > 100
        dtypes = {st.get_slice(k).get_dtype() for k in keys}
    assert dtypes == {"BF16"}, dtypes
    assert not list(d.parent.glob(f".{name}.*")), "no temporary directory left behind"


def test_tokenizer_is_subword_and_round_trips(embedded):
    name, _, tok, _ = embedded
    tokens, bos = EXPECTED[name]
    ids = tok(SENTENCE).input_ids
    assert tok.convert_ids_to_tokens(ids) == tokens  # a handful of sub-words, not ~30 characters
    assert len(tok(SENTENCE, add_special_tokens=False).input_ids) <= 8
    if bos is not None:
        assert tok.bos_token == bos and ids[0] == tok.bos_token_id
    for text in ROUND_TRIP:
        enc = tok(text).input_ids
        assert tok.decode(enc, skip_special_tokens=True) == text, (text, tok.convert_ids_to_tokens(enc))
        assert len(enc) < len(text.encode()), (text, tok.convert_ids_to_tokens(enc))
    assert len(tok(PARAGRAPH).input_ids) < len(PARAGRAPH) / 3.5  # sub-word compression on English


@pytest.mark.e2e
def test_gemma_special_and_user_defined_tokens(gemma3_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma3_dir)
    assert len(tok) == 262144  # no vocabulary entry lost to a name clash
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 1, 0, 3)
    turn = "<start_of_turn>user\nhi<end_of_turn>\n"
    ids = tok(turn).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "<start_of_turn>", "user", "\n", "hi", "<end_of_turn>", "\n"]
    assert tok.decode(ids[1:]) == turn and tok.decode(ids, skip_special_tokens=True) == "user\nhi\n"
    assert tok.convert_ids_to_tokens(tok("a\n\n\tb", add_special_tokens=False).input_ids) == ["a", "\n\n", "\t", "b"]


def test_greedy_generation_is_english(embedded):
    import torch

    name, _, tok, model = embedded
    texts = []
    with torch.no_grad():
        for prompt in PROMPTS:
            enc = tok(prompt, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=12, do_sample=False)
            texts.append(tok.decode(out[0][enc.input_ids.shape[1]:], skip_special_tokens=True))
    words = [w.strip(".,;:!?()\"'").lower() for w in " ".join(texts).split()]
    assert len(words) >= 10, texts
    assert len(COMMON.intersection(words)) >= 3, texts
    assert sum(w.isalpha() for w in words) / len(words) > 0.7, texts
    assert all("\ufffd" not in t for t in texts), texts


@pytest.mark.e2e
def test_smollm2_eos_token_matches_gguf(smollm2_dir):
    """transformers' GGUF conversion names <|im_start|> as SmolLM2's eos; the GGUF says id 2."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token is not None
