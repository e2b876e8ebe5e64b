"""A tiny OpenAI-compatible server (stdlib http.server in a thread) with canned answers, for
testing the validation judge without an engine."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self, answer=lambda prompt: " Paris.", logprob: float = -2.0):
        self.answer, self.logprob = answer, logprob
        outer = self

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
                if self.path == "/v1/chat/completions":
                    text = outer.answer(req["messages"][-1]["content"])
                    return self._send({"choices": [{"message": {"content": text}}]})
                text = outer.answer(req["prompt"])
                choice = {"text": text}
                usage = {}
                if req.get("echo"):
                    n = len(req["prompt"].split())
                    choice["logprobs"] = {"token_logprobs": [None] + [outer.logprob] * n}
                    usage = {"prompt_tokens": n}
                self._send({"choices": [choice], "usage": usage})

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
    FAKE_ANSWER=bang answers '!!!!!!!!' (NaN-logit style), anything else answers sensibly."""
    import os
    import sys
    import time

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_validate_judge import good_answer

    port = int(argv[argv.index("--port") + 1])
    answer = (lambda p: "!!!!!!!!!!!!") if os.environ.get("FAKE_ANSWER") == "bang" else good_answer
    srv = FakeOpenAI(answer)
    srv.httpd.server_close()
    srv.httpd = ThreadingHTTPServer(("127.0.0.1", port), srv.httpd.RequestHandlerClass)
    print(f"fake engine serving on {port}; Using FakeNvFp4Kernel for NVFP4 GEMM", flush=True)
    srv.httpd.serve_forever()


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
