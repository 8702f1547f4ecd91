"""SIGTERM stops `optimem serve` in a few seconds after load (it took 23-35 s: redis-py retrying on
the embedded Redis as it stopped, the worker joined for 30 s, in-flight recalls waited on), and
every acknowledged turn is there after a restart."""
from __future__ import annotations

import signal
import threading
import time

import httpx

from optimem.memory.lab.corpus import longest
from optimem.memory.service import Memory
from optimem.settings import Settings
from tests.test_api import every_turn_is_somewhere
from tests.live import free_port
from tests.test_load import recall_load

APPENDERS = 6


def test_sigterm_under_load_stops_in_seconds_and_loses_no_acknowledged_turn(tmp_path):
    bench = recall_load()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    conversation = longest()[1]
    proc = bench.start_server(tmp_path, port, OPTIMEM_WORKER="1", OPTIMEM_RECENT_TOKENS="300",
                              OPTIMEM_RECALL_READ_S="60")
    acked = {i: 0 for i in range(APPENDERS)}
    stop = threading.Event()

    def appender(i: int):
        with httpx.Client(base_url=url, timeout=30) as c:
            n = 0
            while not stop.is_set():
                try:
                    got = c.post(f"/v1/sessions/a{i}/turns", json={"turns": [conversation[n]]})
                except httpx.TransportError:
                    return
                if got.status_code != 200:
                    return
                n += 1
                acked[i] = n

    def recaller():
        with httpx.Client(base_url=url, timeout=90) as c:
            while not stop.is_set():
                try:
                    c.post("/v1/sessions/big/recall", json={"query": "what did we talk about"})
                except httpx.TransportError:
                    return

    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            for i in range(APPENDERS):
                c.post("/v1/sessions", json={"id": f"a{i}"}).raise_for_status()
            c.post("/v1/sessions", json={"id": "big", "curve": "keep"}).raise_for_status()
            c.post("/v1/sessions/big/turns", json={"turns": conversation[:600]}).raise_for_status()
        threads = [threading.Thread(target=appender, args=(i,)) for i in range(APPENDERS)]
        threads += [threading.Thread(target=recaller) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(4)
        assert all(acked.values()), acked
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - start
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    for t in threads:
        t.join(timeout=30)
    print(f"\nSIGTERM to exit: {took:.2f} s; acknowledged turns: {sum(acked.values())}")
    assert code in (0, -signal.SIGTERM)
    assert took < 8
    assert not (tmp_path / "redis" / "redis.pid").exists() or not _redis_alive(tmp_path)

    memory = Memory(Settings(data_dir=tmp_path, recent_tokens=300, worker=False)).open()
    try:
        for i, n in acked.items():
            stored = memory.session(f"a{i}", tenant="default").turns
            assert stored >= n, (i, stored, n)           # an unacknowledged append may have landed too
            every_turn_is_somewhere(memory, "default", f"a{i}", conversation[:stored])
    finally:
        memory.close()


def _redis_alive(data_dir) -> bool:
    from optimem.memory.redis_server import EmbeddedRedis

    return EmbeddedRedis(data_dir)._alive()
