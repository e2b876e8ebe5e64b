"""`quantkit inspect`: synthetic safetensors checkpoints with real module names (tiny 32-wide
tensors, written here, nothing downloaded), one per finding, plus clean ModelOpt and
compressed-tensors checkpoints that must raise no error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quantkit.checkpoint.formats import FormatInfo, declared_unquantized, unquantized_matcher
from quantkit.cli.main import main
from quantkit.errors import ModelSourceError
from quantkit.inspect import CATALOGUE, inspect_checkpoint

GEN = torch.Generator().manual_seed(0)
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 16, "num_hidden_layers": 2, "max_position_embeddings": 4096,
         "tie_word_embeddings": False, "vocab_size": 64}
QWEN3_MOE = {**LLAMA, "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "num_experts": 4,
             "num_experts_per_tok": 2, "moe_intermediate_size": 32}
QWEN3_5 = {"model_type": "qwen3_5", "architectures": ["Qwen3_5ForConditionalGeneration"],
           "text_config": {**LLAMA, "model_type": "qwen3_5_text",
                           "layer_types": ["linear_attention", "full_attention"]}}
CT_GROUP = {"targets": ["Linear"], "format": "nvfp4-pack-quantized",
            "weights": {"num_bits": 4, "type": "float", "group_size": 16, "strategy": "tensor_group"},
            "input_activations": {"num_bits": 4, "type": "float", "group_size": 16, "dynamic": "local"}}


class Ckpt:
    """Tensors of one synthetic checkpoint in the ModelOpt or compressed-tensors NVFP4 layout."""

    def __init__(self, fmt: str = "modelopt"):
        self.fmt = fmt
        self.t: dict[str, torch.Tensor] = {}

    def drop(self, name: str) -> "Ckpt":
        for k in [k for k in self.t if k.startswith(name + ".")]:
            del self.t[k]
        return self

    def fp4(self, name: str, out: int = 32, inp: int = 32, input_scale: bool = True, scale_blocks: int | None = None):
        packed = torch.randint(1, 256, (out, inp // 2), dtype=torch.uint8, generator=GEN) | 0x11  # no zero rows
        scale = torch.full((out, scale_blocks or inp // 16), 0.5).to(torch.float8_e4m3fn)
        ct = self.fmt == "ct"
        self.t[f"{name}.{'weight_packed' if ct else 'weight'}"] = packed
        self.t[f"{name}.weight_scale"] = scale
        self.t[f"{name}.{'weight_global_scale' if ct else 'weight_scale_2'}"] = torch.tensor([2.0] if ct else 0.5)
        if input_scale:
            self.t[f"{name}.{'input_global_scale' if ct else 'input_scale'}"] = torch.tensor([2.0] if ct else 0.5)

    def bf16(self, name: str, out: int = 32, inp: int = 32, zero: bool = False):
        w = torch.zeros(out, inp) if zero else torch.randn(out, inp, generator=GEN)
        self.t[f"{name}.weight"] = w.to(torch.bfloat16)

    def fp8(self, name: str, out: int = 32, inp: int = 32):
        self.t[f"{name}.weight"] = torch.randn(out, inp, generator=GEN).to(torch.float8_e4m3fn)
        self.t[f"{name}.weight_scale"] = torch.tensor(0.01)
        self.t[f"{name}.input_scale"] = torch.tensor(0.01)

    def common(self, prefix: str = "model", lm_head: str = "bf16"):
        self.t[f"{prefix}.embed_tokens.weight"] = torch.randn(64, 32, generator=GEN).to(torch.bfloat16)
        self.t[f"{prefix}.norm.weight"] = torch.ones(32, dtype=torch.bfloat16)
        getattr(self, lm_head)("lm_head", 64, 32)

    def attn(self, p: str, kind: str = "fp4"):
        for n, o, i in (("q_proj", 32, 32), ("k_proj", 16, 32), ("v_proj", 16, 32), ("o_proj", 32, 32)):
            getattr(self, kind)(f"{p}.self_attn.{n}", o, i)

    def mlp(self, p: str, kind: str = "fp4"):
        for n, o, i in (("gate_proj", 64, 32), ("up_proj", 64, 32), ("down_proj", 32, 64)):
            getattr(self, kind)(f"{p}.mlp.{n}", o, i)

    def experts(self, p: str, n: int = 4, router: str = "bf16"):
        getattr(self, router)(f"{p}.mlp.gate", 4, 32)
        for e in range(n):
            for proj, o, i in (("gate_proj", 32, 32), ("up_proj", 32, 32), ("down_proj", 32, 32)):
                self.fp4(f"{p}.mlp.experts.{e}.{proj}", o, i)

    def gdn(self, p: str, kind: str = "bf16"):
        for n, o, i in (("in_proj_qkv", 64, 32), ("in_proj_z", 32, 32), ("in_proj_b", 16, 32), ("in_proj_a", 16, 32),
                        ("out_proj", 32, 32)):
            getattr(self, kind)(f"{p}.linear_attn.{n}", o, i)
        self.t[f"{p}.linear_attn.conv1d.weight"] = torch.randn(64, 1, 4, generator=GEN).to(torch.bfloat16)
        self.t[f"{p}.linear_attn.A_log"] = torch.zeros(2)

    def save(self, path: Path, config: dict, exclude: list[str], kv: str | None = None, shards: int = 2,
             algo: str = "NVFP4") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        names = sorted(self.t)
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: self.t[n].contiguous() for n in names[s::shards]}
            save_file(part, str(path / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        config = json.loads(json.dumps(config))
        if self.fmt == "modelopt":
            q = {"quant_algo": algo, "kv_cache_quant_algo": kv, "group_size": 16, "exclude_modules": exclude}
            hfq = {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": q}
            (path / "hf_quant_config.json").write_text(json.dumps(hfq))
            # as ModelOpt 0.47 writes it: config.json names the list `ignore` (vLLM 0.32 reads only that one)
            flat = {k: v for k, v in q.items() if k != "exclude_modules"}
            config["quantization_config"] = {"quant_method": "modelopt", **flat, "ignore": exclude}
        else:
            kv_scheme = {"num_bits": 8, "type": "float", "strategy": "tensor"} if kv else None
            config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                                             "config_groups": {"group_0": CT_GROUP}, "ignore": exclude,
                                             "kv_cache_scheme": kv_scheme, "quantization_status": "compressed",
                                             "version": "0.19.0"}
        (path / "config.json").write_text(json.dumps(config))
        return path


def kv_scales(c: Ckpt, p: str):
    c.t[f"{p}.self_attn.k_proj.k_scale"] = torch.tensor(0.1)
    c.t[f"{p}.self_attn.v_proj.v_scale"] = torch.tensor(0.1)


def llama(fmt: str) -> Ckpt:
    c = Ckpt(fmt)
    c.common()
    for i in range(2):
        c.attn(f"model.layers.{i}")
        c.mlp(f"model.layers.{i}")
    return c


def codes(report) -> dict[str, str]:
    return {f.code: f.severity for f in report.findings}


def errors(report) -> set[str]:
    return {f.code for f in report.errors}


# ----------------------------------------------------------------------------- clean checkpoints
def test_clean_modelopt_has_no_errors(tmp_path):
    c = llama("modelopt")
    for i in range(2):
        kv_scales(c, f"model.layers.{i}")
    r = inspect_checkpoint(c.save(tmp_path / "m", LLAMA, ["lm_head"], kv="FP8"))
    assert r.errors == [] and r.warnings == [], [f.message for f in r.findings]
    assert r.format["kind"] == "modelopt-nvfp4" and r.format["producer"] == "modelopt"
    assert r.format["producer_version"] == "0.47.0" and r.format["tensor_format"] == "nvfp4"
    s = r.precision["summary"]
    assert s["by_precision"]["fp4"]["modules"] == 14 and s["by_precision"]["bf16"]["modules"] == 2
    fp4 = s["by_precision"]["fp4"]
    assert 4.5 <= 8 * fp4["bytes"] / fp4["params"] < 4.8  # 4 + 8/16 bits, plus per-tensor scales
    assert r.stats["tensor_bytes_read"] == 0 and r.stats["files"] == 2


def test_clean_compressed_tensors_has_no_errors(tmp_path):
    r = inspect_checkpoint(llama("ct").save(tmp_path / "c", LLAMA, ["lm_head"]))
    assert r.errors == [] and r.warnings == [], [f.message for f in r.findings]
    assert r.format["kind"] == "compressed-tensors-nvfp4"
    assert r.format["tensor_conventions"] == ["compressed-tensors"]


def test_clean_qwen3_5_with_regex_ignore_has_no_errors(tmp_path):
    c = Ckpt("ct")
    c.common("model.language_model")
    c.gdn("model.language_model.layers.0")
    c.attn("model.language_model.layers.1")
    for i in range(2):
        c.mlp(f"model.language_model.layers.{i}")
    r = inspect_checkpoint(c.save(tmp_path / "q", QWEN3_5, ["lm_head", "re:.*linear_attn.*"]))
    assert r.errors == [], [f.message for f in r.findings]
    assert r.model["families"][0] == "gdn"


# ----------------------------------------------------------------------------- header findings
def test_gdn_linear_attn_in_fp4_is_an_error(tmp_path):
    c = Ckpt("modelopt")
    c.common("model.language_model")
    c.gdn("model.language_model.layers.0", kind="fp4")
    c.attn("model.language_model.layers.1")
    r = inspect_checkpoint(c.save(tmp_path / "g", QWEN3_5, ["lm_head"]))
    f = next(f for f in r.findings if f.code == "gdn-in-fp4")
    assert f.severity == "error" and len(f.modules) == 5
    assert all(".linear_attn." in m for m in f.modules) and "recurrent state" in f.why


def test_router_and_lm_head_quantized_but_excluded(tmp_path):
    c = Ckpt("modelopt")
    c.common(lm_head="fp4")
    for i in range(2):
        c.attn(f"model.layers.{i}")
        c.experts(f"model.layers.{i}", router="fp4")
    r = inspect_checkpoint(c.save(tmp_path / "r", QWEN3_MOE, ["lm_head", "*.mlp.gate"]))
    f = next(f for f in r.findings if f.code == "excluded-but-quantized")
    assert set(f.modules) == {"lm_head", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"}
    assert "45102" in f.source
    assert {"router-in-fp4", "head-in-fp4", "excluded-but-quantized"} <= errors(r)


def test_bf16_linear_not_declared(tmp_path):
    c = llama("modelopt")
    c.drop("model.layers.1.mlp.down_proj").bf16("model.layers.1.mlp.down_proj", 32, 64)
    r = inspect_checkpoint(c.save(tmp_path / "b", LLAMA, ["lm_head"]))
    f = next(f for f in r.errors if f.code == "undeclared-bf16")
    assert f.modules == ["model.layers.1.mlp.down_proj"] and "load it as FP4" in f.message
    assert errors(r) == {"undeclared-bf16"}


def _qwen3_5_gdn(tmp_path, ignore):
    c = Ckpt("ct")
    c.common("model.language_model")
    c.gdn("model.language_model.layers.0")
    c.attn("model.language_model.layers.1")
    return inspect_checkpoint(c.save(tmp_path / "s", QWEN3_5, ["lm_head"] + ignore))


SPLIT = [f"model.language_model.layers.0.linear_attn.{n}" for n in ("in_proj_qkv", "in_proj_z", "in_proj_b",
                                                                      "in_proj_a", "out_proj")]


def test_vllm_40252_split_gdn_names_fine_on_0_32_warned_for_older(tmp_path):
    """vLLM 0.32's Qwen3.5 classes expand the fused GDN modules to the split names (issue 12 case 8):
    it loads; vLLM before 0.32 matched the fused name only, so that stays a warning."""
    r = _qwen3_5_gdn(tmp_path, SPLIT)
    assert errors(r) == set()
    f = next(f for f in r.warnings if f.code == "engine-name-uncovered")
    assert f.modules == ["language_model.model.layers.0.linear_attn.in_proj_ba",
                         "language_model.model.layers.0.linear_attn.in_proj_qkvz"]
    assert "before 0.32" in f.message


def test_regex_anchored_at_checkpoint_prefix_misses_vllm_names(tmp_path):
    """compressed-tensors `re:` entries are not renamed (issue 12 case 1): vLLM matches them against
    `language_model.model.*`, so a regex written for `model.language_model.*` covers nothing."""
    r = _qwen3_5_gdn(tmp_path, ["re:model\\.language_model\\..*linear_attn.*"])
    f = next(f for f in r.errors if f.code == "engine-name-uncovered")
    assert "language_model.model.layers.0.linear_attn.in_proj_qkvz" in f.modules
    assert "vLLM 0.32" in f.message


def test_config_json_list_is_the_one_vllm_reads(tmp_path):
    """Issue 12 case 7: ModelOpt metadata whose config.json list (`ignore`) lacks what
    hf_quant_config.json's exclude_modules has: vLLM 0.32 reads config.json."""
    c = llama("modelopt")
    c.drop("model.layers.1.mlp.down_proj").bf16("model.layers.1.mlp.down_proj", 32, 64)
    path = c.save(tmp_path / "d", LLAMA, ["lm_head", "model.layers.1.mlp.down_proj"])
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["ignore"] = ["lm_head"]
    (path / "config.json").write_text(json.dumps(cfg))
    r = inspect_checkpoint(path)
    f = next(f for f in r.errors if f.code == "metadata-files-disagree")
    assert f.modules == ["model.layers.1.mlp.down_proj"] and "config.json" in f.message


def test_fused_module_parts_disagree(tmp_path):
    c = llama("modelopt")
    c.drop("model.layers.0.self_attn.k_proj").bf16("model.layers.0.self_attn.k_proj", 16, 32)
    r = inspect_checkpoint(c.save(tmp_path / "f", LLAMA, ["lm_head", "model.layers.0.self_attn.k_proj"]))
    f = next(f for f in r.errors if f.code == "fused-parts-disagree")
    assert f.modules == ["model.layers.0.self_attn.qkv_proj"] and "some but not all shards" in f.message


def test_experts_of_one_layer_disagree(tmp_path):
    c = Ckpt("ct")
    c.common()
    for i in range(2):
        c.attn(f"model.layers.{i}")
        c.experts(f"model.layers.{i}")
    c.drop("model.layers.1.mlp.experts.2.down_proj").bf16("model.layers.1.mlp.experts.2.down_proj")
    r = inspect_checkpoint(c.save(tmp_path / "e", QWEN3_MOE, ["lm_head", "re:.*mlp\\.gate$",
                                                             "model.layers.1.mlp.experts.2.down_proj"]))
    assert errors(r) == {"fused-parts-disagree"}
    assert next(f for f in r.errors).modules == ["model.layers.1.mlp.experts"]


def test_missing_input_scale(tmp_path):
    c = llama("modelopt")
    del c.t["model.layers.0.mlp.up_proj.input_scale"]
    r = inspect_checkpoint(c.save(tmp_path / "i", LLAMA, ["lm_head"]))
    f = next(f for f in r.errors if f.code == "missing-input-scale")
    assert f.modules == ["model.layers.0.mlp.up_proj"]


def test_fp8_kv_cache_declared_without_k_v_scales(tmp_path):
    for fmt in ("modelopt", "ct"):
        r = inspect_checkpoint(llama(fmt).save(tmp_path / fmt, LLAMA, ["lm_head"], kv="FP8"))
        f = next(f for f in r.errors if f.code == "missing-kv-scales")
        assert f.modules == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
        assert r.hardware["kv_bytes_per_element"] == 1.0


def test_nvfp4_metadata_over_fp8_tensors(tmp_path):
    c = Ckpt("modelopt")
    c.common()
    for i in range(2):
        c.attn(f"model.layers.{i}", kind="fp8")
        c.mlp(f"model.layers.{i}", kind="fp8")
    r = inspect_checkpoint(c.save(tmp_path / "x", LLAMA, ["lm_head"]))
    f = next(f for f in r.errors if f.code == "nvfp4-is-fp8")
    assert "868" in f.source and "bits/param" in f.message
    assert r.format["tensor_format"] == "fp8"


def test_scale_too_small_and_stale_entry(tmp_path):
    c = llama("modelopt")
    c.fp4("model.layers.0.mlp.down_proj", 32, 64, scale_blocks=2)  # 64 inputs need 4 blocks of 16
    r = inspect_checkpoint(c.save(tmp_path / "w", LLAMA, ["lm_head", "model.layers.9.mlp.gate"]))
    assert next(f for f in r.errors if f.code == "scale-shape").modules == ["model.layers.0.mlp.down_proj"]
    assert next(f for f in r.warnings if f.code == "unmatched-entry").modules == ["model.layers.9.mlp.gate"]


# ----------------------------------------------------------------------------- --deep
def test_deep_finds_zero_k_projection(tmp_path):
    c = llama("modelopt")
    c.drop("model.layers.0.self_attn").attn("model.layers.0", kind="bf16")
    c.bf16("model.layers.0.self_attn.k_proj", 16, 32, zero=True)
    path = c.save(tmp_path / "z", LLAMA, ["lm_head", "model.layers.0.self_attn*"])
    assert inspect_checkpoint(path).errors == []  # headers cannot see it
    r = inspect_checkpoint(path, deep=True)
    f = next(f for f in r.errors if f.code == "zero-weight")
    assert f.modules == ["model.layers.0.self_attn.k_proj"] and "15866" in f.source
    assert r.stats["tensor_bytes_read"] > 0


def test_deep_finds_nan_in_scale_and_zero_rows(tmp_path):
    c = llama("ct")
    c.t["model.layers.1.mlp.up_proj.weight_scale"][3, 1] = float("nan")
    c.t["model.layers.0.mlp.gate_proj.weight_packed"][5] = 0x80  # one row of -0.0
    r = inspect_checkpoint(c.save(tmp_path / "n", LLAMA, ["lm_head"]), deep=True)
    assert next(f for f in r.errors if f.code == "scale-not-finite").modules == ["model.layers.1.mlp.up_proj"]
    z = next(f for f in r.warnings if f.code == "zero-rows")
    assert z.modules == ["model.layers.0.mlp.gate_proj"] and "1 of 64 rows" in z.message


# ----------------------------------------------------------------------------- no tensor bytes without --deep
def _truncate_data(path: Path) -> None:
    for f in path.glob("*.safetensors"):
        raw = f.read_bytes()
        f.write_bytes(raw[: 8 + int.from_bytes(raw[:8], "little")])  # keep the header, drop every tensor byte


def test_no_tensor_bytes_read_without_deep(tmp_path):
    c = llama("modelopt")
    c.drop("model.layers.1.mlp.down_proj").bf16("model.layers.1.mlp.down_proj", 32, 64)
    path = c.save(tmp_path / "t", LLAMA, ["lm_head"])
    before = inspect_checkpoint(path).to_dict()
    _truncate_data(path)
    after = inspect_checkpoint(path).to_dict()
    assert after["findings"] == before["findings"] and after["precision"] == before["precision"]
    assert after["hardware"] == before["hardware"] and after["stats"]["tensor_bytes_read"] == 0
    with pytest.raises(Exception):
        inspect_checkpoint(path, deep=True)  # the data is really gone: any read of it fails


# ----------------------------------------------------------------------------- hardware fit
def test_hardware_fit_moe_counts_active_experts_only(tmp_path):
    c = Ckpt("modelopt")
    c.common()
    for i in range(2):
        c.attn(f"model.layers.{i}")
        c.experts(f"model.layers.{i}")
    r = inspect_checkpoint(c.save(tmp_path / "moe", QWEN3_MOE, ["lm_head", "*.mlp.gate"]))
    assert r.errors == []
    nbytes = {n: t.numel() * t.element_size() for n, t in c.t.items()}
    experts = sum(b for n, b in nbytes.items() if ".experts." in n)
    embed = nbytes["model.embed_tokens.weight"]
    hw = r.hardware
    assert hw["weights_bytes"] == sum(nbytes.values())
    assert hw["active_bytes_per_token"] == sum(nbytes.values()) - embed - experts + experts * 2 // 4
    assert hw["moe"]["experts_per_token"] == 2 and hw["moe"]["num_experts"] == 4
    spark = next(m for m in hw["machines"] if m["name"] == "DGX Spark")
    assert spark["decode_ceiling_tok_s"] == round(273e9 / hw["active_bytes_per_token"], 1)
    assert spark["fits"] == "yes" and hw["kv_bytes_per_token"] == 2 * 2 * 1 * 16 * 2
    assert {m["name"] for m in hw["machines"]} == {"DGX Spark", "RTX PRO 6000 Blackwell", "B200"}


# ----------------------------------------------------------------------------- CLI
def test_cli_json_shape_and_exit_codes(tmp_path, capsys):
    clean = llama("ct").save(tmp_path / "clean", LLAMA, ["lm_head"])
    assert main(["inspect", str(clean), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["schema"] == "quantkit.inspect/1" and d["counts"] == {"error": 0, "warning": 0, "info": 0}
    assert set(d) >= {"source", "format", "model", "precision", "findings", "hardware", "stats"}
    c = llama("ct")
    c.drop("model.layers.1.mlp.down_proj").bf16("model.layers.1.mlp.down_proj", 32, 64)
    bad = c.save(tmp_path / "bad", LLAMA, ["lm_head"])
    assert main(["inspect", str(bad), "--json"]) == 1
    f = json.loads(capsys.readouterr().out)["findings"][0]
    assert set(f) == {"severity", "code", "message", "count", "modules", "modules_folded", "why", "fix", "source"}
    assert f["severity"] == "error" and f["fix"]
    stale = llama("ct").save(tmp_path / "stale", LLAMA, ["lm_head", "model.layers.0.mlp.gate"])
    assert main(["inspect", str(stale)]) == 0
    out = capsys.readouterr().out
    assert "unmatched-entry" in out and "DGX Spark" in out
    assert main(["inspect", str(stale), "--fail-on", "warning"]) == 1
    capsys.readouterr()
    assert main(["inspect", str(stale), "--fail-on", "nope"]) == 3


def test_cli_missing_or_not_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint not found") and "->" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 3
    assert "not a safetensors checkpoint" in capsys.readouterr().err
    with pytest.raises(ModelSourceError):
        inspect_checkpoint(str(tmp_path / "empty"))


def test_hub_source_reads_headers_only(tmp_path, monkeypatch):
    """The Hub path, offline: get_safetensors_metadata and hf_hub_download replaced by local files."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.utils._safetensors import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    from quantkit.checkpoint.headers import read_header

    local = llama("ct").save(tmp_path / "hub", LLAMA, ["lm_head"])
    files = {}
    for f in sorted(local.glob("*.safetensors")):
        tensors, meta = read_header(f)
        files[f.name] = SafetensorsFileMetadata(meta, {n: TensorInfo(t.dtype, list(t.shape), t.offsets)
                                                       for n, t in tensors.items()})
    repo = SafetensorsRepoMetadata(None, True, {n: fn for fn, m in files.items() for n in m.tensors}, files)

    def download(repo_id, filename, revision=None):
        if not (local / filename).is_file():
            raise EntryNotFoundError(filename)
        return str(local / filename)

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", lambda repo_id, revision=None: repo)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    r = inspect_checkpoint("Org/Model-NVFP4")
    assert r.location == "hub" and r.errors == [] and r.format["kind"] == "compressed-tensors-nvfp4"
    assert r.precision == inspect_checkpoint(local).precision
    with pytest.raises(ModelSourceError, match="needs the checkpoint on disk"):
        inspect_checkpoint("Org/Model-NVFP4", deep=True)


def test_matcher_agrees_with_declared_unquantized():
    names = ["lm_head", "model.layers.0.mlp.gate", "model.layers.3.linear_attn.in_proj_qkvz",
             "model.layers.1.self_attn.q_proj", "backbone.layers.2.mixer.in_proj"]
    for style, entries in (("modelopt", ["lm_head", "*.mlp.gate", "*linear_attn*", "backbone.layers.[0-2].*"]),
                           ("ct", ["lm_head", "re:.*mlp\\.gate$", "re:.*linear_attn.*",
                                   "model.layers.1.self_attn.q_proj"])):
        info = FormatInfo("modelopt-nvfp4" if style == "modelopt" else "compressed-tensors-nvfp4",
                          "modelopt" if style == "modelopt" else "compressed-tensors", unquantized_entries=entries)
        match = unquantized_matcher(info)
        assert [match(n) for n in names] == [declared_unquantized(info, n) for n in names]


def test_every_code_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "inspect.md").read_text()
    from quantkit.inspect.checks import FAMILY_CODES

    for code in list(CATALOGUE) + list(FAMILY_CODES.values()):
        assert f"`{code}`" in doc, code


def test_cli_help_has_examples(capsys):
    assert main(["inspect", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples" in out and "--deep" in out and "--fail-on" in out


def test_tp_split_finds_modules_that_cannot_shard(tmp_path):
    """`inspect --tp N`: a row-parallel FP4 weight with 1856 inputs shards into 4 ranks (464 = 29 x 16)
    but not 8 (232 per rank: the Nemotron-3-Nano TP8 case); column-parallel rows must divide."""
    import torch
    from safetensors.torch import save_file

    from quantkit.checkpoint.formats import get_format, stored_modules
    from quantkit.checkpoint.headers import checkpoint_tensors
    from quantkit.inspect.tp import tp_findings

    mo = get_format("modelopt")

    def fp4(rows, cols):
        return {"weight": torch.zeros(rows, cols // 2, dtype=torch.uint8),
                "weight_scale": torch.ones(rows, cols // 16).to(torch.float8_e4m3fn),
                "weight_scale_2": torch.ones(()), "input_scale": torch.ones(())}

    tensors = {}
    for name, (rows, cols) in {"model.layers.0.mixer.out_proj": (64, 1856),
                               "model.layers.0.mixer.in_proj": (3712, 64),
                               "model.layers.0.mlp.up_proj": (100, 64)}.items():
        tensors.update({f"{name}.{k}": v for k, v in fp4(rows, cols).items()})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    info = checkpoint_tensors(tmp_path)
    mods = stored_modules(info)
    assert mo.name == "modelopt" and all(m.precision == "fp4" for m in mods.values())
    assert tp_findings(mods, info, 1) == []
    assert tp_findings(mods, info, 4) == []  # 464 inputs per rank, 928 and 25 rows
    eight = tp_findings(mods, info, 8)
    assert [f.code for f in eight] == ["tp-split"] and eight[0].severity == "error"
    assert eight[0].modules == ["model.layers.0.mixer.out_proj", "model.layers.0.mlp.up_proj"]
    assert "232 input values per rank" in eight[0].message
    assert len(tp_findings(mods, info, 3)[0].modules) == 3


# ----------------------------------------------------------------------------- --fix
def test_fix_covers_vllm_names_into_a_new_directory(tmp_path, capsys):
    """The regex anchored at the checkpoint prefix (vLLM never renames regexes): --fix adds the names
    vLLM looks up, links the weights, leaves the source alone, and the result inspects clean."""
    c = Ckpt("ct")
    c.common("model.language_model")
    c.gdn("model.language_model.layers.0")
    c.attn("model.language_model.layers.1")
    src = c.save(tmp_path / "src", QWEN3_5, ["lm_head", "re:model\\.language_model\\..*linear_attn.*"])
    before = (src / "config.json").read_text()
    assert "engine-name-uncovered" in errors(inspect_checkpoint(src))
    code = main(["inspect", str(src), "--fix", "--out", str(tmp_path / "fixed"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["report"]["counts"]["error"] == 0
    assert "model.language_model.layers.0.linear_attn.in_proj_qkvz" in out["fix"]["added"]
    assert (src / "config.json").read_text() == before  # the source is untouched
    shard = next(src.glob("*.safetensors"))
    assert (tmp_path / "fixed" / shard.name).stat().st_ino == shard.stat().st_ino  # hard-linked, not copied
    assert errors(inspect_checkpoint(tmp_path / "fixed")) == set()


def test_fix_in_place_syncs_modelopt_files_and_keeps_backups(tmp_path):
    c = llama("modelopt")
    c.drop("model.layers.1.mlp.down_proj").bf16("model.layers.1.mlp.down_proj", 32, 64)
    path = c.save(tmp_path / "d", LLAMA, ["lm_head", "model.layers.1.mlp.down_proj"])
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["ignore"] = ["lm_head"]  # config.json lost the entry vLLM needs
    (path / "config.json").write_text(json.dumps(cfg))
    assert main(["inspect", str(path), "--fix", "--in-place"]) == 0
    assert json.loads((path / "config.json.bak").read_text())["quantization_config"]["ignore"] == ["lm_head"]
    fixed = json.loads((path / "config.json").read_text())["quantization_config"]["ignore"]
    hfq = json.loads((path / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
    assert fixed == hfq == ["lm_head", "model.layers.1.mlp.down_proj"]
    assert errors(inspect_checkpoint(path)) == set()


def test_fix_removes_literal_entries_naming_packed_modules(tmp_path):
    c = llama("ct")
    path = c.save(tmp_path / "w", LLAMA, ["lm_head", "model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj",
                                          "model.layers.0.mlp.gate_proj"])
    assert "excluded-but-quantized" in errors(inspect_checkpoint(path))
    from quantkit.inspect.fix import fix_checkpoint

    res = fix_checkpoint(path, tmp_path / "f")
    assert sorted(res.removed) == ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj",
                                   "model.layers.0.mlp.up_proj"]
    assert res.report.errors == [] and res.unfixable == []


def test_fix_reports_what_metadata_cannot_fix(tmp_path):
    """Parts of one fused module stored in different precisions need new tensors: still an error."""
    c = llama("modelopt")
    c.drop("model.layers.0.self_attn.k_proj").bf16("model.layers.0.self_attn.k_proj", 16, 32)
    path = c.save(tmp_path / "m", LLAMA, ["lm_head", "model.layers.0.self_attn.k_proj"])
    assert main(["inspect", str(path), "--fix", "--out", str(tmp_path / "f")]) == 1
    from quantkit.inspect.fix import fix_checkpoint

    res = fix_checkpoint(path, tmp_path / "f2")
    assert any("qkv_proj" in u and "differ in precision" in u for u in res.unfixable)


def test_fix_bad_input(tmp_path):
    c = llama("ct")
    path = c.save(tmp_path / "x", LLAMA, ["lm_head"])
    assert main(["inspect", str(path), "--fix"]) == 3  # neither --out nor --in-place
    assert main(["inspect", str(path), "--fix", "--out", str(tmp_path / "o"), "--in-place"]) == 3
    assert main(["inspect", "org/model", "--fix", "--out", str(tmp_path / "o")]) == 3  # Hub ids: download first
    assert main(["inspect", str(path), "--out", str(tmp_path / "o")]) == 3  # --out without --fix
    assert not (tmp_path / "o").exists()


def test_modelopt_lists_differing_harmlessly_for_vllm_warn_for_other_engines(tmp_path):
    c = llama("modelopt")
    path = c.save(tmp_path / "h", LLAMA, ["lm_head"])
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["ignore"] = ["lm_head", "model.layers.9.mlp.down_proj"]
    (path / "config.json").write_text(json.dumps(cfg))
    r = inspect_checkpoint(path)
    f = next(f for f in r.warnings if f.code == "metadata-files-disagree")
    assert "SGLang" in f.message and f.modules == ["model.layers.9.mlp.down_proj"]
    assert "metadata-files-disagree" not in errors(r)
