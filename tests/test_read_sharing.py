"""No request can starve others: page reads are shared (one read per page and tier, however many
recalls and workers want it), run on the reader's own bounded pool, and waited for with a deadline,
so a recall answers within its read budget and /healthz and appends stay fast while pages are read.
"""
from __future__ import annotations

import threading
import time

import pytest

from optimem.memory.lab.corpus import longest
from optimem.memory.store import SessionKeys

TURNS = 120          # a few pages: each read costs CPU-seconds here


def conversation(n: int = TURNS) -> list[dict]:
    return longest()[1][:n]


@pytest.fixture
def decodes(memory, monkeypatch):
    """Every read the backend makes, one entry per view: "page" for a whole page, "turn" for one
    turn's lines (a view without the page's header boxes)."""
    calls: list[str] = []
    real = memory.backend.decode

    def counting(views):
        calls.extend("page" if any(line.kind == "header" for line in v.lines) else "turn" for v in views)
        return real(views)

    monkeypatch.setattr(memory.backend, "decode", counting)
    return calls


def wait_cached(memory, k: SessionKeys, pages: int, limit_s: float = 120) -> None:
    """Until every page has a decoded cache entry (reads left running in the background)."""
    end = time.monotonic() + limit_s
    while memory.store.r.hlen(k.decoded) < pages:
        assert time.monotonic() < end, "background reads never landed in the cache"
        time.sleep(0.2)


def test_a_burst_of_recalls_reads_each_page_once_and_starves_nobody(api, memory, tenant, decodes):
    budget = 4
    memory.settings.recall_read_s = budget
    api.post("/v1/sessions", json={"id": "burst", "curve": "keep"})
    api.post("/v1/sessions/burst/turns", json={"turns": conversation(240)})
    api.post("/v1/sessions", json={"id": "other"})
    pages = api.get("/v1/sessions/burst").json()["pages"]
    assert 2 <= pages <= 4
    tiers = {p.page: p.tier for p in memory.pages("burst", tenant=tenant)}
    k = SessionKeys(tenant, "burst")
    assert memory.store.r.hlen(k.decoded) == 0 and not decodes

    recalls: list[tuple[float, dict]] = []
    health: list[float] = []
    appends: list[float] = []
    done = threading.Event()

    def recall():
        start = time.monotonic()
        got = api.post("/v1/sessions/burst/recall", json={"query": "what did we talk about"})
        assert got.status_code == 200
        recalls.append((time.monotonic() - start, got.json()))

    def probe():
        i = 0
        while not done.is_set():
            start = time.monotonic()
            assert api.get("/healthz").status_code == 200
            health.append(time.monotonic() - start)
            if i % 3 == 0:
                start = time.monotonic()
                assert api.post("/v1/sessions/other/turns",
                                json={"turns": [{"role": "user", "content": f"ping {i}"}]}).status_code == 200
                appends.append(time.monotonic() - start)
            i += 1
            time.sleep(0.05)

    def worker_jobs():   # the background worker asks for the same pages through the same path
        for page, tier in tiers.items():
            memory.handle_job({"kind": "decode", "tenant": tenant, "session": "burst", "page": str(page),
                               "tier": tier})

    prober = threading.Thread(target=probe)
    prober.start()
    threads = [threading.Thread(target=recall) for _ in range(8)] + [threading.Thread(target=worker_jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    prober.join(timeout=30)
    wait_cached(memory, k, pages)

    times = sorted(t for t, _ in recalls)
    print(f"\npages={pages} budget={budget}s recalls: {[round(t, 2) for t in times]} "
          f"healthz: n={len(health)} max={max(health):.3f}s appends: n={len(appends)} max={max(appends):.3f}s "
          f"decodes={len(decodes)}")
    assert len(recalls) == 8
    assert decodes.count("page") == pages             # each page read exactly once, by whoever came first
    assert max(times) < budget + 3                    # within the read budget (plus answering it)
    assert all(r["pages_read"] + r["pages_unread"] == pages for _, r in recalls)
    assert health and max(health) < 1.0              # nothing waits behind the reads
    assert appends and max(appends) < 1.0
    reads = len(decodes)
    again = api.post("/v1/sessions/burst/recall", json={"query": "what did we talk about"}).json()
    assert again["pages_unread"] == 0 and len(decodes) == reads   # all from the cache now


def test_a_recall_past_its_deadline_answers_in_time_and_the_read_lands_later(memory, tenant, decodes, monkeypatch):
    real = memory.backend.decode

    def slow(views):      # a page read that surely outlasts the budget, however fast the machine
        time.sleep(1.5)
        return real(views)

    monkeypatch.setattr(memory.backend, "decode", slow)
    memory.settings.recall_read_s = 0.3
    memory.create_session("late", curve="keep", tenant=tenant)
    memory.append("late", conversation(), tenant=tenant)
    start = time.monotonic()
    got = memory.recall("late", turn=0, tenant=tenant)
    took = time.monotonic() - start
    assert got.pages_unread == 1 and got.pages_read == 0 and not got.hits
    assert took < 0.3 + 1.0
    k = SessionKeys(tenant, "late")
    wait_cached(memory, k, 1)                         # the read went on in the background
    memory.settings.recall_read_s = 60
    again = memory.recall("late", turn=0, tenant=tenant)
    assert again.pages_read == 1 and again.pages_unread == 0 and again.hits[0].page == 0
    assert len(decodes) == 1                          # the page was read once, not once per recall


def test_a_read_claimed_by_another_process_is_waited_for_not_repeated(memory, tenant, decodes):
    memory.settings.recall_read_s = 0.5
    memory.create_session("claimed", curve="keep", tenant=tenant)
    memory.append("claimed", conversation(), tenant=tenant)
    k = SessionKeys(tenant, "claimed")
    placed = memory.pages("claimed", tenant=tenant)[0]
    tier = memory.ladder[placed.tier]
    ckey = memory.reader.cache_key(tier)
    # Another API process is reading page 0: its claim is in Redis.
    assert memory.store.claim_read(k, 0, ckey, memory.reader.id, "someone-else", 30_000)
    assert memory.store.r.ttl(k.reading(0, ckey, memory.reader.id)) > 0
    got = memory.recall("claimed", turn=0, tenant=tenant)
    assert got.pages_unread == 1 and not decodes      # waited for the other process, did not read
    # That process dies without caching: its claim goes, and the page is read here instead, once.
    memory.store.r.delete(k.reading(0, ckey, memory.reader.id))
    wait_cached(memory, k, 1, limit_s=60)
    assert len(decodes) == 1
    end = time.monotonic() + 10
    while memory.store.r.exists(k.reading(0, ckey, memory.reader.id)):  # released after the read
        assert time.monotonic() < end, "the read claim was not released"
        time.sleep(0.05)
    memory.settings.recall_read_s = 60
    assert memory.recall("claimed", turn=0, tenant=tenant).pages_read == 1 and len(decodes) == 1
