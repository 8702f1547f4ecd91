"""MCP against the JSON API in the same run: `remember` of one turn vs an HTTP append, `recall` vs
an HTTP recall.

    python bench/mcp_latency.py [--n 200] [--recalls 40] [--out bench/mcp_latency.json]

(Not bench/mcp.py: run as a script, that name would shadow the `mcp` SDK it imports.)

Starts ``optimem serve`` (embedded Redis in a temporary folder, no in-process worker) and, on the
same data directory, ``optimem mcp`` on stdio (the embedded default: the two share one Redis).
Seeds a session with 600 turns of the longest chitchat conversation (pages to recall from), then,
round by round so that all three see the same machine, sends one turn each way: HTTP append
(httpx), ``remember`` over MCP at /mcp (the official client, streamable HTTP), ``remember`` over MCP
on stdio; each into its own session, the same turns. Then recalls by the same queries (words of
real turns), each way, after one uncounted recall of the query has read its hits (cached). Latency is measured at the client, per call. Prints a table and writes JSON
(p50/p90 each; target: MCP p50 <= 1.5x the HTTP p50).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from optimem.memory.lab.corpus import longest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, pct, start_serve  # noqa: E402  (bench/'s shared helpers)


async def timed(fn) -> float:
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000


async def measure(url: str, env: dict, n: int, recalls: int) -> dict[str, list[float]]:
    chat = [{"role": t["role"], "content": t["content"]} for t in longest()[1]]
    seed, extra = chat[:600], chat[600:600 + n]
    queries = [" ".join(t["content"].split()[:4]) for t in chat[20:580:max(1, 560 // recalls)]][:recalls]
    times: dict[str, list[float]] = {k: [] for k in ("append_http", "remember_mcp_http", "remember_mcp_stdio",
                                                     "recall_first_read_http", "recall_http", "recall_mcp_http",
                                                     "recall_mcp_stdio")}
    stdio = Client(StdioServerParameters(command=sys.executable, args=["-m", "optimem.api.cli", "mcp"], env=env))
    over_http = Client(streamable_http_client(f"{url}/mcp", http_client=httpx2.AsyncClient(timeout=120)))
    async with httpx.AsyncClient(base_url=url, timeout=120) as http, stdio as local, over_http as remote:
        (await http.post("/v1/sessions", json={"id": "seed", "curve": "keep"})).raise_for_status()
        (await http.post("/v1/sessions/seed/turns", json={"turns": seed})).raise_for_status()
        for sid in ("h", "m-http", "m-stdio"):
            (await http.post("/v1/sessions", json={"id": sid})).raise_for_status()
        for _ in range(3):   # connections, code paths and the reader warm before anything counts
            await http.get("/v1/sessions/seed")
            await remote.call_tool("sessions", {})
            await local.call_tool("sessions", {})
        for i, turn in enumerate(extra):
            async def append():
                (await http.post("/v1/sessions/h/turns", json={"turns": [turn]})).raise_for_status()

            async def remember(client, sid):
                got = await client.call_tool("remember", {"session": sid, "turns": [turn]})
                assert not got.is_error, got

            calls = [("append_http", append), ("remember_mcp_http", lambda: remember(remote, "m-http")),
                     ("remember_mcp_stdio", lambda: remember(local, "m-stdio"))]
            for kind, call in calls[i % 3:] + calls[:i % 3]:    # each goes first a third of the time
                times[kind].append(await timed(call))
        for i, q in enumerate(queries):
            async def recall_http():
                (await http.post("/v1/sessions/seed/recall", json={"query": q})).raise_for_status()

            async def recall(client):
                got = await client.call_tool("recall", {"session": "seed", "query": q})
                assert not got.is_error, got

            # The first recall of a query reads its hits' lines (OCR, seconds on a CPU) and caches
            # them; that one is not counted, so all three measure the same work and their own path.
            times["recall_first_read_http"].append(await timed(recall_http))
            calls = [("recall_http", recall_http), ("recall_mcp_http", lambda: recall(remote)),
                     ("recall_mcp_stdio", lambda: recall(local))]
            for kind, call in calls[i % 3:] + calls[:i % 3]:
                times[kind].append(await timed(call))
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="one-turn appends each way")
    parser.add_argument("--recalls", type=int, default=40, help="recalls each way")
    parser.add_argument("--out", default="bench/mcp_latency.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "OPTIMEM_DATA_DIR": data, "OPTIMEM_REDIS_URL": "", "OPTIMEM_WORKER": "0",
               "OPTIMEM_API_KEYS": "", "OPTIMEM_RECALL_READ_S": "600"}
        port = free_port()
        proc = start_serve(env, port)
        try:
            times = anyio.run(measure, f"http://127.0.0.1:{port}", env, args.n, args.recalls)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    rows = {k: {"n": len(v), "p50_ms": round(pct(v, 0.5), 2), "p90_ms": round(pct(v, 0.9), 2)}
            for k, v in times.items()}
    for kind in ("remember_mcp_http", "remember_mcp_stdio"):
        rows[kind]["x_http_p50"] = round(rows[kind]["p50_ms"] / rows["append_http"]["p50_ms"], 2)
    for kind in ("recall_mcp_http", "recall_mcp_stdio"):
        rows[kind]["x_http_p50"] = round(rows[kind]["p50_ms"] / rows["recall_http"]["p50_ms"], 2)
    print(f"{'call':<22}{'n':>5}{'p50 ms':>10}{'p90 ms':>10}{'x HTTP p50':>12}")
    for kind, row in rows.items():
        print(f"{kind:<22}{row['n']:>5}{row['p50_ms']:>10.2f}{row['p90_ms']:>10.2f}"
              f"{row['x_http_p50']:>12.2f}" if 'x_http_p50' in row else f"{'-':>12}")
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
