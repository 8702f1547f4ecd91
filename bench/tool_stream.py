"""When the caller hears the first word of an answer that needed a memory look-up (memory mode ``tool``).

The real proxy (``optimem serve``'s app under uvicorn, in process, embedded Redis) in front of an
upstream on loopback that behaves like a tool-calling model served at a fixed speed: asked with the
``recall_memory`` tool and no tool result yet, it calls the tool (a short stream); given the result,
it writes an answer of ``--tokens`` words, one every ``--token-ms``, streamed when asked to stream.
Each ask has its own session (a real chitchat conversation of 300 turns with a fact in an early turn,
its page read once beforehand). The same question is asked ``--asks`` times each way, interleaved:

- ``stream``: ``stream: true`` (the caller reads the proxy's events as they come): time to the
  first word and to the end;
- ``whole``: ``stream: false``: time to the whole answer. This is also when the first word arrived
  in a stream before the proxy streamed tool rounds (it asked the upstream unstreamed, then sent
  the whole answer as events).

    .venv/bin/python bench/tool_stream.py [--asks 10] [--tokens 150] [--token-ms 20] [--out bench/tool_stream.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, pct  # noqa: E402
from optimem.api.app import create_app  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.lab.corpus import longest  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402
from optimem.settings import Settings  # noqa: E402

FACT = "By the way, my storage locker code is 4817-QX, please remember it."
QUESTION = "What is my storage locker code?"


class Model(BaseHTTPRequestHandler):
    """A tool-calling model at a fixed speed (see the module's docstring). HTTP/1.0: a stream ends
    when the connection closes."""
    tokens, token_s = 150, 0.02

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if body.get("tools") and not results:
            args = json.dumps({"query": "storage locker code"})
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "recall_memory", "arguments": args}}]}
            words: list[str] = []
        else:
            said = results[-1]["content"] if results else ""
            code = "4817-QX" if "4817-QX" in said else "unknown"
            words = [f"Your code is {code}."] + ["and"] * (self.tokens - 1)
            message = {"role": "assistant", "content": " ".join(words)}
        if not body.get("stream"):
            time.sleep(self.token_s * len(words))           # generating it all before answering
            self.send(200, "application/json", json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if words == [] else "stop"}]}).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def event(delta: dict, finish: str | None = None) -> None:
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        event({"role": "assistant", "content": ""})
        if words:
            for word in words:
                time.sleep(self.token_s)
                event({"content": word + " "})
            event({}, "stop")
        else:
            event({"tool_calls": [{"index": 0, **message["tool_calls"][0]}]})
            event({}, "tool_calls")
        self.wfile.write(b"data: [DONE]\n\n")

    def send(self, status: int, media: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def ask(http: httpx.Client, session: str, stream: bool) -> dict:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": QUESTION}]}
    headers = {"X-Optimem-Session": session, "X-Optimem-Memory": "tool"}
    t0 = time.perf_counter()
    if not stream:
        r = http.post("/v1/chat/completions", json=body, headers=headers)
        text = r.json()["choices"][0]["message"]["content"]
        done = time.perf_counter() - t0
        return {"first_s": done, "end_s": done, "right": "4817-QX" in text}
    first, text = None, ""
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                piece = choice["delta"].get("content")
                if piece and first is None:
                    first = time.perf_counter() - t0
                text += piece or ""
    return {"first_s": first, "end_s": time.perf_counter() - t0, "right": "4817-QX" in text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--asks", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=150, help="words in the model's answer")
    ap.add_argument("--token-ms", type=float, default=20.0, help="ms the model takes per word")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "tool_stream.json"))
    args = ap.parse_args()
    Model.tokens, Model.token_s = args.tokens, args.token_ms / 1000
    model = ThreadingHTTPServer(("127.0.0.1", free_port()), Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    rows: dict[str, list[dict]] = {"stream": [], "whole": []}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(None, data_dir=Path(tmp), worker=False,
                                     upstream_url=f"http://127.0.0.1:{model.server_port}/v1")
        with Memory(settings) as memory:
            turns = [dict(t) for t in longest()[1][:300]]
            turns[6].update(role="user", content=FACT)
            sessions = [f"bench-{n}" for n in range(2 * args.asks + 1)]   # each ask its own (replies stored)
            for session in sessions:
                memory.create_session(session)
                memory.append(session, turns)
                memory.settle(session)
                memory.recall(session, turn=6)     # the fact's page read once: the asks time the proxy
            server = uvicorn.Server(uvicorn.Config(create_app(memory), host="127.0.0.1", port=free_port(),
                                                   log_level="warning"))
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            while not server.started:
                time.sleep(0.02)
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=120) as http:
                    ask(http, sessions.pop(), True)             # warm-up: the app's first request
                    for _ in range(args.asks):
                        for way in ("stream", "whole"):
                            rows[way].append(ask(http, sessions.pop(), way == "stream"))
            finally:
                server.should_exit = True
                thread.join(20)
    model.shutdown()
    summary = {way: {"asks": len(rs), "right": sum(r["right"] for r in rs),
                     **{f"{what}_p50_s": round(pct([r[f"{what}_s"] for r in rs], 0.5), 3) for what in ("first", "end")},
                     **{f"{what}_p95_s": round(pct([r[f"{what}_s"] for r in rs], 0.95), 3) for what in ("first", "end")}}
               for way, rs in rows.items()}
    result = {"machine": machine(), "model": {"words": args.tokens, "ms_per_word": args.token_ms},
              "summary": summary, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"tool mode, one recall_memory round, an answer of {args.tokens} words at {args.token_ms:g} ms a word")
    print("| asked | first word p50 / p95 | whole answer p50 / p95 | right |")
    print("|---|---|---|---|")
    for way, s in summary.items():
        print(f"| {way} | {s['first_p50_s']:.3f} / {s['first_p95_s']:.3f} s | {s['end_p50_s']:.3f} / "
              f"{s['end_p95_s']:.3f} s | {s['right']}/{s['asks']} |")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
