"""The byte paths under `--format compressed-tensors` (bench/formats.md, "where the wall time
went"): the streamed safetensors writer ModelOpt's export goes through (`headers.save_torch_file`,
same bytes as safetensors' `save_file`), the conversion's streamed copy (same bytes and hashes as
a whole-file rewrite), and how quantkit imports ModelOpt (in a background thread, the GNN plugin
skipped, errors still reported as BackendError)."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantkit.checkpoint import headers
from quantkit.checkpoint.headers import read_header, rewrite_file, save_torch_file
from quantkit.checkpoint.manifest import sha256_file


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every dtype an NVFP4 export holds (and more), 0-d and empty tensors, names out of order."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.1.mlp.down_proj.weight": torch.randint(0, 256, (8, 16), dtype=torch.uint8, generator=g),
        "model.layers.1.mlp.down_proj.weight_scale": (torch.rand(8, 2, generator=g) * 400).to(torch.float8_e4m3fn),
        "model.layers.1.mlp.down_proj.weight_scale_2": torch.rand((), generator=g),
        "model.layers.1.mlp.down_proj.input_scale": torch.rand((), generator=g),
        "lm_head.weight": torch.randn(7, 5, generator=g).to(torch.bfloat16),
        "model.embed_tokens.weight": torch.randn(9, 4, generator=g).to(torch.bfloat16),
        "a.half": torch.randn(3, generator=g).to(torch.float16),
        "b.double": torch.randn(2, generator=g, dtype=torch.float64),
        "c.long": torch.arange(5),
        "d.int": torch.arange(3, dtype=torch.int32),
        "e.bool": torch.tensor([True, False, True]),
        "f.e5m2": torch.randn(4, generator=g).to(torch.float8_e5m2),
        "g.empty": torch.empty(0, 4),
    }


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_save_torch_file_writes_the_bytes_safetensors_writes(tmp_path, metadata):
    t = _tensors()
    save_file(t, tmp_path / "ref.safetensors", metadata=metadata)
    save_torch_file(t, tmp_path / "ours.safetensors", metadata=metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_save_torch_file_several_metadata_keys_in_an_order_safetensors_writes(tmp_path):
    # safetensors keeps metadata in a hash map: its own key order varies from call to call
    t, meta = _tensors(1), {"format": "pt", "b": "c", "x": "y"}
    save_file(t, tmp_path / "ref.safetensors", metadata=meta)
    save_torch_file(t, tmp_path / "ours.safetensors", metadata=meta)
    ref, ours = (tmp_path / "ref.safetensors").read_bytes(), (tmp_path / "ours.safetensors").read_bytes()
    assert len(ours) == len(ref) and ours[-200:] == ref[-200:]
    h_ref, h_ours = _header(tmp_path / "ref.safetensors"), _header(tmp_path / "ours.safetensors")
    assert h_ours == h_ref and list(h_ours)[1:] == list(h_ref)[1:]
    loaded = load_file(tmp_path / "ours.safetensors")
    assert all(torch.equal(loaded[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)) for k, v in t.items())


def test_save_torch_file_through_the_staging_buffer(tmp_path, monkeypatch):
    """The device path (tensors copied into a pinned buffer that is written when full), run on
    host tensors with a 7-byte buffer: tensors split across flushes, flushes between tensors."""
    monkeypatch.setattr(headers, "_on_host", lambda t: False)
    monkeypatch.setattr(headers, "_pinned", lambda n: torch.empty(n, dtype=torch.uint8))
    monkeypatch.setattr(headers, "_STAGE", 7)
    t = {k: v.requires_grad_() if v.is_floating_point() and v.element_size() > 1 else v for k, v in _tensors(2).items()}
    save_file({k: v.detach() for k, v in t.items()}, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    save_torch_file(t, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


@pytest.mark.gpu
def test_save_torch_file_from_the_gpu(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setattr(headers, "_STAGE", 1000)
    t = {k: v.cuda() for k, v in _tensors(3).items()}
    t["big"] = torch.randn(3000, device="cuda").to(torch.bfloat16)  # 6000 bytes: six flushes
    t["host"] = torch.randn(5)  # host and device tensors in one file
    save_file(t, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    save_torch_file(t, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_save_torch_file_leaves_what_it_does_not_write_to_safetensors(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    with pytest.raises(ValueError, match="non contiguous"):  # safetensors' own error
        save_torch_file({"t": base.reshape(3, 4).t()}, tmp_path / "a.safetensors")
    with pytest.raises(RuntimeError, match="share memory"):
        save_torch_file({"a": base, "b": base}, tmp_path / "b.safetensors")
    # disjoint views of one storage: safetensors writes them, and so do we (through it)
    parts = {"lo": base[:6], "hi": base[6:]}
    save_torch_file(parts, tmp_path / "c.safetensors")
    save_file(parts, tmp_path / "d.safetensors")
    assert (tmp_path / "c.safetensors").read_bytes() == (tmp_path / "d.safetensors").read_bytes()
    # a name JSON escapes differently in Python and Rust: the stand-in check sends it to safetensors
    odd = {"naïve.weight": torch.ones(2)}
    save_torch_file(odd, tmp_path / "e.safetensors")
    save_file(odd, tmp_path / "f.safetensors")
    assert (tmp_path / "e.safetensors").read_bytes() == (tmp_path / "f.safetensors").read_bytes()


def test_modelopt_export_writes_through_save_torch_file_only_while_exporting(tmp_path):
    import transformers.modeling_utils as mu

    from quantkit.backends.modelopt import _streamed_shard_writes

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import tiny_model

    model = tiny_model("llama")
    original = mu.safe_save_file
    model.save_pretrained(tmp_path / "ref")
    with _streamed_shard_writes():
        assert mu.safe_save_file is save_torch_file
        model.save_pretrained(tmp_path / "ours")
    assert mu.safe_save_file is original
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "ours" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f


def _plain_rewrite(src: Path, names: dict, values: dict) -> bytes:
    """What rewrite_file must produce, the obvious way: the whole file in memory."""
    tensors, meta = read_header(src)
    header = {"__metadata__": {**meta, "format": "pt"}}
    for old, t in sorted(tensors.items(), key=lambda kv: kv[1].offsets[0]):
        header[names.get(old, old)] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.offsets)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    data = bytearray(src.read_bytes()[headers._data_start(src):])
    for name, v in values.items():
        lo, hi = header[name]["data_offsets"]
        data[lo:hi] = v
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


def test_conversion_stream_gives_the_bytes_and_hashes_of_a_plain_copy(tmp_path, monkeypatch):
    """Chunks of 64 bytes (the hashers a few chunks behind), patches across chunk borders: the
    file a whole-file rewrite gives, and both remembered sha256 are the real ones."""
    monkeypatch.setattr(headers, "_CHUNK", 64)
    g = torch.Generator().manual_seed(4)
    t = {f"m{i}.weight": torch.randint(0, 256, (int(n),), dtype=torch.uint8, generator=g)
         for i, n in enumerate(torch.randint(1, 200, (40,), generator=g))}
    t.update({f"m{i}.weight_scale_2": torch.rand(()) for i in range(40)})
    src = tmp_path / "src.safetensors"
    save_file(t, src)
    names = {f"m{i}.weight_scale_2": f"m{i}.weight_global_scale" for i in range(0, 40, 3)}
    values = {new: struct.pack("<f", 1.0 + i) for i, new in enumerate(names.values())}
    src_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    rewrite_file(src, tmp_path / "dst.safetensors", names, {}, values, {"format": "pt"}, hash_source=True)
    out = (tmp_path / "dst.safetensors").read_bytes()
    assert out == _plain_rewrite(src, names, values)
    assert sha256_file(tmp_path / "dst.safetensors") == hashlib.sha256(out).hexdigest()
    assert sha256_file(src) == src_sha


def test_modelopt_imports_in_the_background_and_reports_import_errors(monkeypatch):
    from quantkit.backends import modelopt as mo
    from quantkit.errors import BackendError

    monkeypatch.setattr(mo, "_imported", {})
    mtq, export = mo._modelopt()
    import modelopt.torch.quantization as real_mtq

    assert mtq is real_mtq and export.__name__ == "export_hf_checkpoint"
    assert mo._start_import() is mo._start_import()  # once per process

    def broken():
        raise ImportError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(mo, "_imported", {})
    monkeypatch.setattr(mo, "_import_modelopt", broken)
    mo.ModelOptBackend().preload()
    with pytest.raises(BackendError, match="not importable: libcudart"):
        mo._modelopt()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(BackendError, match="not installed"):
        mo.ModelOptBackend().check_available()


def test_skipped_plugin_packages_import_as_missing_only_inside_the_block(tmp_path, monkeypatch):
    from quantkit.backends.modelopt import _SKIPPED_PLUGINS, _skipping_plugins

    assert _SKIPPED_PLUGINS == ("torch_geometric",)
    pkg = tmp_path / "qk_fake_gnn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with _skipping_plugins(("qk_fake_gnn",)):
        with pytest.raises(ModuleNotFoundError):  # what ModelOpt's import_plugin takes as "not installed"
            import qk_fake_gnn  # noqa: F401
    import qk_fake_gnn  # noqa: F811

    assert qk_fake_gnn.LOADED
    with _skipping_plugins(("qk_fake_gnn",)):  # already imported: left alone
        import qk_fake_gnn  # noqa: F811
    monkeypatch.delitem(sys.modules, "qk_fake_gnn")


def test_torch_compile_is_lazy_only_while_modelopt_imports(monkeypatch):
    from quantkit.backends.modelopt import _lazy_torch_compile

    compiled = []

    def spy(model, **kwargs):  # stands for torch.compile: records what it compiles, with which arguments
        compiled.append((getattr(model, "__name__", type(model).__name__), kwargs))
        return (lambda *a, **k: ("compiled", model(*a, **k))) if callable(model) else model

    monkeypatch.setattr(torch, "compile", spy)

    def double(x):
        return x * 2

    with _lazy_torch_compile():
        assert torch.compile is not spy
        lazy = torch.compile(double, dynamic=True)
        decorated = torch.compile(dynamic=False)(double)
        torch.compile(torch.nn.Identity())  # modules go to torch.compile at once
        assert compiled == [("Identity", {})]
    assert torch.compile is spy
    assert lazy.__name__ == "double" and lazy.__wrapped__ is double
    assert lazy(3) == ("compiled", 6) and lazy(4) == ("compiled", 8) and decorated(5) == ("compiled", 10)
    assert compiled[1:] == [("double", {"dynamic": True}), ("double", {"dynamic": False})]  # once each, at first call


def test_modelopt_import_leaves_torchs_compiler_unimported():
    """The inductor import that ModelOpt's import-time decorators pulled in (2.3 s cold on the
    H200) is gone; a fresh interpreter, as `quantkit quantize` is."""
    import subprocess

    code = ("import sys, torch, transformers; import quantkit.backends.modelopt as m; mtq, ex = m._import_modelopt(); "
            "assert torch.compile.__module__ == 'torch', torch.compile; "
            "print('inductor' if 'torch._inductor.compile_fx' in sys.modules else 'no inductor', mtq.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["no", "inductor", "modelopt.torch.quantization"]


@pytest.mark.parametrize("env", [{}, {"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"},
                                 {"PYTORCH_ALLOC_CONF": "expandable_segments:False"}])
def test_expandable_segments_unless_the_user_configured_the_allocator(monkeypatch, env):
    from quantkit.quantize import context

    for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = []
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", seen.append)
    context.expandable_segments()
    assert seen == ([] if env else ["expandable_segments:True"])
