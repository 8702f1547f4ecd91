"""The job stream is bounded: past OPTIMEM_JOBS_MAX entries the oldest read-ahead jobs are shed
(never a turn: jobs are only caches' read-ahead), counted, and the backlog, its age and the shed
count are visible to key holders on /healthz and on /metrics."""
from __future__ import annotations

import time

from optimem.memory import jobs
from optimem.memory.store import JOBS, SessionKeys


def fields(entry) -> dict:
    return {a.decode(): b.decode() for a, b in entry[1].items()}


def test_the_oldest_jobs_are_shed_past_the_cap_and_counted(memory, tenant):
    r, store = memory.store.r, memory.store
    store.jobs_max = 5
    k = SessionKeys(tenant, "bp")
    _, _, shed_before = store.jobs_state()
    store.enqueue(k, [("decode", 0, "base")])       # trims whatever earlier tests left to the cap
    waiting, _, shed_mid = store.jobs_state()
    assert waiting <= 5
    shed = store.enqueue(k, [("decode", page, "base") for page in range(1, 13)])
    backlog, oldest, shed_after = store.jobs_state()
    assert backlog == 5 == r.xlen(JOBS) == jobs.backlog(r)
    assert shed == waiting + 12 - 5 and shed_after - shed_mid == shed and shed_mid >= shed_before
    kept = [int(fields(e)["page"]) for e in r.xrange(JOBS)]
    assert kept == [8, 9, 10, 11, 12]                # the newest stay, the oldest went first
    assert 0 <= oldest < 60
    time.sleep(0.3)
    assert store.jobs_state()[1] >= 0.25             # the age grows while nobody works
    # the page notes still say "queued": a shed page is read when wanted, or ahead at its next tier
    assert store.queued_tiers(k)[3] == "base"


def test_a_worker_deletes_what_it_did_so_the_stream_is_the_backlog(memory, tenant):
    r, store = memory.store.r, memory.store
    store.jobs_max = 50
    k = SessionKeys(tenant, "bp2")
    store.enqueue(k, [("decode", page, "base") for page in range(4)])
    done: list[dict] = []
    worker = jobs.Worker(r, done.append, name=f"test-{tenant}")
    while worker.run_once(block_ms=100):
        pass
    assert [int(j["page"]) for j in done if j["session"] == "bp2"] == [0, 1, 2, 3]
    assert store.jobs_state()[:2] == (0, 0.0) and jobs.backlog(r) == 0
    assert not r.xpending(JOBS, jobs.GROUP)["pending"]


def test_turns_are_never_shed(api, memory):
    memory.store.jobs_max = 1
    api.post("/v1/sessions", json={"id": "full"})
    from optimem.memory.lab.corpus import longest

    turns = longest()[1][:300]
    got = api.post("/v1/sessions/full/turns", json={"turns": turns}).json()
    assert got["sealed_pages"] and memory.store.r.xlen(JOBS) <= 1
    assert api.get("/v1/sessions/full").json()["turns"] == 300
    recall = api.post("/v1/sessions/full/recall", json={"turn": 0}).json()
    assert recall["hits"] and recall["hits"][0]["turn"] == 0


def test_healthz_shows_the_backlog_its_age_and_shed_jobs_only_to_key_holders(api, memory, tenant):
    memory.store.jobs_max = 3
    memory.store.enqueue(SessionKeys(tenant, "h"), [("decode", p, "base") for p in range(6)])
    mine = api.get("/healthz").json()
    assert mine["jobs_backlog"] == 3 and mine["jobs_shed"] >= 3 and mine["jobs_oldest_s"] >= 0
    anyone = api.get("/healthz", headers={"Authorization": ""}).json()
    assert "jobs_backlog" not in anyone and "jobs_shed" not in anyone and "jobs_oldest_s" not in anyone
    scrape = api.get("/metrics").text
    assert "optimem_jobs_backlog 3.0" in scrape and "optimem_jobs_max 3.0" in scrape
