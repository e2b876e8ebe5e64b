"""publish: only a checkpoint validated at its current content hash ships; the card is honest;
dir: is atomic; hf: sends one commit (checked without network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from quantkit.cli.main import main
from quantkit.errors import PublishError
from quantkit.publish import publish
from test_validate_judge import good_answer
from tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_variants(tmp_path_factory) -> dict[str, Path]:
    from quantkit.quantize import QuantizeOptions, quantize
    from quantkit.recipe import resolve_recipe

    root = tmp_path_factory.mktemp("pub")
    save_tiny_checkpoint("llama", root / "src")
    (root / "r.yaml").write_text(f"name: tiny\nmodel:\n  source: {root / 'src'}\ncalibration:\n  samples: 4\n"
                                 "  seq_len: 64\npublish:\n  license: apache-2.0\n")
    res = quantize(resolve_recipe(str(root / "r.yaml")),
                   QuantizeOptions(formats=["modelopt", "compressed-tensors"], out=root / "q"))
    return {r.format: r.path for r in res}


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))


def _validate(ckpt: Path, tmp_path: Path) -> None:
    with FakeOpenAI(good_answer) as srv:
        assert main(["validate", str(ckpt), "--engine", "endpoint", "--url", srv.url,
                     "--report-dir", str(tmp_path / "rep")]) == 0


@pytest.mark.parametrize("fmt", ["modelopt", "compressed-tensors"])
def test_validated_checkpoint_publishes_to_dir_with_card(tiny_variants, tmp_path, registry, fmt):
    ckpt = tiny_variants[fmt]
    _validate(ckpt, tmp_path)
    dest = tmp_path / "shipped"
    assert main(["publish", str(ckpt), "--to", f"dir:{dest}"]) == 0
    for f in ("README.md", "config.json", "model.safetensors", "quantkit.json", "quantkit-recipe.yaml",
              "quantkit-validation.json", "tokenizer.json"):
        assert (dest / f).is_file(), f
    card = (dest / "README.md").read_text()
    from huggingface_hub import ModelCard

    data = ModelCard.load(dest / "README.md").data.to_dict()
    assert data["base_model_relation"] == "quantized" and data["license"] == "apache-2.0"
    assert "nvfp4" in data["tags"] and ("modelopt" if fmt == "modelopt" else "compressed-tensors") in data["tags"]
    if fmt == "modelopt":
        assert "--quantization modelopt" in card
    else:
        assert "--quantization" not in card
    assert "Verdict **PASS**" in card and "lm_head" in card and "NOT passed" not in card
    assert json.loads((dest / "quantkit-validation.json").read_text())["verdicts"][0]["verdict"] == "pass"
    assert not list(tmp_path.glob(".shipped.partial-*"))


def test_unvalidated_or_modified_checkpoint_is_refused(tiny_variants, tmp_path, registry, capsys):
    import shutil

    ckpt = tmp_path / "ct"
    shutil.copytree(tiny_variants["compressed-tensors"], ckpt)
    assert main(["publish", str(ckpt), "--to", f"dir:{tmp_path / 'x'}"]) == 1
    assert "no passing validation" in capsys.readouterr().err
    _validate(ckpt, tmp_path)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    gen["temperature"] = 0.01  # a change after validation
    (ckpt / "generation_config.json").write_text(json.dumps(gen))
    with pytest.raises(PublishError, match="current content hash"):
        publish(ckpt, f"dir:{tmp_path / 'y'}")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_force_is_loud_and_recorded(tiny_variants, tmp_path, registry, capsys):
    dest = tmp_path / "forced"
    assert main(["publish", str(tiny_variants["modelopt"]), "--to", f"dir:{dest}", "--force"]) == 0
    assert "WITHOUT a passing validation" in capsys.readouterr().out
    assert "has NOT passed quantkit validation" in (dest / "README.md").read_text()


def test_wrong_metadata_is_refused(tiny_variants, tmp_path, registry):
    import shutil

    ckpt = tmp_path / "mo"
    shutil.copytree(tiny_variants["modelopt"], ckpt)
    (ckpt / "hf_quant_config.json").unlink()
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "fp8"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PublishError):
        publish(ckpt, f"dir:{tmp_path / 'z'}", force=True)


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_commit(self, repo_id, operations, **kw):
        self.calls.append(("create_commit", repo_id, [op.path_in_repo for op in operations], kw))
        self.readme = next(op.path_or_fileobj for op in operations if op.path_in_repo == "README.md")
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_hf_target_sends_one_private_commit(tiny_variants, tmp_path, registry, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_printed")
    ckpt = tiny_variants["compressed-tensors"]
    _validate(ckpt, tmp_path)
    api = FakeApi()
    res = publish(ckpt, "hf:me/Tiny-NVFP4", api=api)
    (c1, repo, kw1), (c2, repo2, paths, kw2) = api.calls
    assert c1 == "create_repo" and kw1 == {"private": True, "exist_ok": True}
    assert c2 == "create_commit" and repo2 == "me/Tiny-NVFP4"
    assert {"README.md", "model.safetensors", "config.json", "quantkit.json", "quantkit-recipe.yaml",
            "quantkit-validation.json"} <= set(paths)
    assert res.url.endswith("/commit/abc")
    readme = api.readme if isinstance(api.readme, bytes) else api.readme.read()
    assert b"me/Tiny-NVFP4" in readme and b"hf_secret" not in readme


def test_bad_target_is_usage_error(tiny_variants, capsys):
    assert main(["publish", str(tiny_variants["modelopt"]), "--to", "s3://bucket"]) == 3
    assert "hf:ORG/NAME or dir:PATH" in capsys.readouterr().err
