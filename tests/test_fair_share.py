"""Fair shares: one tenant's burst of recalls or appends is refused past its share (429 with
Retry-After), counted in Redis so every API process shares the caps, and another tenant keeps
being answered as before."""
from __future__ import annotations

import statistics
import threading
import time

import pytest
import redis
from fastapi.testclient import TestClient

from optimem.api.app import create_app
from optimem.memory.lab.corpus import longest
from optimem.memory.quotas import Quotas


@pytest.fixture
def two(memory, tenant):
    """The API with two tenants; (headers for a, headers for b, client, a, b)."""
    a, b = f"{tenant}a", f"{tenant}b"
    memory.settings.api_keys = f"ka-{tenant}:{a},kb-{tenant}:{b}"
    memory.settings.recall_concurrency = 4
    memory.settings.tenant_recalls = 2
    memory.settings.tenant_appends_per_s = 3
    with TestClient(create_app(memory)) as http:
        yield {"Authorization": f"Bearer ka-{tenant}"}, {"Authorization": f"Bearer kb-{tenant}"}, http, a, b


def fill(http, headers, sid, turns, **body):
    assert http.post("/v1/sessions", json={"id": sid, **body}, headers=headers).status_code == 201
    assert http.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}, headers=headers).status_code == 200


def recall_turn(http, headers, sid, turn) -> tuple[int, float, dict]:
    started = time.perf_counter()
    r = http.post(f"/v1/sessions/{sid}/recall", json={"turn": turn}, headers=headers)
    return r.status_code, time.perf_counter() - started, r


def refused(http, reason) -> float:
    for row in http.get("/metrics", headers=http.headers).text.splitlines():
        if row.startswith(f'optimem_refused_total{{reason="{reason}"}}'):
            return float(row.split()[-1])
    return 0.0


def test_a_tenant_flooding_recalls_gets_429s_and_the_other_tenant_is_answered_as_usual(two):
    ha, hb, http, a, b = two
    http.headers.update(hb)
    chat = longest()[1][:400]
    # a's recalls are slow ones: a session that forgets for real must read its pages to search them
    # (seconds a page; each recall waits up to OPTIMEM_RECALL_READ_S = 2 s), holding a slot meanwhile
    http.app.state.memory.settings.recall_read_s = 2
    fill(http, ha, "flood", chat[:250], keep_source=False)
    fill(http, hb, "calm", chat)
    # b's recalls are of its recent turns (text: no page read): what they measure is the slots, not
    # the reader, which every tenant shares (one read thread a process: a page a's recall reads
    # first delays b's reads of pages; the share bounds how many of a's recalls wait on them)
    recent = list(range(http.get("/v1/sessions/calm", headers=hb).json()["text_turns_from"], 400))
    assert len(recent) >= 8
    alone = [recall_turn(http, hb, "calm", n) for n in recent[:3]]
    assert all(status == 200 for status, _, _ in alone)
    base = statistics.median(s for _, s, _ in alone)
    before = refused(http, "tenant_recalls")

    stop, a_status = threading.Event(), []

    def flood(offset):
        words = ["hello", "sleep", "married", "movie", "dog", "school", "work", "music"]
        n = offset
        while not stop.is_set():
            r = http.post("/v1/sessions/flood/recall", json={"query": words[n % len(words)]}, headers=ha)
            a_status.append((r.status_code, r.headers.get("retry-after")))
            n += 1

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(8)]   # 8 at once, twice the 4 slots
    for t in threads:
        t.start()
    time.sleep(1.0)
    busy = [recall_turn(http, hb, "calm", n) for n in recent[3:8]]
    stop.set()
    for t in threads:
        t.join(60)
    # The page reads a's recalls started go on after them: let them end before the test does (a
    # process that exits in the middle of one aborts in onnxruntime)
    http.app.state.memory.settings.recall_read_s = 300
    assert http.post("/v1/sessions/flood/recall", json={"query": "hello"}, headers=ha).json()["pages_unread"] == 0

    assert [status for status, _, _ in busy] == [200] * 5          # never 503: a could take only 2 slots
    assert all(r.json()["hits"] and r.json()["hits"][0]["text"] for _, _, r in busy), [(s, r.json()) for s, _, r in busy]
    under = statistics.median(s for _, s, _ in busy)
    # a's flood (its clients in this very process, sharing its GIL) and its 2 recalls share 2 cores with b
    assert under <= 3 * base + 1.0, (base, under)
    assert (429, "1") in a_status and any(s == 200 for s, _ in a_status)
    assert not [s for s, _ in a_status if s not in (200, 429)]
    assert refused(http, "tenant_recalls") - before == sum(s == 429 for s, _ in a_status)


def test_the_recall_share_is_counted_in_redis_so_every_process_shares_it(two, memory, redis_server):
    ha, hb, http, a, b = two
    fill(http, ha, "s", [{"role": "user", "content": "hello there"}])
    elsewhere = Quotas(redis.Redis(unix_socket_path=str(redis_server.socket)), recalls=2, appends_per_s=0,
                       lease_s=60)                                  # another API process's view
    leases = [elsewhere.take_recall(a), elsewhere.take_recall(a)]
    assert all(leases) and elsewhere.take_recall(a) is None
    r = http.post("/v1/sessions/s/recall", json={"query": "hello"}, headers=ha)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and "OPTIMEM_TENANT_RECALLS" in r.json()["detail"]
    assert http.post("/v1/sessions/s/recall", json={"query": "hello"}, headers=hb).status_code == 404  # b's own
    elsewhere.give_back_recall(a, leases[0])
    assert http.post("/v1/sessions/s/recall", json={"query": "hello"}, headers=ha).status_code == 200
    assert elsewhere.take_recall(a) is not None      # the API gave its lease back when its recall ended


def test_a_lease_a_dead_process_never_gave_back_expires(redis_server):
    q = Quotas(redis.Redis(unix_socket_path=str(redis_server.socket)), recalls=1, appends_per_s=0, lease_s=1)
    assert q.take_recall("dead-owner") and q.take_recall("dead-owner") is None
    time.sleep(1.1)
    assert q.take_recall("dead-owner")


def test_appends_past_the_tenants_rate_get_429_and_the_other_tenant_appends(two):
    ha, hb, http, a, b = two
    http.headers.update(ha)
    for h in (ha, hb):
        assert http.post("/v1/sessions", json={"id": "s"}, headers=h).status_code == 201
    before = refused(http, "tenant_appends")
    answers = []
    for i in range(12):
        r = http.post("/v1/sessions/s/turns", json={"turns": [{"role": "user", "content": f"turn {i}"}]}, headers=ha)
        answers.append((r.status_code, r.headers.get("retry-after"), time.time()))
    assert (429, "1") in [(s, w) for s, w, _ in answers]
    per_second: dict[int, int] = {}
    for s, _, when in answers:
        per_second[int(when)] = per_second.get(int(when), 0) + (s == 200)
    assert max(per_second.values()) <= 4       # 3 a second (a window may straddle a tick of our clock)
    stored = http.get("/v1/sessions/s", headers=ha).json()["turns"]
    assert stored == sum(s == 200 for s, _, _ in answers)            # a refused append stored nothing
    assert http.post("/v1/sessions/s/turns", json={"turns": [{"role": "user", "content": "b"}]},
                     headers=hb).status_code == 200
    assert refused(http, "tenant_appends") - before == sum(s == 429 for s, _, _ in answers)
