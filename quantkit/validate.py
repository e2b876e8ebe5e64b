"""The validation judge: serve each artefact in a real engine and gate on real completions.

inspect (headers) -> engine (profile, flags from the checkpoint's metadata) -> probes
(detectors + expected answers) -> reference perplexity (optionally against a baseline) ->
log scan -> verdict. Exit codes: 0 pass, 1 sanity failure, 2 engine failure, 3 usage error."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantkit import __version__
from quantkit.checkpoint.formats import format_of
from quantkit.checkpoint.manifest import content_hash, file_hashes
from quantkit.engines.profiles import EngineProfile, engine_python, get_profile
from quantkit.engines.server import EngineServer, free_port, log_tail
from quantkit.errors import EngineError, RecipeError
from quantkit.probes.logscan import scan_log
from quantkit.probes.perplexity import engine_perplexity
from quantkit.probes.suites import Suite, load_suite, run_probe
from quantkit.progress import SILENT, Reporter
from quantkit.report import ValidationReport, Verdict
from quantkit.resources import cache_root

__all__ = ["ValidateOptions", "validate", "checkpoint_hash"]

SERVED_NAME = "quantkit-under-test"
CPU_NOTE = ("validated on CPU with vLLM's NVFP4 loaders and quantkit's emulation kernel (W4A4 numerics): "
            "this checks the artefact's tensors and metadata and vLLM's loading of them, not Blackwell kernels")


@dataclass
class ValidateOptions:
    engine: str = "vllm-cpu"
    suite: str = "smoke"
    baseline: str | None = None
    url: str | None = None
    engine_python: str | None = None
    timeout: float = 600.0
    max_model_len: int = 2048
    moe_marlin: bool = False
    extra_args: list[str] = field(default_factory=list)
    log_dir: Path = Path("reports")
    skip_inspect: bool = False
    skip_perplexity: bool = False
    max_ppl_ratio: float | None = None  # overrides the suite's perplexity max_ratio (recipe validate.max_ppl_ratio)


def checkpoint_hash(path: Path) -> str:
    """The content hash the manifest would record (every file but quantkit.json)."""
    return content_hash(file_hashes(path))


def _local(target: str) -> Path | None:
    p = Path(target)
    if p.is_dir():
        return p
    from quantkit.source import local_checkpoint

    return local_checkpoint(target)  # a Hub id: snapshot_download (raises a one-line error offline)


def _format_of(path: Path | None) -> str:
    return format_of(path) if path is not None else "unknown"


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
    try:
        from quantkit.inspect import inspect_checkpoint
    except ImportError:  # inspect not installed in this build
        return []
    rep = inspect_checkpoint(str(path))
    return [f"{getattr(e, 'code', 'error')}: {getattr(e, 'message', str(e))}" for e in rep.errors]


def _serve(profile: EngineProfile, opts: ValidateOptions, path: Path | None, fmt: str, log: Path):
    if profile.is_endpoint:
        if not opts.url:
            raise RecipeError("--engine endpoint needs --url", hint="e.g. --url http://spark:8000")
        return None
    port = free_port()
    py = engine_python(profile, opts.engine_python)
    argv = profile.argv(model=path, name=SERVED_NAME, port=port, max_model_len=opts.max_model_len,
                        fmt=fmt if fmt in ("modelopt", "compressed-tensors") else None, python=py,
                        extra=opts.extra_args, moe_marlin=opts.moe_marlin)
    return EngineServer(argv, profile.env, log, port, ready_timeout=opts.timeout)


def _baseline_ppl(opts: ValidateOptions, profile: EngineProfile, suite: Suite, reporter: Reporter) -> dict | None:
    """Perplexity of the baseline (BF16) checkpoint, cached by its content hash."""
    if not opts.baseline or suite.perplexity is None:
        return None
    path = _local(opts.baseline)
    h = checkpoint_hash(path)
    cache = cache_root() / "perplexity" / f"{h.replace(':', '-')}-{suite.name}-{opts.engine}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    reporter.stage("baseline", f"serving {opts.baseline} for its perplexity")
    server = _serve(profile, opts, path, _format_of(path), opts.log_dir / "baseline.engine.log")
    with server as client:
        client.model = SERVED_NAME
        res = engine_perplexity(client, suite.reference_text(), suite.perplexity.max_tokens_per_request)
    res.update(target=opts.baseline, content_hash=h)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(res))
    return res


_ERROR_LINE = re.compile(r"(\w+(?:Error|Exception)): (.+)")


def _root_cause(message: str, log: Path) -> str:
    """First line of the engine error plus the root-cause exception from its log, if any."""
    first = message.splitlines()[0]
    causes = [m for m in _ERROR_LINE.findall(log_tail(log, 400)) if "initialization failed" not in m[1]]
    if causes:
        kind, text = causes[-1]
        return f"{first.rstrip(': ;')}: {kind}: {text.strip()[:300]}"
    return first


def _judge(v: Verdict, suite: Suite, probes: list, ppl: dict | None, base: dict | None, scan: dict,
           max_ratio: float | None = None) -> None:
    for p in probes:
        for det, why in p.failures.items():
            v.fail(f"probe {p.id}: {det}: {why}")
    with_exp = [p for p in probes if p.expected is not None]
    if with_exp:
        ok = sum(p.expected for p in with_exp)
        if ok / len(with_exp) < suite.min_expected_pass:
            v.fail(f"expected answers: {ok}/{len(with_exp)} correct, need {suite.min_expected_pass:.0%} "
                   f"(missed: {', '.join(p.id for p in with_exp if not p.expected)})")
    if ppl and suite.perplexity:
        if ppl["perplexity"] > suite.perplexity.max_perplexity:
            v.fail(f"reference perplexity {ppl['perplexity']:.1f} > {suite.perplexity.max_perplexity:g}: fluent garbage "
                   "or broken weights")
        limit = max_ratio or suite.perplexity.max_ratio
        if base and ppl["perplexity"] / base["perplexity"] > limit:
            v.fail(f"reference perplexity {ppl['perplexity']:.1f} is x{ppl['perplexity'] / base['perplexity']:.2f} "
                   f"the baseline's {base['perplexity']:.1f} (limit x{limit:g})")
    for f in scan["findings"]:
        msg = f"engine log: {f['name']}: {f['why']} ({f['line']!r})"
        (v.fail(msg) if f["severity"] == "error" else v.warnings.append(msg))


def validate_one(target: str, opts: ValidateOptions, suite: Suite, profile: EngineProfile,
                 base: dict | None, reporter: Reporter = SILENT) -> Verdict:
    t0 = time.perf_counter()
    path = None if profile.is_endpoint and not Path(target).is_dir() else _local(target)
    fmt = _format_of(path)
    v = Verdict(target=target, path=str(path) if path else None,
                content_hash=checkpoint_hash(path) if path else None, format=fmt, engine=profile.name,
                note=CPU_NOTE if profile.cpu_only else None)
    if path is not None and not opts.skip_inspect:
        errors = _inspect_errors(path)
        if errors:
            v.reasons += errors
            v.verdict = "refused"
            v.reasons.insert(0, "inspect found errors; not booting an engine (use --skip-inspect to try anyway)")
            v.timings["total"] = round(time.perf_counter() - t0, 2)
            return v
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in target.strip("/").split("/")[-1])[:60]
    log = opts.log_dir / f"{slug}.engine.log"
    v.log_path = str(log)
    server = _serve(profile, opts, path, fmt, log)
    probes: list = []
    ppl = None
    try:
        with contextlib.ExitStack() as stack:  # tears the engine's process group down on any exit
            if server is None:
                from quantkit.engines.client import Client

                client = Client(opts.url)
                if not client.healthy():
                    raise EngineError(f"no healthy server at {opts.url}/health", hint="check --url")
            else:
                v.engine_command = server.argv
                reporter.stage(f"boot [{profile.name}]", target)
                client = stack.enter_context(server)
                client.model = SERVED_NAME
                v.timings["boot"] = server.boot_seconds
            todo = suite.probes
            if not has_chat_template(path):
                todo = [p for p in suite.probes if p.kind != "chat"]
                v.warnings.append(f"{len(suite.probes) - len(todo)} chat probes skipped: the checkpoint has no chat "
                                  "template (a base model)")
            reporter.stage("probes", f"{len(todo)} probes")
            t1 = time.perf_counter()
            for i, probe in enumerate(todo):
                probes.append(run_probe(client, probe))
                reporter.advance("probes", i + 1, len(todo))
            v.timings["probes"] = round(time.perf_counter() - t1, 2)
            if suite.perplexity and not opts.skip_perplexity:
                reporter.stage("perplexity", suite.perplexity.text)
                t2 = time.perf_counter()
                try:
                    ppl = engine_perplexity(client, suite.reference_text(), suite.perplexity.max_tokens_per_request)
                except EngineError as exc:
                    if server is not None and not server.alive():
                        raise
                    # the engine answered, but not with numbers: NaN/inf logprobs are a sanity failure
                    v.fail(f"reference perplexity could not be computed: {exc.message[:200]}")
                v.timings["perplexity"] = round(time.perf_counter() - t2, 2)
            if server is not None and not server.alive():
                raise EngineError("engine died during probing", hint=f"see {log}")
    except EngineError as exc:
        v.probes = [p.to_dict() for p in probes]
        v.fail(_root_cause(exc.message, log), kind="engine-error")
        v.log_tail = log_tail(log)
        v.timings["total"] = round(time.perf_counter() - t0, 2)
        return v
    v.probes = [p.to_dict() for p in probes]
    v.perplexity, v.baseline = ppl, base
    v.logscan = scan_log(log) if server is not None else {"facts": {}, "findings": []}
    _judge(v, suite, probes, ppl, base, v.logscan, opts.max_ppl_ratio)
    v.timings["total"] = round(time.perf_counter() - t0, 2)
    return v


def validate(targets: list[str], opts: ValidateOptions, reporter: Reporter = SILENT,
             baseline: dict | None = None) -> ValidationReport:
    """Validate each target; `baseline` (a perplexity result) overrides serving opts.baseline."""
    suite = load_suite(opts.suite)
    profile = get_profile(opts.engine)
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        base = baseline or _baseline_ppl(opts, profile, suite, reporter)
    except EngineError as exc:
        raise EngineError(f"baseline: {exc.message}", hint=exc.hint) from exc
    verdicts = [validate_one(t, opts, suite, profile, base, reporter) for t in targets]
    return ValidationReport(verdicts, suite.name, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                            __version__)
