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


def fill(http, headers, sid, turns):
    assert http.post("/v1/sessions", json={"id": sid}, headers=headers).status_code == 201
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
    fill(http, ha, "flood", chat)
    fill(http, hb, "calm", chat)
    # b alone: each recall reads one sealed turn's lines (not cached yet)
    alone = [recall_turn(http, hb, "calm", n) for n in (5, 40, 80)]
    assert all(status == 200 for status, _, _ in alone)
    base = statistics.median(s for _, s, _ in alone)
    before = refused(http, "tenant_recalls")

    stop, a_status = threading.Event(), []

    def flood(offset):
        n = offset
        while not stop.is_set():
            status, _, r = recall_turn(http, ha, "flood", n % 300)
            a_status.append((status, r.headers.get("retry-after")))
            n += 8

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(8)]   # 8 at once, more than the 4 slots
    for t in threads:
        t.start()
    time.sleep(1.0)
    busy = [recall_turn(http, hb, "calm", n) for n in (10, 50, 90, 120, 150)]
    stop.set()
    for t in threads:
        t.join(60)

    assert [status for status, _, _ in busy] == [200] * 5          # never 503: a could take only 2 slots
    assert all(r.json()["hits"][0]["text"] for _, _, r in busy)
    under = statistics.median(s for _, s, _ in busy)
    assert under <= 3 * base + 0.5, (base, under)                 # a's burst shares 2 cores with b
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
