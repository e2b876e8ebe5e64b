"""The validation gate: serve each artefact in a real engine, measure it, and judge it against its
baseline (the BF16 source served by the same engine).

inspect (headers) -> each candidate served and measured (greedy probes, knowledge, perplexity, long
generations) -> the baseline served once (its own measurements + its log-likelihood of every
candidate's long generations; cached by content hash) -> checks and verdicts. Without a baseline only
the hard detectors and absolute ceilings judge, and every verdict says so. Exit codes: 0 pass,
1 a failed check, 2 engine failure, 3 usage error, 70 internal error (a quantkit bug)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit import __version__
from quantkit.checkpoint.formats import format_of
from quantkit.checkpoint.manifest import content_hash, file_hashes, read_manifest
from quantkit.engines.profiles import get_profile
from quantkit.errors import EngineError, UsageError
from quantkit.judge import judge_checks
from quantkit.measure import ServeSpec, measure
from quantkit.probes.suites import Suite, load_suite
from quantkit.progress import SILENT, Reporter
from quantkit.report import ValidationReport, Verdict
from quantkit.resources import cache_root

__all__ = ["ValidateOptions", "validate", "rejudge", "checkpoint_hash", "resolve_baseline", "NO_BASELINE"]

CPU_NOTE = ("validated on CPU with vLLM's NVFP4 loaders and quantkit's emulation kernel (W4A4 numerics): "
            "this checks the artefact's tensors and metadata and vLLM's loading of them, not Blackwell kernels")
NO_BASELINE = ("judged without a baseline: hard detectors and absolute ceilings only (pass --baseline DIR, "
               "or validate a checkpoint whose quantkit.json names a local source, to compare against BF16)")


@dataclass
class ValidateOptions:
    engine: str = "vllm-cpu"
    suite: str = "smoke"
    baseline: str | None = None   # BF16 checkpoint to judge against; default: the manifest's local source
    no_baseline: bool = False     # judge without one even when the manifest names it
    url: str | None = None
    engine_python: str | None = None
    timeout: float = 600.0
    max_model_len: int = 2048
    moe_marlin: bool = False
    extra_args: list[str] = field(default_factory=list)
    log_dir: Path = Path("reports")
    skip_inspect: bool = False
    max_ppl_ratio: float | None = None  # overrides the suite's perplexity max_ratio (recipe validate.max_ppl_ratio)
    config: str | None = None  # the profile's deployment configuration (compiled, tp2, a kernel), baseline too

    def serve_spec(self) -> ServeSpec:
        profile = get_profile(self.engine)
        profile.config(self.config)  # an unknown name is a usage error before anything boots
        return ServeSpec(profile, self.url, self.engine_python, self.timeout, self.max_model_len,
                         self.moe_marlin, tuple(self.extra_args), self.config)


def checkpoint_hash(path: Path) -> str:
    """The content hash the manifest would record (every file but quantkit.json)."""
    return content_hash(file_hashes(path))


def _local(target: str) -> Path | None:
    p = Path(target)
    if p.is_dir():
        return p
    from quantkit.source import local_checkpoint

    return local_checkpoint(target)  # a Hub id: snapshot_download (raises a one-line error offline)


def has_chat_template(path: Path | None) -> bool:
    """Whether the checkpoint's tokenizer can render chats (base models often cannot); unknown
    for a remote endpoint, where chat probes are tried."""
    if path is None:
        return True
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    cfg = path / "tokenizer_config.json"
    return cfg.is_file() and bool(json.loads(cfg.read_text()).get("chat_template"))


def _inspect_errors(path: Path) -> list[str]:
    from quantkit.inspect import inspect_checkpoint

    rep = inspect_checkpoint(str(path))
    return [f"{getattr(e, 'code', 'error')}: {getattr(e, 'message', str(e))}" for e in rep.errors]


def resolve_baseline(path: Path | None, opts: ValidateOptions) -> Path | None:
    """--baseline, else the local source recorded in the candidate's quantkit.json, else None."""
    if opts.no_baseline:
        return None
    if opts.baseline:
        base = _local(opts.baseline)
        if base is None or not (base / "config.json").is_file():
            raise UsageError(f"baseline {opts.baseline} is not a checkpoint directory", hint="pass a BF16 checkpoint")
        return base
    src = ((read_manifest(path) or {}).get("source") or {}).get("local_path") if path else None
    return Path(src) if src and (Path(src) / "config.json").is_file() else None


def _suite(opts: ValidateOptions) -> Suite:
    suite = load_suite(opts.suite)
    if opts.max_ppl_ratio and suite.perplexity:
        why = f"the recipe's validate.max_ppl_ratio ({opts.max_ppl_ratio:g}) replaces the suite's {suite.perplexity.max_ratio:g}"
        suite.perplexity = suite.perplexity.model_copy(update={"max_ratio": opts.max_ppl_ratio, "why_max_ratio": why})
    return suite


def _slug(target: str) -> str:
    """A log-file name for a target: its last two path parts (out/a/ct and out/b/ct differ)."""
    tail = "_".join(target.strip("/").split("/")[-2:])
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tail)[-60:]


def _verdict(target: str, path: Path | None, opts: ValidateOptions, role: str = "candidate") -> Verdict:
    profile = get_profile(opts.engine)
    return Verdict(target=target, path=str(path) if path else None,
                   content_hash=checkpoint_hash(path) if path else None,
                   format=format_of(path) if path is not None else "unknown", engine=profile.name, role=role,
                   note=CPU_NOTE if profile.cpu_only else None, config=opts.config)


def _probes(suite: Suite, path: Path | None, v: Verdict) -> list:
    if has_chat_template(path):
        return suite.probes
    todo = [p for p in suite.probes if p.kind != "chat"]
    v.warnings.append(f"{len(suite.probes) - len(todo)} chat probes skipped: the checkpoint has no chat template "
                      "(a base model)")
    return todo


def _candidate(target: str, opts: ValidateOptions, suite: Suite, reporter: Reporter) -> tuple[Verdict, Path | None]:
    profile = get_profile(opts.engine)
    path = None if profile.is_endpoint and not Path(target).is_dir() else _local(target)
    v = _verdict(target, path, opts)
    if path is not None and not opts.skip_inspect:
        errors = _inspect_errors(path)
        if errors:
            v.reasons += ["inspect found errors; not booting an engine (use --skip-inspect to try anyway)", *errors]
            v.verdict = "refused"
            return v, path
    measure(v, path, opts.serve_spec(), suite, _probes(suite, path, v), opts.log_dir / f"{_slug(target)}.engine.log",
            reporter=reporter)
    return v, path


def _text_key(prompt: str, text: str) -> str:
    return hashlib.sha256(f"{prompt}\x00{text}".encode()).hexdigest()[:24]


def _baseline(path: Path, opts: ValidateOptions, suite: Suite, pairs: list[tuple[str, str]],
              reporter: Reporter) -> tuple[Verdict, dict[str, float | None]]:
    """The baseline's measurements and its nll/token of each (prompt, text) in `pairs`. Cached by
    content hash, suite fingerprint and engine; the engine boots only for what is not cached."""
    v = _verdict(str(path), path, opts, role="baseline")
    stem = f"{v.content_hash.replace(':', '-')}-{suite.fingerprint()}-{opts.engine}" + \
        (f"-{opts.config}" if opts.config else "")
    cache, cross_cache = cache_root() / "baselines" / f"{stem}.json", cache_root() / "baselines" / f"{stem}-cross.json"
    cross: dict[str, float | None] = json.loads(cross_cache.read_text()) if cross_cache.is_file() else {}
    missing = [p for p in pairs if _text_key(*p) not in cross]
    if cache.is_file() and not missing:
        cached = Verdict(**json.loads(cache.read_text()))
        cached.warnings.append("baseline measurements from the cache (same content hash, suite and engine)")
        return cached, cross
    reporter.stage("baseline", f"serving {path} once for {len(pairs)} candidate generations")
    scored = measure(v, path, opts.serve_spec(), suite, _probes(suite, path, v),
                     opts.log_dir / "baseline.engine.log", score=missing, reporter=reporter)
    if v.verdict == "engine-error":
        raise EngineError(f"baseline {path}: {v.reasons[0]}", hint=f"see {v.log_path}")
    cross.update({_text_key(*p): r["nll_per_token"] for p, r in zip(missing, scored)})
    _write_atomic(cache, json.dumps(asdict(v), default=str))
    _write_atomic(cross_cache, json.dumps(cross))
    return v, cross


def _write_atomic(path: Path, text: str) -> None:
    """Concurrent runs share the cache: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _measurements(v: Verdict) -> dict:
    return {"perplexity": v.perplexity, "knowledge": v.knowledge, "long": v.long, "structured": v.structured,
            "images": v.images, "mtp": v.mtp}


def _finish(v: Verdict, suite: Suite, base: Verdict | None) -> None:
    """The verdict: hard detectors (probes, long generations), the suite's checks, the engine log."""
    if v.verdict in ("refused", "engine-error"):
        return
    for u in v.unmeasured:
        v.fail(u)
    for p in v.probes:
        for det, why in p["failures"].items():
            v.fail(f"probe {p['id']}: {det}: {why}")
    for g in v.long or []:
        for det, why in g["failures"].items():
            v.fail(f"long generation {g['id']}: {det}: {why}")
    checks = judge_checks(suite, _measurements(v), _measurements(base) if base else None)
    v.checks = [c.to_dict() for c in checks]
    for c in checks:
        if c.passed is False:
            v.fail(c.summary())
    if base is None and v.role == "candidate":
        v.warnings.append(NO_BASELINE)
    elif base is not None:
        v.baseline = {"target": base.target, "content_hash": base.content_hash,
                      "perplexity": (base.perplexity or {}).get("perplexity"),
                      "knowledge_accuracy": (base.knowledge or {}).get("accuracy")}
    expected = [p for p in v.probes if p["expected"] is not None]
    if expected:
        line = f"greedy expected answers (informational, not gated): {sum(p['expected'] for p in expected)}/{len(expected)}"
        if base is not None and base.probes:
            bexp = [p for p in base.probes if p["expected"] is not None]
            line += f"; baseline {sum(p['expected'] for p in bexp)}/{len(bexp)}"
        v.info.append(line)
    for f in (v.logscan or {}).get("findings", []):
        msg = f"engine log: {f['name']}: {f['why']} ({f['line']!r})"
        (v.fail(msg) if f["severity"] == "error" else v.warnings.append(msg))


def validate(targets: list[str], opts: ValidateOptions, reporter: Reporter = SILENT) -> ValidationReport:
    """Measure every target, then each distinct baseline once, then judge."""
    suite = _suite(opts)
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    cands = [_candidate(t, opts, suite, reporter) for t in targets]
    groups: dict[Path, list[Verdict]] = {}
    for v, path in cands:
        if v.verdict not in ("refused", "engine-error") and (b := resolve_baseline(path, opts)) is not None:
            groups.setdefault(b.resolve(), []).append(v)
    bases: dict[int, Verdict] = {}
    base_verdicts = []
    for bpath, members in groups.items():
        pairs = [(g["prompt"], g["text"]) for v in members for g in v.long or [] if g["text"].strip()]
        bv, cross = _baseline(bpath, opts, suite, pairs, reporter)
        _finish(bv, suite, None)
        base_verdicts.append(bv)
        for v in members:
            for g in v.long or []:
                g["baseline_nll"] = cross.get(_text_key(g["prompt"], g["text"])) if g["text"].strip() else None
            bases[id(v)] = bv
    for v, _ in cands:
        _finish(v, suite, bases.get(id(v)))
    return ValidationReport([v for v, _ in cands], suite.name, _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds"), __version__, baselines=base_verdicts, alpha=suite.alpha)


def rejudge(data: dict, suite: str | None = None) -> ValidationReport:
    """The verdicts a (changed) suite gives to the measurements stored in a validation report's JSON,
    without serving anything: measurements are deterministic, judging is a pure function of them."""
    s = load_suite(suite or data["suite"])
    judged = ("pass", "fail")

    def fresh(d: dict) -> Verdict:
        keep = d["verdict"] not in judged
        return Verdict(**{**d, "verdict": d["verdict"] if keep else "pass", "reasons": d["reasons"] if keep else [],
                          "checks": [], "info": [], "baseline": None,
                          "warnings": [w for w in d["warnings"] if w != NO_BASELINE]})
    bases = {b["content_hash"]: fresh(b) for b in data.get("baselines", [])}
    for b in bases.values():
        _finish(b, s, None)
    verdicts = []
    for d in data["verdicts"]:
        v = fresh(d)
        _finish(v, s, bases.get((d.get("baseline") or {}).get("content_hash")))
        verdicts.append(v)
    return ValidationReport(verdicts, s.name, data["created"], __version__, baselines=list(bases.values()), alpha=s.alpha)


def validate_matrix(target: str, configs: list[str], opts: ValidateOptions, reporter: Reporter = SILENT):
    """Serve one local artefact under each configuration and compare them (`quantkit.matrix`)."""
    from quantkit.matrix import run_matrix

    path = _local(target)
    if path is None:
        raise UsageError("--matrix needs the checkpoint on this machine", hint="download it first, or pass a directory")
    spec = opts.serve_spec()
    for name in configs:
        spec.profile.config(name)
    if not opts.skip_inspect and (errors := _inspect_errors(path)):
        raise UsageError(f"inspect found errors in {target}: {errors[0]}", hint="fix them, or pass --skip-inspect")
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    return run_matrix(target, path, format_of(path), spec, configs, load_suite(opts.suite), opts.log_dir, reporter)
