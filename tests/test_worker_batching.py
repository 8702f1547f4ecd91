"""The model worker runs jobs at once per kind, so a GPU backend can batch them, and a long decode
never holds up the encodes behind it; /healthz says "warming" until start-up warm-up is done."""
from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from optimem.api.app import create_app
from optimem.memory import jobs
from optimem.memory.service import Memory
from optimem.memory.store import SessionKeys
from tests.conftest import settings_for


def test_a_long_decode_never_holds_up_the_encodes_behind_it(memory, tenant):
    r, store = memory.store.r, memory.store
    k = SessionKeys(tenant, "lanes")
    store.enqueue(k, [("decode", 0, "g1024")] + [("encode", page, "g1024") for page in range(1, 5)])
    finished: dict[str, list[float]] = {"decode": [], "encode": []}
    running, most = set(), [0]
    lock = threading.Lock()

    def handle(job: dict) -> None:
        if (job["tenant"], job["session"]) != (tenant, "lanes"):
            return      # the job stream is shared: other tests' jobs are not this test's
        with lock:
            running.add(job["page"])
            most[0] = max(most[0], len([p for p in running if p != "0"]))
        time.sleep(1.5 if job["kind"] == "decode" else 0.2)
        with lock:
            running.discard(job["page"])
            finished[job["kind"]].append(time.monotonic())

    worker = jobs.Worker(r, handle, name=f"lanes-{tenant}", batch=4).start()
    try:
        deadline = time.monotonic() + 20
        while jobs.backlog(r) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop(timeout_s=5)
    assert jobs.backlog(r) == 0 and len(finished["encode"]) == 4 and len(finished["decode"]) == 1
    assert max(finished["encode"]) < finished["decode"][0]   # every encode done while the decode ran
    assert most[0] == 4                                      # the four encodes ran at once: one batch


class SlowToWarm:
    """The CPU reader, with a start-up warm-up that waits for the test."""

    def __init__(self, inner):
        self.inner, self.release = inner, threading.Event()
        self.name, self.revision, self.ladder = inner.name, inner.revision, inner.ladder

    def warm(self) -> None:
        self.release.wait(10)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_healthz_says_warming_until_warm_up_is_done(redis_server, reader, tmp_path):
    backend = SlowToWarm(reader)
    with Memory(settings_for(redis_server, tmp_path), backend=backend) as m, TestClient(create_app(m)) as c:
        assert c.get("/healthz").json()["warming"] is True
        backend.release.set()
        deadline = time.monotonic() + 10
        while "warming" in (body := c.get("/healthz").json()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "warming" not in body and body["status"] == "ok"


def test_the_in_process_worker_takes_its_batch_from_the_settings(redis_server, reader, tmp_path):
    for setting, expected in ((0, 1), (3, 3)):   # 0: one job at a time for the CPU reader
        with Memory(settings_for(redis_server, tmp_path, worker=True, worker_batch=setting), backend=reader) as m:
            assert m.worker is not None and m.worker.batch == expected
    assert jobs.batch_for(0, encodes=True) == 8
