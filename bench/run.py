"""optimem's performance benchmarks: one command, a table, JSON.

    python bench/run.py [--quick] [--sizes 1000,10000,100000] [--out bench/results.json]

Every figure comes with a baseline measured in the same run where one exists, so the ratios hold
on a busy or a small machine even when the absolute numbers don't:

- render: ms to typeset one page of real chat text, per page size (no baseline);
- append: latency p50/p99 and turns/s of one-turn appends from 1, 8 and 32 concurrent httpx
  clients against ``optimem serve --no-worker`` on loopback (the model worker off, so reading pages
  doesn't compete), against an HTTP round trip to /healthz and a raw Redis HSET at the same
  concurrency;
- context: assembly p50/p99 (raw format, default curve, an 8k-token budget) for sessions of 1k, 10k and
  100k turns, against the full read it replaced (every page record parsed, placed and assembled: the
  path before the page index, issue 12) and against reading the same turns back as plain text
  (HGETALL of a hash of turn JSON, parsed);
- build: how fast those sessions were appended (1,000 turns a call), and Redis memory per 1k turns
  (INFO used_memory delta, the job stream left out) against the plain-text hash;
- recall: latency by turn with the page read now (cold: the decode cache emptied) against the same
  recall served from the cache, and recall by query (every page of a 1,000-turn session) from the cache.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

import httpx  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aredis  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench/common.py, also when loaded by path
from common import free_port, pct  # noqa: E402
from optimem import renderer  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.lab.corpus import conversations  # noqa: E402
from optimem.memory.redis_server import EmbeddedRedis  # noqa: E402
from optimem.memory import context  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402
from optimem.settings import Settings  # noqa: E402
from optimem.memory.store import JOBS, SessionKeys  # noqa: E402

TENANT = "bench"
BUDGET = 8000   # tokens: the context benchmark's budget (issue 12)




def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def chat(n: int) -> list[dict]:
    """``n`` real chat turns: chitchat conversations one after another, repeated if need be."""
    pool: list[dict] = []
    for _, turns in conversations():
        pool += turns
        if len(pool) >= n:
            break
    return list(islice(cycle(pool), n))


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# -- render ----------------------------------------------------------------------------------------

def bench_render(quick: bool) -> list[dict]:
    turns = [renderer.TurnText(i, t["role"], t["content"], t["time"]) for i, t in enumerate(chat(400 if quick else 1500))]
    rows = []
    for px in (512, 768, 1024, 1280):
        layout = renderer.Layout(page_px=px, font_px=Settings().font_px)
        renderer.typeset(turns[:50], layout)  # fonts and glyph caches warm
        best = min(timed(lambda: renderer.typeset(turns, layout), 3))
        pages = renderer.typeset(turns, layout)
        rows.append({"page_px": px, "pages": len(pages), "ms_per_page": ms(best / len(pages))})
    return rows


# -- append under concurrency ----------------------------------------------------------------------



def serve(data: Path, port: int, **more: str) -> subprocess.Popen:
    env = {**os.environ, "OPTIMEM_DATA_DIR": str(data), "OPTIMEM_REDIS_URL": "", "OPTIMEM_API_KEYS": "", **more}
    process = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "serve", "--no-worker", "--port", str(port),
                                "--log-level", "warning"], cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"optimem serve exited with {process.returncode}")
        time.sleep(0.2)
    process.kill()
    raise SystemExit("optimem serve did not answer /healthz within 60 s")


async def load(clients: int, seconds: float, request: Callable) -> dict:
    """``clients`` loops, each issuing ``request(client, n)`` back to back for ``seconds``."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(client: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await request(client, n)
            latencies.append(time.perf_counter() - start)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    wall = time.perf_counter() - started
    return {"requests": len(latencies), "p50_ms": ms(pct(latencies, 0.5)), "p99_ms": ms(pct(latencies, 0.99)),
            "per_s": round(len(latencies) / wall, 1)}


async def bench_append(url: str, sock: str, levels: list[int], seconds: float, turns: list[dict]) -> list[dict]:
    rows = []
    for clients in tqdm(levels, desc="append under concurrency", unit="level"):
        https = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(clients)]
        sessions = [f"c{clients}-{i}" for i in range(clients)]
        for c, s in zip(https, sessions):
            (await c.post("/v1/sessions", json={"id": s})).raise_for_status()

        async def append(i: int, n: int) -> None:
            turn = turns[(i * 7919 + n) % len(turns)]
            (await https[i].post(f"/v1/sessions/{sessions[i]}/turns", json={"turns": [turn]})).raise_for_status()

        async def health(i: int, n: int) -> None:
            (await https[i].get("/healthz")).raise_for_status()

        redises = [aredis.Redis(unix_socket_path=sock) for _ in range(clients)]

        async def hset(i: int, n: int) -> None:
            await redises[i].hset(f"bench:raw:{i}", n, json.dumps(turns[(i * 7919 + n) % len(turns)]))

        row = {"clients": clients, "append": await load(clients, seconds, append),
               "healthz": await load(clients, seconds, health), "redis_hset": await load(clients, seconds, hset)}
        for c in https:
            await c.aclose()
        for i, r in enumerate(redises):
            await r.delete(f"bench:raw:{i}")
            await r.aclose()
        rows.append(row)
    return rows


# -- sessions: build, context, memory --------------------------------------------------------------

def used_memory(r: redis.Redis) -> int:
    """Redis memory in use, less the job stream (its length depends on how often pages re-tier)."""
    stream = (r.memory_usage(JOBS, samples=0) or 0) if r.exists(JOBS) else 0
    return int(r.info("memory")["used_memory"]) - int(stream)


def full_read_context(memory: Memory, session: str, budget: int):
    """The context path before the page index (the same-run baseline): every page record read,
    parsed and placed, then assembled."""
    s = memory._open(session, TENANT)
    placed = context.place(memory.store.pages(s.k), s.curve, memory.ladder, s.meta.turns)
    making = context.Making(memory.settings.recent_floor_turns, context.made_pages(   # Memory.context's rule
        s.k.tag, memory.layout, memory.settings.tokenizer, s.curve, memory.ladder, s.meta.turns))
    built = context.assemble(memory.store.text_turns(s.k), placed, budget, ladder=memory.ladder, making=making)
    return context.raw(s.k, s.meta, memory.ladder, built, None)


def bench_sessions(memory: Memory, sizes: list[int], reps: int) -> list[dict]:
    r = memory.store.r
    rows = []
    for n in sizes:
        turns = chat(n)
        session = f"s{n}"
        k = SessionKeys(TENANT, session)
        before = used_memory(r)
        memory.create_session(session, tenant=TENANT)
        start = time.perf_counter()
        for i in tqdm(range(0, n, 1000), desc=f"building a {n:,}-turn session", unit="call", leave=False):
            memory.append(session, turns[i:i + 1000], tenant=TENANT)
        memory.settle(session, tenant=TENANT)     # background sealing: the build ends when the pages do
        build = time.perf_counter() - start
        session_bytes = used_memory(r) - before

        plain = f"bench:plain:{n}"
        before = used_memory(r)
        for i in range(0, n, 1000):
            r.hset(plain, mapping={j: json.dumps(t) for j, t in enumerate(turns[i:i + 1000], start=i)})
        plain_bytes = used_memory(r) - before

        def read_plain() -> None:
            [json.loads(v) for v in r.hgetall(plain).values()]

        count = reps if n < 100_000 else max(5, reps // 4)
        assembly = timed(lambda: memory.context(session, budget=BUDGET, tenant=TENANT), count)
        full = timed(lambda: full_read_context(memory, session, BUDGET), count)
        baseline = timed(read_plain, count)
        pages = memory.store.seal_state(k)[1]
        rows.append({"turns": n, "pages": pages, "build_s": round(build, 1), "build_turns_per_s": round(n / build),
                     "context_p50_ms": ms(pct(assembly, 0.5)), "context_p99_ms": ms(pct(assembly, 0.99)),
                     "full_read_p50_ms": ms(pct(full, 0.5)), "full_read_p99_ms": ms(pct(full, 0.99)),
                     "plain_p50_ms": ms(pct(baseline, 0.5)), "plain_p99_ms": ms(pct(baseline, 0.99)),
                     "redis_kb_per_1k_turns": round(session_bytes / 1024 / (n / 1000), 1),
                     "plain_kb_per_1k_turns": round(plain_bytes / 1024 / (n / 1000), 1)})
        r.delete(plain)
    return rows


def bench_recall(memory: Memory, reps: int, cold_reps: int) -> dict:
    """Recall from a 1,000-turn session: one page read now (cold) vs from the decode cache."""
    session = "recall"
    memory.create_session(session, tenant=TENANT)
    turns = chat(1000)
    memory.append(session, turns, tenant=TENANT)
    memory.settle(session, tenant=TENANT)
    k = SessionKeys(TENANT, session)
    target = memory.store.pages(k)[0].turns[2]["index"]   # a turn on the first page

    def by_turn() -> None:
        memory.recall(session, turn=target, tenant=TENANT)

    def cold() -> None:
        memory.store.r.delete(k.decoded)
        by_turn()

    by_turn()  # the reader's engine loaded
    cold_s = timed(cold, cold_reps)
    cached_s = timed(by_turn, reps)
    for p in tqdm(memory.pages(session, tenant=TENANT), desc="reading the recall session", unit="page", leave=False):
        memory.recall(session, turn=p.turns[0]["index"], tenant=TENANT)  # every page into the cache
    query = " ".join(turns[target]["content"].split()[:6])
    query_s = timed(lambda: memory.recall(session, query=query, tenant=TENANT), reps)
    return {"pages": memory.store.seal_state(k)[1],
            "cold_by_turn_p50_ms": ms(pct(cold_s, 0.5)), "cold_reps": cold_reps,
            "cached_by_turn_p50_ms": ms(pct(cached_s, 0.5)), "cached_by_turn_p99_ms": ms(pct(cached_s, 0.99)),
            "cached_by_query_p50_ms": ms(pct(query_s, 0.5)), "cached_by_query_p99_ms": ms(pct(query_s, 0.99))}


# -- output ----------------------------------------------------------------------------------------

def ratio(a: float, b: float) -> str:
    return f"{a / b:,.1f}x" if b else "-"


def table(report: dict) -> str:
    out = ["| benchmark | figure | baseline (same run) | ratio |", "|---|---|---|---|"]
    for r in report["render"]:
        out.append(f"| render {r['page_px']} px page | {r['ms_per_page']:.1f} ms/page | - | - |")
    for r in report["append"]:
        a, h, x = r["append"], r["healthz"], r["redis_hset"]
        out.append(f"| append 1 turn, {r['clients']} clients | p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms, "
                   f"{a['per_s']:,.0f} turns/s | GET /healthz p50 {h['p50_ms']:.1f} ms, {h['per_s']:,.0f}/s; "
                   f"Redis HSET p50 {x['p50_ms']:.2f} ms, {x['per_s']:,.0f}/s | "
                   f"{ratio(a['p50_ms'], h['p50_ms'])} /healthz, {ratio(a['p50_ms'], x['p50_ms'])} HSET |")
    for r, base in zip(report["append"], report.get("append_inline", [])):
        a, b = r["append"], base["append"]
        out.append(f"| append p99/p50, {r['clients']} clients | {a['p99_ms'] / a['p50_ms']:.1f}x (sealed after the "
                   f"answer) | {b['p99_ms'] / b['p50_ms']:.1f}x (sealed inside: p50 {b['p50_ms']:.1f} ms, p99 "
                   f"{b['p99_ms']:.1f} ms, {b['per_s']:,.0f} turns/s) | - |")
    for r in report["sessions"]:
        out.append(f"| context, {r['turns']:,} turns ({r['pages']:,} pages), {BUDGET:,}-token budget | "
                   f"p50 {r['context_p50_ms']:.1f} ms, p99 {r['context_p99_ms']:.1f} ms | full read of every page "
                   f"record p50 {r['full_read_p50_ms']:.1f} ms, p99 {r['full_read_p99_ms']:.1f} ms | "
                   f"{ratio(r['context_p50_ms'], r['full_read_p50_ms'])} |")
    for r in report["sessions"]:
        out.append(f"| context, {r['turns']:,} turns ({r['pages']:,} pages) | p50 {r['context_p50_ms']:.1f} ms, "
                   f"p99 {r['context_p99_ms']:.1f} ms | plain text p50 {r['plain_p50_ms']:.1f} ms, "
                   f"p99 {r['plain_p99_ms']:.1f} ms | {ratio(r['context_p50_ms'], r['plain_p50_ms'])} |")
    page_ms = next(r["ms_per_page"] for r in report["render"] if r["page_px"] == 1024)
    for r in report["sessions"]:
        typeset_s = r["pages"] * page_ms / 1000  # the floor: typesetting its pages and nothing else
        out.append(f"| build {r['turns']:,} turns (1,000 a call) | {r['build_s']} s, {r['build_turns_per_s']:,} turns/s "
                   f"| typesetting its {r['pages']:,} pages alone {typeset_s:.1f} s | {ratio(r['build_s'], typeset_s)} |")
    for r in report["sessions"]:
        out.append(f"| Redis memory per 1k turns ({r['turns']:,}) | {r['redis_kb_per_1k_turns']:,.0f} KB | "
                   f"plain-text hash {r['plain_kb_per_1k_turns']:,.0f} KB | "
                   f"{ratio(r['redis_kb_per_1k_turns'], r['plain_kb_per_1k_turns'])} |")
    c = report.get("recall")
    if not c:
        return "\n".join(out)
    out.append(f"| recall by turn, cold (page read now) | p50 {c['cold_by_turn_p50_ms']:,.0f} ms | "
               f"cached p50 {c['cached_by_turn_p50_ms']:.1f} ms | {ratio(c['cold_by_turn_p50_ms'], c['cached_by_turn_p50_ms'])} |")
    out.append(f"| recall by query, cached ({c['pages']} pages) | p50 {c['cached_by_query_p50_ms']:.1f} ms, "
               f"p99 {c['cached_by_query_p99_ms']:.1f} ms | by turn, cached p50 {c['cached_by_turn_p50_ms']:.1f} ms | "
               f"{ratio(c['cached_by_query_p50_ms'], c['cached_by_turn_p50_ms'])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke test")
    parser.add_argument("--sizes", help="session sizes in turns (default 1000,10000,100000; quick: 1000)")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels for the append benchmark")
    parser.add_argument("--seconds", type=float, help="seconds per concurrency level and kind (default 8)")
    parser.add_argument("--no-recall", action="store_true", help="skip the recall benchmark (it reads pages with OCR)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1000" if args.quick else "1000,10000,100000")).split(",")]
    seconds = args.seconds or (2 if args.quick else 8)
    reps = 5 if args.quick else 30

    report: dict[str, Any] = {"what": "optimem performance, each figure with its in-run baseline",
                              "machine": machine(), "command": " ".join(["python bench/run.py", *(argv or sys.argv[1:])])}
    report["render"] = bench_render(args.quick)
    with tempfile.TemporaryDirectory(prefix="optimem-bench-") as tmp:
        # Appends with pages sealed just after the answer (the default), and the same-run baseline
        # with them sealed inside the append (OPTIMEM_SEAL_BACKGROUND=0), each on a fresh server.
        for key, background in (("append_inline", "0"), ("append", "1")):
            port, data = free_port(), Path(tmp) / f"server-{key}"
            server = serve(data, port, OPTIMEM_SEAL_BACKGROUND=background)
            try:
                turns = chat(2000)
                report[key] = asyncio.run(bench_append(
                    f"http://127.0.0.1:{port}", str(data / "redis" / "redis.sock"),
                    [int(c) for c in args.clients.split(",")], seconds, turns))
            finally:
                server.terminate()  # a graceful stop: the app stops its embedded Redis
                server.wait(timeout=60)
                EmbeddedRedis(data).stop()  # in case it didn't
        memory = Memory(Settings.from_env(data_dir=Path(tmp) / "memory", redis_url="", worker=False)).open()
        try:
            report["sessions"] = bench_sessions(memory, sizes, reps)
            if not args.no_recall:
                report["recall"] = bench_recall(memory, reps, 1 if args.quick else 3)
        finally:
            memory.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
