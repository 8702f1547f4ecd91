"""What the proxy sends upstream per chat turn in each memory mode (images, tool, both).

Replays a real chitchat conversation through the real proxy (`POST /v1/chat/completions`, in
process, embedded Redis) against a minimal OpenAI-compatible upstream on loopback that records each
request and answers with plain text (it never calls the tool: this measures the standing cost of a
turn, not of a recall). At each checkpoint the next user message is sent once per mode, each mode in
its own copy of the session (each copy also keeps the upstream's short replies, one per checkpoint),
and the upstream request is counted: text tokens (cl100k, every text
part, the tool definitions included) plus the visual tokens optimem reports for the page images,
beside the plain-text baseline: the whole conversation so far as text, what a chatbot sends without
optimem.

    .venv/bin/python bench/proxy_modes.py [--turns 600] [--every 100] [--out bench/proxy_modes.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fastapi.testclient import TestClient

from optimem.api.app import create_app
from optimem.memory import tokens
from optimem.memory.lab.common import machine
from optimem.memory.lab.corpus import longest
from optimem.memory.service import Memory
from optimem.settings import Settings

MODES = ("images", "tool", "both")


class Upstream(BaseHTTPRequestHandler):
    """Records the last chat request; answers with a short text reply."""
    last: dict = {}

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Upstream.last = body
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "ok, noted."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def text_tokens(body: dict) -> int:
    """cl100k tokens of everything textual the upstream receives (messages, counted as the baseline
    counts turns, and tool definitions)."""
    total = 0
    for m in body["messages"]:
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        total += tokens.turn_tokens(m["role"], "".join(p.get("text") or "" for p in parts))
    return total + sum(tokens.count(json.dumps(tool)) for tool in body.get("tools", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).with_name("proxy_modes.json")))
    args = parser.parse_args()

    _, turns = longest()
    turns = turns[:args.turns]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = []
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), worker=False, upstream_url=f"http://127.0.0.1:{server.server_port}/v1")
        with Memory(settings) as memory, TestClient(create_app(memory)) as client:
            for mode in MODES:
                memory.create_session(mode, tenant="default")
            held = 0
            for checkpoint in range(args.every, len(turns) + 1, args.every):
                # the conversation up to just before the checkpoint's user message, in every mode's session
                ask = next(i for i in range(checkpoint - 1, -1, -1) if turns[i]["role"] == "user")
                if held < ask:
                    for mode in MODES:
                        memory.append(mode, turns[held:ask], tenant="default")
                held = ask + 1  # the proxy stores the asked turn (and its short reply) itself
                plain = sum(tokens.turn_tokens(t["role"], t["content"]) for t in turns[:ask + 1])
                row = {"turns": ask, "plain_text": plain}
                for mode in MODES:
                    r = client.post("/v1/chat/completions", headers={"X-Optimem-Session": mode,
                                                                     "X-Optimem-Memory": mode},
                                    json={"model": "m", "messages": [{"role": "user", "content": turns[ask]["content"]}]})
                    r.raise_for_status()
                    visual = float(r.headers["X-Optimem-Visual-Tokens"])
                    row[mode] = {"text": text_tokens(Upstream.last), "visual": visual,
                                 "total": round(text_tokens(Upstream.last) + visual, 1),
                                 "pages": int(r.headers["X-Optimem-Pages"])}
                rows.append(row)
                print(f"{ask:>5} turns: plain text {plain:>6}  " + "  ".join(
                    f"{m} {row[m]['total']:>7.1f} ({row[m]['text']} text + {row[m]['visual']:g} visual)" for m in MODES))
    server.shutdown()
    out = {"machine": machine(), "conversation_turns": len(turns), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"JSON in {args.out}")


if __name__ == "__main__":
    main()
