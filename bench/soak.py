"""Soak: 20 clients for 10 minutes on loopback; is the server's memory flat?

    python bench/soak.py [--minutes 10] [--clients 20] [--out bench/soak.json]

Starts ``optimem serve`` (embedded Redis in a temporary folder, the in-process worker on, default
settings) and runs ``--clients`` clients in this process (httpx, asyncio). Each client appends real
turns (``longest()``, one per call) to its own session, asks for its context every 10th call and
recalls by query every 25th; a session that reaches 1,500 turns is deleted and started again, so
the data stays bounded. Every 10 s it samples the RSS of the server process and of its redis-server,
and the job backlog (/healthz). Warm-up is the first 20% of the run (the reader's onnxruntime arena
reaches its peak, and the sessions their size, within the first minute: 360 MB at 30 s, 368 MB at 60 s,
376 MB at 120 s in the 10-minute run); the verdict is whether the server's RSS after warm-up stays
within 10% of its first post-warm-up sample. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, pct  # noqa: E402
from recall_load import start_server, stop_server  # noqa: E402

from optimem.memory.lab.corpus import longest  # noqa: E402

SESSION_TURNS = 1500


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return float("nan")


async def soak(url: str, clients: int, seconds: float, server_pid: int, redis_pid_file: Path) -> dict:
    conversation = longest()[1]
    latency: dict[str, list[float]] = {"append": [], "context": [], "recall": []}
    errors: list[str] = []
    samples: list[dict] = []
    end = time.monotonic() + seconds
    t0 = time.monotonic()

    async def client(i: int, c: httpx.AsyncClient):
        generation, n, calls = 0, 0, 0
        sid = f"soak{i}-{generation}"
        await c.post("/v1/sessions", json={"id": sid})
        while time.monotonic() < end:
            calls += 1
            kind = "recall" if calls % 25 == 0 else "context" if calls % 10 == 0 else "append"
            start = time.perf_counter()
            try:
                if kind == "append":
                    got = await c.post(f"/v1/sessions/{sid}/turns",
                                       json={"turns": [conversation[(n + i * 37) % len(conversation)]]})
                    n += got.status_code == 200
                elif kind == "context":
                    got = await c.get(f"/v1/sessions/{sid}/context")
                else:
                    got = await c.post(f"/v1/sessions/{sid}/recall", json={"query": "what did we talk about"})
            except httpx.TransportError as exc:
                errors.append(f"{kind}: {exc!r}"[:200])
                await asyncio.sleep(0.5)
                continue
            latency[kind].append(time.perf_counter() - start)
            if got.status_code != 200:
                errors.append(f"{kind} {got.status_code}: {got.text[:150]}")
            if n >= SESSION_TURNS:
                await c.delete(f"/v1/sessions/{sid}")
                generation, n = generation + 1, 0
                sid = f"soak{i}-{generation}"
                await c.post("/v1/sessions", json={"id": sid})

    async def sampler(c: httpx.AsyncClient):
        while time.monotonic() < end:
            try:
                health = (await c.get("/healthz")).json()
            except httpx.TransportError:
                health = {}
            try:
                redis_pid = int(redis_pid_file.read_text().strip())
            except (OSError, ValueError):
                redis_pid = 0
            samples.append({"t_s": round(time.monotonic() - t0, 1), "server_rss_mb": rss_mb(server_pid),
                            "redis_rss_mb": rss_mb(redis_pid) if redis_pid else None,
                            "backlog": health.get("jobs_backlog"), "oldest_s": health.get("jobs_oldest_s"),
                            "shed": health.get("jobs_shed")})
            await asyncio.sleep(10)

    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        await asyncio.gather(sampler(c), *(client(i, c) for i in range(clients)))
    warm = seconds * 0.2
    after = [s["server_rss_mb"] for s in samples if s["t_s"] >= warm]
    growth = (max(after) / after[0] - 1) if after else float("nan")
    return {
        "clients": clients, "seconds": seconds, "samples": samples, "errors": len(errors), "error_examples": errors[:10],
        "requests": {k: len(v) for k, v in latency.items()},
        "latency_ms": {k: {"p50": round(pct(v, 0.5) * 1000, 1), "p99": round(pct(v, 0.99) * 1000, 1),
                           "max": round(max(v) * 1000, 1) if v else None} for k, v in latency.items()},
        "warmup_s": warm, "rss_after_warmup_first_mb": after[0] if after else None,
        "rss_after_warmup_max_mb": max(after) if after else None, "rss_end_mb": after[-1] if after else None,
        "rss_growth_after_warmup": round(growth, 4), "flat_within_10pct": bool(after) and growth <= 0.10,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--out", default="bench/soak.json")
    args = parser.parse_args()
    load_start = round(os.getloadavg()[0], 2)   # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="optimem-soak-") as tmp:
        port = free_port()
        proc = start_server(Path(tmp), port, OPTIMEM_WORKER="1")
        try:
            out = asyncio.run(soak(f"http://127.0.0.1:{port}", args.clients, args.minutes * 60, proc.pid,
                                   Path(tmp) / "redis" / "redis.pid"))
        finally:
            out_stop = stop_server(proc)
    out["sigterm_exit_s"] = round(out_stop, 2)
    out["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                      "load_avg_1m_start": load_start, "load_avg_1m_end": round(os.getloadavg()[0], 2)}
    print(f"{'t (s)':>7} {'server RSS MB':>14} {'redis RSS MB':>13} {'backlog':>8} {'oldest s':>9} {'shed':>6}")
    for s in out["samples"]:
        print(f"{s['t_s']:>7} {s['server_rss_mb']:>14} {s['redis_rss_mb']!s:>13} {s['backlog']!s:>8} "
              f"{s['oldest_s']!s:>9} {s['shed']!s:>6}")
    print(f"requests {out['requests']}, errors {out['errors']}, latency ms {out['latency_ms']}")
    print(f"server RSS after warm-up: first {out['rss_after_warmup_first_mb']} MB, max {out['rss_after_warmup_max_mb']} "
          f"MB, end {out['rss_end_mb']} MB, growth {out['rss_growth_after_warmup']:.1%}: flat within 10%: "
          f"{out['flat_within_10pct']}; SIGTERM to exit {out['sigterm_exit_s']} s")
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("samples", "error_examples")}))


if __name__ == "__main__":
    main()
