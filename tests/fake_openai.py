"""A tiny OpenAI-compatible server (stdlib http.server in a thread) with canned answers, for
testing the validation judge without an engine."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _bank_options() -> dict[str, tuple[int, bool, int]]:
    """context + option -> (item index, is the answer, len(context)) for the smoke suite's bank."""
    from quantkit.probes.suites import load_suite

    bank = load_suite("smoke").bank()
    return {it.context + o: (i, o == it.answer, len(it.context))
            for i, it in enumerate(bank.items) for o in [it.answer, *it.distractors]}


class FakeOpenAI:
    """`answer(prompt)` gives the greedy text; every echoed token scores `logprob`, except the options
    of the knowledge bank: the model "knows" a deterministic fraction `knows` of the items (its answer
    scores -0.5, the distractors -3.0; for the other items the reverse)."""

    def __init__(self, answer=lambda prompt: " Paris.", logprob: float = -2.0, delay: float = 0.0,
                 requests_log: str | None = None, knows: float = 0.8):
        self.answer, self.logprob, self.knows = answer, logprob, knows
        self.delay, self.requests_log = delay, requests_log  # slow completions, to be interrupted mid-probe
        self.options = _bank_options()
        outer = self

        def echo(prompt: str) -> dict:
            toks = list(re.finditer(r"\s*\S+|\s+$", prompt))
            lps = [None] + [outer.logprob] * (len(toks) - 1)
            opt = outer.options.get(prompt)
            if opt is not None:
                idx, is_answer, ctx = opt
                known = (idx * 7919) % 100 < outer.knows * 100
                for k, m in enumerate(toks):
                    if k and m.end() > ctx:
                        lps[k] = -0.5 if is_answer == known else -3.0
            return {"tokens": [m.group(0) for m in toks], "token_logprobs": lps,
                    "text_offset": [m.start() for m in toks]}

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj, code=200):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/health":
                    return self._send({})
                if self.path == "/v1/models":
                    return self._send({"data": [{"id": "fake"}]})
                self._send({"error": "no"}, 404)

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.requests_log:
                    with open(outer.requests_log, "a") as f:
                        f.write(self.path + "\n")
                if outer.delay:
                    time.sleep(outer.delay)
                if self.path == "/v1/chat/completions":
                    text = outer.answer(req["messages"][-1]["content"])
                    return self._send({"choices": [{"message": {"content": text}}]})
                prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
                choices = []
                for i, prompt in enumerate(prompts):
                    gen = "" if req.get("max_tokens") == 0 else outer.answer(prompt)
                    choice = {"index": i, "text": (prompt if req.get("echo") else "") + gen}
                    if req.get("echo"):
                        choice["logprobs"] = echo(prompt)
                    choices.append(choice)
                self._send({"choices": choices})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()


def _main(argv: list[str]) -> None:
    """Run as a fake *engine process*: `fake_openai.py ... --port N ...` serves until killed.
    FAKE_ANSWER=bang answers '!!!!!!!!' (NaN-logit style), anything else answers sensibly.
    FAKE_DELAY=S answers each completion after S seconds, FAKE_REQUESTS=FILE logs each request's
    path there as it arrives, FAKE_ENGINE_PIDS=FILE starts a child (like vLLM's engine core) and
    writes "child_pid leader_pid" there. A `fake.json` in the --model directory sets this model's
    behaviour: {"answer": "bang"|"good", "logprob": float, "knows": float} (a baseline and a candidate
    that differ, for baseline-relative judging without an engine)."""
    import os
    import subprocess
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_validate_judge import good_answer

    port = int(argv[argv.index("--port") + 1])
    model = argv[argv.index("--model") + 1] if "--model" in argv else ""
    cfg = json.load(open(os.path.join(model, "fake.json"))) if os.path.isfile(os.path.join(model, "fake.json")) else {}
    bang = cfg.get("answer", os.environ.get("FAKE_ANSWER")) == "bang"
    answer = (lambda p: "!!!!!!!!!!!!") if bang else good_answer
    srv = FakeOpenAI(answer, logprob=cfg.get("logprob", -2.0), knows=cfg.get("knows", 0.8),
                     delay=float(os.environ.get("FAKE_DELAY", "0")), requests_log=os.environ.get("FAKE_REQUESTS"))
    if os.environ.get("FAKE_ENGINE_PIDS"):
        child = subprocess.Popen(["sleep", "600"])
        with open(os.environ["FAKE_ENGINE_PIDS"], "w") as f:
            f.write(f"{child.pid} {os.getpid()}")
    srv.httpd.server_close()
    srv.httpd = ThreadingHTTPServer(("127.0.0.1", port), srv.httpd.RequestHandlerClass)
    print(f"fake engine serving on {port}; Using FakeNvFp4Kernel for NVFP4 GEMM", flush=True)
    srv.httpd.serve_forever()


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
