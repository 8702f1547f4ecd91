"""Load: many clients against ``optimem serve --workers 2`` on loopback, bounded in count and time.

    python bench/load.py [--clients 200] [--seconds 180] [--workers 2]        # writes bench/load.json
    python bench/load.py --soak [--clients 20] [--seconds 600] [--warmup 120] # writes bench/load_soak.json

Starts ``optimem serve --workers N`` (the parent starts the embedded Redis in a temporary folder and
hands it to its N API processes, each with its in-process model worker) and runs ``--clients``
clients in this process (asyncio; one httpx.AsyncClient each, started evenly over ``--ramp`` seconds).
Each client has its own session and its own real conversation (chitchat, one human chat per client,
cycled): it appends one turn per call, asks
for the context a chatbot would send (``format=openai``, 8k-token budget) every ``--context-every``
appends, and starts a new session (deleting the old) at ``--session-turns`` (1,500; 500 with --soak)
so the data stays bounded.
Reports throughput, p50/p99/max per call, errors (must be 0) and the RSS and CPU of every process
(the serve parent, each API process, redis-server, the resource tracker, this load generator),
sampled every ``--sample-s``. ``--soak`` defaults to 20 clients for 10 minutes and judges flatness:
each service process's largest RSS after warm-up against its RSS at the end of warm-up (within 10%);
warm-up is ``--warmup`` or, if later, the moment every client has started its second session.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, pct  # noqa: E402
from recall_load import stop_server  # noqa: E402
from soak import SESSION_TURNS, rss_mb  # noqa: E402

from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.lab.corpus import conversations  # noqa: E402

KINDS = ("append", "context", "create", "delete")


def start(data: Path, port: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "OPTIMEM_DATA_DIR": str(data), "OPTIMEM_REDIS_URL": "", "OPTIMEM_API_KEYS": "",
           "OPTIMEM_WORKER": "1", "OPTIMEM_LOG": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "serve", "--workers", str(workers),
                             "--port", str(port), "--log-level", "warning"], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"optimem serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200 \
                    and sum(map(is_api, processes(proc))) == workers:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("optimem serve did not come up in 120 s")


def processes(proc: subprocess.Popen) -> dict[str, psutil.Process]:
    """Every process of the service by role, looked up now (an API process may start helpers later):
    parent, redis-server, api1..N (uvicorn's spawned children), resource_tracker, and whatever runs
    under an API process as ``apiN/<name>``; then this load generator."""
    parent = psutil.Process(proc.pid)
    found, names, api = {"parent": parent}, {parent.pid: "parent"}, 0
    for child in sorted(parent.children(recursive=True), key=lambda c: c.pid):
        try:
            command, ppid = " ".join(child.cmdline()), child.ppid()
            name = child.name()
        except psutil.Error:
            continue  # gone meanwhile
        if ppid == parent.pid and "spawn_main" in command:
            api += 1
            name = f"api{api}"
        elif "resource_tracker" in command:
            name = "resource_tracker"
        elif "typesetter" in command:
            name = "typesetter"
        if ppid != parent.pid:
            name = f"{names.get(ppid, ppid)}/{name}"
        if name in found:
            name = f"{name}-{child.pid}"
        found[name], names[child.pid] = child, name
    found["load generator"] = psutil.Process()
    return found


def is_api(name: str) -> bool:
    return re.fullmatch(r"api\d+", name) is not None


def sample(proc: subprocess.Popen, t0: float, port: int) -> dict:
    """RSS of every process, and the client connections each API process holds (the kernel, not
    optimem, decides which process accepts a connection: keep-alive connections stay where they landed)."""
    procs = processes(proc)
    return {"t_s": round(time.monotonic() - t0, 1), "rss_mb": {name: rss_mb(p.pid) for name, p in procs.items()},
            "pids": {name: p.pid for name, p in procs.items()},
            "connections": {name: connections(p, port) for name, p in procs.items() if is_api(name)}}


def connections(p: psutil.Process, port: int) -> int | None:
    try:
        return sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in p.net_connections("tcp"))
    except psutil.Error:
        return None


def cpu_s(p: psutil.Process) -> float | None:
    try:
        times = p.cpu_times()
        return round(times.user + times.system, 1)
    except psutil.Error:
        return None


async def drive(port: int, clients: int, seconds: float, context_every: int, proc: subprocess.Popen,
                sample_s: float, ramp_s: float, session_turns: int) -> dict:
    chats = [[{"role": t["role"], "content": t["content"]} for t in turns]
             for _, turns in conversations(limit=clients, min_turns=100)]
    latency: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: list[str] = []
    samples: list[dict] = []
    rolled: list[float] = []  # when each client started its second session
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    end = t0 + seconds

    async def call(c: httpx.AsyncClient, kind: str, method: str, path: str, **kw) -> None:
        began = time.perf_counter()
        try:
            got = await c.request(method, path, **kw)
        except httpx.HTTPError as exc:
            errors.append(f"{kind}: {exc!r}"[:200])
            await asyncio.sleep(0.5)
            return
        latency[kind].append(time.perf_counter() - began)
        if got.status_code >= 300:
            errors.append(f"{kind} {got.status_code}: {got.text[:150]}")

    async def client(i: int, c: httpx.AsyncClient) -> None:
        # Clients arrive over the ramp, as real ones do. All at once, one API process would take every
        # connection: asyncio accepts all that are queued each time it wakes, and keep-alive keeps them there.
        await asyncio.sleep(ramp_s * i / clients)
        chat, generation, n = chats[i % len(chats)], 0, 0
        await call(c, "create", "POST", "/v1/sessions", json={"id": f"load{i}-0"})
        while time.monotonic() < end:
            sid = f"load{i}-{generation}"
            await call(c, "append", "POST", f"/v1/sessions/{sid}/turns", json={"turns": [chat[n % len(chat)]]})
            n += 1
            if n % context_every == 0:
                await call(c, "context", "GET", f"/v1/sessions/{sid}/context",
                           params={"format": "openai", "budget": 8000})
            if n >= session_turns:  # keep the data bounded: a new session, the old one deleted
                await call(c, "delete", "DELETE", f"/v1/sessions/{sid}")
                generation, n = generation + 1, 0
                if generation == 1:
                    rolled.append(round(time.monotonic() - t0, 1))
                await call(c, "create", "POST", "/v1/sessions", json={"id": f"load{i}-{generation}"})

    async def watch() -> None:
        """RSS of every process every ``sample_s``; a progress line every second."""
        next_sample = t0 + sample_s
        with tqdm(total=int(seconds), unit="s", file=sys.stderr, dynamic_ncols=True) as bar:
            while time.monotonic() < end:
                await asyncio.sleep(1)
                now = time.monotonic()
                if now >= next_sample:
                    samples.append(sample(proc, t0, port))
                    next_sample += sample_s
                done = sum(len(v) for v in latency.values())
                bar.n = min(int(seconds), int(now - t0))
                bar.set_postfix_str(f"{done / (now - t0):.0f} req/s, {len(errors)} errors", refresh=True)

    samples.append(sample(proc, t0, port))
    # One httpx client (one connection) per client, like separate users: one shared pool of 200
    # connections cost the load generator ~8 ms of CPU per request (httpcore scans its pool).
    async with contextlib.AsyncExitStack() as stack:
        https = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120)) for _ in range(clients)]
        await asyncio.gather(watch(), *(client(i, c) for i, c in enumerate(https)))
        elapsed = time.monotonic() - t0
        samples.append(sample(proc, t0, port))  # before the connections close
    total = sum(len(v) for v in latency.values())
    return {
        "elapsed_s": round(elapsed, 1),
        "requests": {k: len(v) for k, v in latency.items()},
        "throughput_per_s": {"all": round(total / elapsed, 1),
                             **{k: round(len(v) / elapsed, 1) for k, v in latency.items()}},
        "latency_ms": {k: {"p50": round(pct(v, 0.5) * 1000, 1), "p99": round(pct(v, 0.99) * 1000, 1),
                           "max": round(max(v) * 1000, 1)} for k, v in latency.items() if v},
        "errors": len(errors), "error_examples": errors[:10], "samples": samples,
        "all_sessions_renewed_s": max(rolled) if len(rolled) == clients else None,
    }


def flatness(samples: list[dict], warmup_s: float) -> dict:
    """Per process: RSS at the end of warm-up (the first sample at or after it), the largest after, growth."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    out = {}
    for name in after[0]["rss_mb"] if after else []:
        base, top = after[0]["rss_mb"][name], max(s["rss_mb"].get(name, 0) for s in after)
        out[name] = {"at_warmup_end_mb": base, "max_after_mb": top, "growth": round(top / base - 1, 4)}
    return out


def code() -> dict:
    """Which code was measured: the commit and how many files differed from it (a shared working tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                              text=True).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "files_changed": len(git("status", "--porcelain").splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--soak", action="store_true", help="moderate load for long, RSS judged for flatness")
    parser.add_argument("--clients", type=int, help="default 200, or 20 with --soak")
    parser.add_argument("--seconds", type=float, help="default 180, or 600 with --soak")
    parser.add_argument("--workers", type=int, default=2, help="API processes (serve --workers)")
    parser.add_argument("--context-every", type=int, default=5, help="ask for context after every N appends")
    parser.add_argument("--session-turns", type=int,
                        help=f"a client starts a new session after this many turns (default {SESSION_TURNS}, or "
                             "500 with --soak: renewed several times in 10 minutes, the data is bounded early)")
    parser.add_argument("--ramp", type=float, default=5, help="seconds over which the clients start")
    parser.add_argument("--sample-s", type=float, default=30, help="RSS of every process every N seconds")
    parser.add_argument("--warmup", type=float, default=120, help="--soak: seconds before RSS must be flat")
    parser.add_argument("--out", help="default bench/load.json, or bench/load_soak.json with --soak")
    args = parser.parse_args()
    clients = args.clients or (20 if args.soak else 200)
    seconds = args.seconds or (600 if args.soak else 180)
    session_turns = args.session_turns or (500 if args.soak else SESSION_TURNS)
    out_path = Path(args.out or ("bench/load_soak.json" if args.soak else "bench/load.json"))

    load_before, measured = [round(x, 2) for x in os.getloadavg()], code()
    with tempfile.TemporaryDirectory(prefix="optimem-load-") as tmp:
        port = free_port()
        proc = start(Path(tmp), port, args.workers)
        first = {name: p.pid for name, p in processes(proc).items()}
        try:
            out = asyncio.run(drive(port, clients, seconds, args.context_every, proc,
                                    args.sample_s, args.ramp, session_turns))
            cpu = {name: cpu_s(p) for name, p in processes(proc).items()}
        finally:
            exit_s = stop_server(proc)
    samples = out["samples"]
    names = list(dict.fromkeys(n for s in samples for n in s["rss_mb"]))  # in order of first appearance
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "mode": "soak" if args.soak else "load",
           "clients": clients, "seconds": seconds, "workers": args.workers, "context_every": args.context_every,
           "ramp_s": args.ramp, "session_turns": session_turns,
           "machine": machine(), "code": measured, "load_avg_before": load_before,
           "load_avg_after": [round(x, 2) for x in os.getloadavg()], **out,
           "processes": {name: {"pid": next(s["pids"][name] for s in samples if name in s["pids"]),
                                "rss_start_mb": next(s["rss_mb"][name] for s in samples if name in s["rss_mb"]),
                                "rss_end_mb": samples[-1]["rss_mb"].get(name), "cpu_s": cpu.get(name)}
                         for name in names},
           # uvicorn replaces a child that dies or misses its health ping: that must not happen
           "processes_replaced": sorted(n for n, pid in first.items() if samples[-1]["pids"].get(n) != pid),
           "sigterm_exit_s": round(exit_s, 2), "exit_code": proc.returncode}
    if args.soak:
        # Warm-up: --warmup (imports, thread pools, allocator arenas, font and glyph caches fill), and at
        # least until every client has started its second session: until then Redis grows by design
        # (sessions fill up to --session-turns), after that the data stays bounded.
        renewed = out["all_sessions_renewed_s"]
        out["warmup_min_s"], out["warmup_s"] = args.warmup, max(args.warmup, renewed or 0)
        out["flatness"] = flatness(out["samples"], out["warmup_s"])
        service = [v for name, v in out["flatness"].items() if name != "load generator"]  # the service's processes
        out["flat_within_10pct"] = bool(service) and all(v["growth"] <= 0.10 for v in service)
    report(out)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}")


def report(out: dict) -> None:
    m = out["machine"]
    print(f"\n{out['mode']}: {out['clients']} clients, {out['elapsed_s']} s, serve --workers {out['workers']}, "
          f"context every {out['context_every']} appends, a new session every {out['session_turns']} turns, "
          f"clients started over {out['ramp_s']} s; "
          f"{m['cores']} cores ({m['processor']}), load average before {out['load_avg_before']}, "
          f"after {out['load_avg_after']}")
    print(f"{'call':<9}{'count':>8}{'per s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for kind, n in out["requests"].items():
        if n:
            lat = out["latency_ms"][kind]
            print(f"{kind:<9}{n:>8}{out['throughput_per_s'][kind]:>8}{lat['p50']:>9}{lat['p99']:>9}{lat['max']:>9}")
    print(f"{'all':<9}{sum(out['requests'].values()):>8}{out['throughput_per_s']['all']:>8}")
    print(f"errors: {out['errors']} {out['error_examples'][:3] if out['errors'] else ''}")
    print(f"\n{'process':<17}{'pid':>8}{'RSS start MB':>14}{'RSS end MB':>12}{'CPU s':>8}")
    for name, p in out["processes"].items():
        print(f"{name:<17}{p['pid']:>8}{p['rss_start_mb']!s:>14}{p['rss_end_mb']!s:>12}{p['cpu_s']!s:>8}")
    print("client connections per API process, sampled: "
          + ", ".join(f"{n} {[s['connections'][n] for s in out['samples']]}" for n in out["samples"][0]["connections"]))
    print(f"processes replaced by uvicorn: {out['processes_replaced'] or 'none'}; SIGTERM to exit "
          f"{out['sigterm_exit_s']} s (exit code {out['exit_code']})")
    if out["mode"] == "soak":
        names = list(out["processes"])
        print("\nRSS MB every sample\n" + f"{'t (s)':>7}" + "".join(f"{n:>17}" for n in names))
        for s in out["samples"]:
            print(f"{s['t_s']:>7}" + "".join(f"{s['rss_mb'].get(n, '-')!s:>17}" for n in names))
        print(f"\nafter warm-up ({out['warmup_s']:.0f} s: --warmup {out['warmup_min_s']:.0f} s, every session "
              f"renewed at {out['all_sessions_renewed_s']} s):")
        for name, f in out["flatness"].items():
            print(f"  {name:<17} {f['at_warmup_end_mb']:>8} MB at warm-up end, max after {f['max_after_mb']:>8} MB, "
                  f"growth {f['growth']:+.1%}")
        print(f"every service process flat within 10% after warm-up: {out['flat_within_10pct']}")


if __name__ == "__main__":
    main()
