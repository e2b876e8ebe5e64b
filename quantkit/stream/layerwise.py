"""Memory-bounded quantization: one decoder layer in memory at a time, resumable.

For each layer i: read its tensors from the source shards (memory-mapped), build a one-layer
stand-in of the real model class whose inputs are the activations captured from layer i-1,
record the layer's BF16 outputs (the next layer's calibration inputs, as in a full-model pass),
let the backend quantize and export the stand-in with its own code, rename the exported layer
to i and write it as output shard i. Non-layer tensors (embeddings, final norm, lm_head, MTP)
are copied from the source, one shard each. Peak memory is about one layer per format plus the
activations, whatever the model size.

State lives in `.<out>.layerwise/` beside the output: finished shards, the activations for the
next layer and `state.json` (written last, atomically). A killed run resumes from the last
finished layer with `--resume`; a finished run moves its shards into the output and removes it."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from quantkit.calib_health import calibrating
from quantkit.checkpoint.formats import get_format
from quantkit.errors import PlanError, UsageError, VerificationError
from quantkit.stream.mini import build_stand_in, capture_outputs, stand_in_plan
from quantkit.stream.shards import ShardWriter, SourceShards
from quantkit.stream.stitch import Names, export_metadata, export_prefix, export_tensors, merge, rename

__all__ = ["LayerwiseRun", "LayerwiseResult", "work_dir", "embed_samples"]


def work_dir(base_out: Path) -> Path:
    return base_out.parent / f".{base_out.name}.layerwise"


@dataclass
class LayerwiseResult:
    """What a finished layer loop leaves, per format: the finished shards (`writers`), the
    quantization metadata merged over the layers, the layers' tensor prefix, the layers copied
    unquantized (`skipped`: no FP4 module in them) and, for an MoE, the calibration tokens each
    layer's router sent to each expert (`routing`: {"counts": {layer: [...]}, "widened": [...]},
    quantkit.calib_health's RouterTap, kept in state.json across a resume)."""
    writers: dict[str, ShardWriter]
    metadata: dict[str, dict]
    prefix: str
    skipped: dict[str, list[int]]
    routing: dict[str, dict] = field(default_factory=dict)


@dataclass
class _Loop:
    """The mutable state of one run of the loop."""
    src: SourceShards
    state: dict
    writers: dict[str, ShardWriter]
    device: str
    t: dict[str, float]


@dataclass
class LayerwiseRun:
    """One layer-by-layer quantization of `formats` into `work` (see module doc)."""

    local: Path
    config: Any
    tokenizer: Any
    plans: dict[str, Any]  # format -> full-model plan
    backends: dict[str, Any]
    calib: Any
    recipe: Any
    work: Path
    resume: bool = False
    overwrite: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0
    layers: int = 0

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({
            "source": str(self.local), "formats": sorted(self.plans), "scheme": self.recipe.scheme,
            "algorithm": {f: self.recipe.calibration.algorithm_for(b.name) for f, b in sorted(self.backends.items())},
            "kv_cache": self.recipe.kv_cache,
            "calib": self.calib.fingerprint,
            "kept": {f: p.kept_names() for f, p in sorted(self.plans.items())},
        }, sort_keys=True).encode())
        return "sha256:" + h.hexdigest()

    # ------------------------------------------------------------------ state
    def state(self) -> dict | None:
        """The saved state (layers done, merged metadata), or None before the first layer."""
        p = self.work / "state.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def _save_state(self, state: dict) -> None:
        tmp = self.work / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.work / "state.json")

    def _start(self, n_layers: int) -> dict:
        state = self.state()
        fp = self.fingerprint()
        if state and not self.resume and not self.overwrite:
            raise UsageError(f"an interrupted run left {state['layers_done']}/{state['layers']} layers at {self.work}",
                              hint="pass --resume to continue it, or --overwrite to start over")
        if state and self.resume and state["fingerprint"] != fp:
            raise UsageError(f"the saved state at {self.work} was made from a different model, recipe, plan "
                              "or calibration set", hint="pass --overwrite to start over")
        if state and self.resume:
            self.resumed_from = state["layers_done"]
            return state
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        return {"fingerprint": fp, "layers": n_layers, "layers_done": 0, "metadata": {}, "other_done": False}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.work.parent.mkdir(parents=True, exist_ok=True)
        lock = self.work.parent / f"{self.work.name}.lock"
        with open(lock, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another quantkit process is writing {self.work}",
                                  hint="wait for it to finish, or choose another --out") from None
            yield

    # ------------------------------------------------------------------ run
    def run(self, progress=None, info=None) -> LayerwiseResult:
        """Quantize every layer (see the module doc)."""
        with self._locked():
            return self._run(progress or (lambda *a: None), info or (lambda m: None))

    def _run(self, progress, info) -> LayerwiseResult:
        import torch

        src = SourceShards(self.local)
        self._check(src)
        n = self.layers = len(src.layers)
        groups = _other_groups(src)
        state = self._start(n)  # before the writers: a fresh start empties the work directory
        writers = {f: ShardWriter(self.work / get_format(f).dir_name, n + len(groups)) for f in self.plans}
        loop = _Loop(src, state, writers, "cuda" if torch.cuda.is_available() else "cpu",
                     {"load": 0.0, "calibrate": 0.0, "export": 0.0, "stitch": 0.0})
        self._copy_other(loop, groups)
        hidden = self._initial_hidden(loop, info)
        calib_i = _positions_calib(self.calib, [len(x) for x in self.calib.input_ids])
        norms = {k: v for k, v in src.read([o for o in src.other if "norm" in o]).items()}
        for i in range(loop.state["layers_done"], n):
            hidden = self._layer(loop, i, hidden, calib_i, norms)
            _save_hidden(self.work / "hidden.safetensors", hidden)
            loop.state["layers_done"] = i + 1
            self._save_state(loop.state)
            progress("layers", i + 1, n)
            if loop.device == "cuda":
                torch.cuda.empty_cache()
        self.timings = {k: round(v, 3) for k, v in loop.t.items()}
        state = loop.state
        if any(f not in state["metadata"] for f in self.plans):
            raise PlanError("no decoder layer has an FP4 module: nothing to quantize layer by layer",
                            hint="check the plan (`quantkit plan`)")
        return LayerwiseResult(writers, {f: state["metadata"][f] for f in self.plans}, src.prefix,
                               {f: state.get("skipped", {}).get(f, []) for f in self.plans},
                               {f: r for f, r in state.get("routing", {}).items() if f in self.plans})

    def _check(self, src: SourceShards) -> None:
        """Contiguous decoder layers, and nothing outside them planned in FP4."""
        if sorted(src.layers) != list(range(len(src.layers))):
            raise PlanError(f"{self.local}: decoder layer indices are not contiguous", hint="use --mode full")
        for plan in self.plans.values():
            outside = [d.module.name for d in plan.fp4 if not re.match(r"^(?:\w+\.)*layers\.\d+\.", d.module.name)]
            if outside:
                raise PlanError(f"memory-bounded mode quantizes decoder layers only; the plan puts {outside[0]} "
                                "in FP4", hint="exclude it (--exclude) or use --mode full")

    def _copy_other(self, loop: _Loop, groups: list[list[str]]) -> None:
        """Non-layer tensors (embeddings, final norm, lm_head, MTP) copied as they are, once."""
        if loop.state["other_done"]:
            return
        t0 = time.perf_counter()
        n = self.layers
        for k, names in enumerate(groups):
            tensors = loop.src.read(names)
            for w in loop.writers.values():
                w.write(n + k, tensors)
            del tensors
        loop.state["other_done"] = True
        self._save_state(loop.state)
        loop.t["load"] += time.perf_counter() - t0

    def _initial_hidden(self, loop: _Loop, info):
        """Layer 0's inputs (the embeddings of the calibration tokens), or the saved activations."""
        start = loop.state["layers_done"]
        if start == 0:
            return embed_samples(loop.src, self.config, self.calib.input_ids)
        from safetensors.torch import load_file

        info(f"resuming at layer {start}/{self.layers} ({self.work})")
        return load_file(str(self.work / "hidden.safetensors"))["hidden"]

    def _layer(self, loop: _Loop, i: int, hidden, calib_i: Any, norms: dict):
        """Quantize layer i for every format; return its BF16 outputs (the next layer's inputs)."""
        t0 = time.perf_counter()
        layer = loop.src.read_layer(i, as_index=0)
        loop.t["load"] += time.perf_counter() - t0
        nxt = None
        for j, fmt in enumerate(self.plans):
            tensors = layer if j == len(self.plans) - 1 else {k: v.clone() for k, v in layer.items()}
            model = build_stand_in(self.config, i, tensors, norms, hidden, loop.device)
            if nxt is None:
                t0 = time.perf_counter()
                nxt = capture_outputs(model, calib_i).to(hidden.dtype)
                loop.t["calibrate"] += time.perf_counter() - t0
            self._layer_format(loop, i, fmt, model, tensors, calib_i)
            del model
        return nxt

    def _layer_format(self, loop: _Loop, i: int, fmt: str, model: Any, tensors: dict, calib_i: Any) -> None:
        """One format's backend quantizes and exports the stand-in of layer i; written as shard i."""
        sub = stand_in_plan(self.plans[fmt], model, i)
        if not sub.fp4:  # nothing of this layer goes to FP4 (e.g. a Mamba layer): copied as it is,
            # and declared unquantized by a whole-layer entry when the metadata is written
            loop.writers[fmt].write(i, loop.src.rename_layer(tensors, 0, i))
            loop.state.setdefault("skipped", {}).setdefault(fmt, []).append(i)
            return
        backend, t = self.backends[fmt], loop.t
        in_full = re.compile(r"^(?:\w+\.)*?layers\.0\.")  # the stand-in's layer 0 -> the source's layer i
        with tempfile.TemporaryDirectory(dir=self.work, prefix=f"layer{i}-") as d:
            with calibrating(model, self.config, backend, self.recipe.calibration,
                             rename=lambda n: in_full.sub(f"{loop.src.prefix}.{i}.", n)) as health:
                res = backend.quantize(model, self.tokenizer, sub, calib_i, self.recipe.scheme, Path(d), progress=None,
                                       kv_cache=self.recipe.kv_cache,
                                       algorithm=self.recipe.calibration.algorithm_for(backend.name), moe=health.moe)
            if health.tap is not None:  # saved with the layer's state: a resumed run keeps the earlier layers'
                routing = loop.state.setdefault("routing", {}).setdefault(fmt, {"counts": {}, "widened": []})
                routing["counts"].update(health.tap.counts)
                routing["widened"] = sorted(set(routing["widened"]) | health.tap.widened)
            t["calibrate"] += res.timings.get("calibrate", 0.0)
            t["export"] += res.timings.get("export", 0.0)
            t0 = time.perf_counter()
            names = Names(export_prefix(Path(d)), loop.src.prefix, i)
            out = export_tensors(Path(d), names)
            if not out:
                raise VerificationError(f"the {fmt} export of layer {i} holds no tensors of the layer",
                                        hint="use --mode full for this architecture")
            meta = rename(export_metadata(Path(d)), names)
            loop.state["metadata"][fmt] = merge(loop.state["metadata"].get(fmt) or meta, meta)
            loop.writers[fmt].write(i, out)
            t["stitch"] += time.perf_counter() - t0

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work.parent / f"{self.work.name}.lock").unlink(missing_ok=True)


def _other_groups(src: SourceShards, limit: int = 1 << 30) -> list[list[str]]:
    """Non-layer tensors in groups of at most `limit` bytes (a big tensor gets its own shard)."""
    groups: list[list[str]] = []
    size = 0
    for name in sorted(src.other):
        b = src.info[name].nbytes
        if not groups or size + b > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += b
    return groups


def _positions_calib(calib: Any, lengths: list[int]) -> Any:
    """The calibration set as stand-in token ids: sample k covers rows [offset_k, offset_k + len_k)."""
    c = copy.copy(calib)
    ids, off = [], 0
    for L in lengths:
        ids.append(list(range(off, off + L)))
        off += L
    c.input_ids = ids
    return c


def _save_hidden(path: Path, hidden) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({"hidden": hidden.contiguous()}, str(tmp))
    os.replace(tmp, path)


def embed_samples(src: SourceShards, config: Any, input_ids: list[list[int]]):
    """The input embeddings of every calibration token, (N, hidden) in the source dtype, reading
    only the embedding rows that occur (a 150k-row table is never loaded whole)."""
    import torch

    from quantkit.modules import meta_model

    meta = meta_model(config)
    emb = meta.get_input_embeddings()
    name = next(n for n, m in meta.named_modules() if m is emb) + ".weight"
    if name not in src.info:
        cands = [o for o in src.other if o.endswith(name.split(".", 1)[-1])]
        if not cands:
            raise PlanError(f"cannot find the input embedding {name} in {src.root}", hint="use --mode full")
        name = cands[0]
    flat = [t for ids in input_ids for t in ids]
    uniq = sorted(set(flat))
    rows = src.read_rows(name, uniq)
    pos = {t: k for k, t in enumerate(uniq)}
    out = rows[torch.tensor([pos[t] for t in flat])]
    if hasattr(emb, "embed_scale"):  # Gemma's scaled embedding: x * sqrt(hidden_size), in the weight dtype
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        out = out * torch.tensor(text.hidden_size ** 0.5, dtype=out.dtype)
    return out
