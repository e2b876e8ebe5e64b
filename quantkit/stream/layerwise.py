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

from quantkit.errors import PlanError, RecipeError, VerificationError
from quantkit.stream.mini import build_stand_in, capture_outputs, stand_in_plan
from quantkit.stream.shards import ShardWriter, SourceShards
from quantkit.stream.stitch import Names, export_metadata, export_prefix, export_tensors, merge, rename

__all__ = ["LayerwiseRun", "work_dir", "embed_samples"]


def work_dir(base_out: Path) -> Path:
    return base_out.parent / f".{base_out.name}.layerwise"


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
    def _state(self) -> dict | None:
        p = self.work / "state.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def _save_state(self, state: dict) -> None:
        tmp = self.work / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.work / "state.json")

    def _start(self, n_layers: int) -> dict:
        state = self._state()
        fp = self.fingerprint()
        if state and not self.resume and not self.overwrite:
            raise RecipeError(f"an interrupted run left {state['layers_done']}/{state['layers']} layers at {self.work}",
                              hint="pass --resume to continue it, or --overwrite to start over")
        if state and self.resume and state["fingerprint"] != fp:
            raise RecipeError(f"the saved state at {self.work} was made from a different model, recipe, plan "
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
                raise RecipeError(f"another quantkit process is writing {self.work}",
                                  hint="wait for it to finish, or choose another --out") from None
            yield

    # ------------------------------------------------------------------ run
    def run(self, progress=None, info=None) -> dict[str, dict]:
        """Quantize every layer; per format: {"writer": ShardWriter of the finished shards, "metadata": merged
        quantization metadata, "prefix": the layers' tensor prefix, "skipped": layers copied unquantized}."""
        with self._locked():
            return self._run(progress or (lambda *a: None), info or (lambda m: None))

    def _run(self, progress, info) -> dict[str, dict]:
        import torch

        src = SourceShards(self.local)
        n = self.layers = len(src.layers)
        if sorted(src.layers) != list(range(n)):
            raise PlanError(f"{self.local}: decoder layer indices are not contiguous", hint="use --mode full")
        for fmt, plan in self.plans.items():
            outside = [d.module.name for d in plan.fp4 if not re.match(r"^(?:\w+\.)*layers\.\d+\.", d.module.name)]
            if outside:
                raise PlanError(f"memory-bounded mode quantizes decoder layers only; the plan puts {outside[0]} "
                                "in FP4", hint="exclude it (--exclude) or use --mode full")
        groups = _other_groups(src)
        total_shards = n + len(groups)
        state = self._start(n)
        writers = {f: ShardWriter(self.work / f.replace("compressed-tensors", "ct"), total_shards) for f in self.plans}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        t = {"load": 0.0, "calibrate": 0.0, "export": 0.0, "stitch": 0.0}
        if not state["other_done"]:
            t0 = time.perf_counter()
            for k, names in enumerate(groups):
                tensors = src.read(names)
                for w in writers.values():
                    w.write(n + k, tensors)
                del tensors
            state["other_done"] = True
            self._save_state(state)
            t["load"] += time.perf_counter() - t0
        hidden_file = self.work / "hidden.safetensors"
        start = state["layers_done"]
        if start == 0:
            hidden = embed_samples(src, self.config, self.calib.input_ids)
        else:
            from safetensors.torch import load_file

            hidden = load_file(str(hidden_file))["hidden"]
            info(f"resuming at layer {start}/{n} ({self.work})")
        lengths = [len(x) for x in self.calib.input_ids]
        calib_i = _positions_calib(self.calib, lengths)
        norms = {k: v for k, v in src.read([o for o in src.other if "norm" in o]).items()}
        for i in range(start, n):
            t0 = time.perf_counter()
            layer = src.read_layer(i, as_index=0)
            t["load"] += time.perf_counter() - t0
            nxt = None
            for j, (fmt, plan) in enumerate(self.plans.items()):
                tensors = layer if j == len(self.plans) - 1 else {k: v.clone() for k, v in layer.items()}
                model = build_stand_in(self.config, i, tensors, norms, hidden, device)
                if nxt is None:
                    t0 = time.perf_counter()
                    nxt = capture_outputs(model, calib_i).to(hidden.dtype)
                    t["calibrate"] += time.perf_counter() - t0
                sub = stand_in_plan(plan, model, i)
                if not sub.fp4:  # nothing of this layer goes to FP4 (e.g. a Mamba layer): copied as it is,
                    # and declared unquantized by a whole-layer entry when the metadata is written
                    writers[fmt].write(i, src.rename_layer(tensors, 0, i))
                    state.setdefault("skipped", {}).setdefault(fmt, []).append(i)
                    del model
                    continue
                with tempfile.TemporaryDirectory(dir=self.work, prefix=f"layer{i}-") as d:
                    res = self.backends[fmt].quantize(
                        model, self.tokenizer, sub, calib_i, self.recipe.scheme, Path(d), progress=None,
                        kv_cache=self.recipe.kv_cache,
                        algorithm=self.recipe.calibration.algorithm_for(self.backends[fmt].name))
                    t["calibrate"] += res.timings.get("calibrate", 0.0)
                    t["export"] += res.timings.get("export", 0.0)
                    t0 = time.perf_counter()
                    names = Names(export_prefix(Path(d)), src.prefix, i)
                    out = export_tensors(Path(d), names)
                    if not out:
                        raise VerificationError(f"the {fmt} export of layer {i} holds no tensors of the layer",
                                                hint="use --mode full for this architecture")
                    meta = rename(export_metadata(Path(d)), names)
                    state["metadata"][fmt] = merge(state["metadata"].get(fmt) or meta, meta)
                    writers[fmt].write(i, out)
                    t["stitch"] += time.perf_counter() - t0
                del model, out
            del layer
            hidden = nxt
            _save_hidden(hidden_file, hidden)
            state["layers_done"] = i + 1
            self._save_state(state)
            progress("layers", i + 1, n)
            if device == "cuda":
                torch.cuda.empty_cache()
        self.timings = {k: round(v, 3) for k, v in t.items()}
        if any(f not in state["metadata"] for f in self.plans):
            raise PlanError("no decoder layer has an FP4 module: nothing to quantize layer by layer",
                            hint="check the plan (`quantkit plan`)")
        return {f: {"writer": writers[f], "metadata": state["metadata"][f], "prefix": src.prefix,
                    "skipped": state.get("skipped", {}).get(f, [])} for f in self.plans}

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
