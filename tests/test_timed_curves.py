"""Time-based curves while a session is left alone (``memory/timed.py``): its pages' new tiers reach
the workers with no append, from the sweep a worker process runs."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from optimem.memory import timed
from optimem.memory.lab.corpus import longest
from tests.live import wait_for

CROSSING_S = 3      # the pages fade from crops to mosaic4 this long after they are sealed
CURVE = {"kind": "step", "unit": "seconds", "steps": [[0, "crops"], [3600, "mosaic4"]]}


def stamped(turns: list[dict], age_s: float) -> list[dict]:
    """The turns as if said ``age_s`` seconds ago."""
    said = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).isoformat(timespec="seconds")
    return [{"role": t["role"], "content": t["content"], "time": said.replace("+00:00", "Z")} for t in turns]


def test_a_session_left_alone_fades_on_the_sweep_not_on_the_next_append(memory, tenant):
    # forget-for-real: read-ahead (and the index) follow the tiers, so every tier change is sent
    memory.create_session("idle", curve=CURVE, keep_source=False, tenant=tenant)
    sealed_at = time.time()
    memory.append("idle", stamped(longest()[1][:120], 3600 - CROSSING_S), tenant=tenant)
    k = memory.keys("idle", tenant)
    queued = memory.store.queued_tiers(k)
    assert queued and set(queued.values()) == {"crops"}

    time.sleep(max(0.0, sealed_at + CROSSING_S + 1 - time.time()))     # past the crossing, no append
    assert set(memory.store.queued_tiers(k).values()) == {"crops"}      # nothing told the workers
    memory.settings.retier_sweep_s = 0.2
    sweeper = memory.sweeping()
    try:
        assert wait_for(lambda: set(memory.store.queued_tiers(k).values()) == {"mosaic4"}, timeout=20)
    finally:
        sweeper.stop()
    assert [p.tier for p in memory.pages("idle", tenant=tenant)] == ["mosaic4"] * len(queued)


def test_only_time_curves_are_swept_each_by_one_sweeper_and_deleted_sessions_leave(memory, tenant):
    r, every = memory.store.r, 60.0
    memory.create_session("by-time", curve=CURVE, tenant=tenant)
    memory.create_session("by-turns", tenant=tenant)               # the default curve counts turns
    later = time.time() + 1
    mine = [due for due in timed.claim_due(r, every, now=later) if due[0] == tenant]
    assert mine == [(tenant, "by-time")]
    assert not [due for due in timed.claim_due(r, every, now=later) if due[0] == tenant]   # claimed once
    assert [due for due in timed.claim_due(r, every, now=later + every) if due[0] == tenant] == mine

    memory.set_curve("by-time", "default", tenant=tenant)         # now it counts turns: no more sweeps
    memory.set_curve("by-turns", "daily", tenant=tenant)          # and this one counts seconds
    memory.delete_session("by-turns", tenant=tenant)
    assert not [due for due in timed.claim_due(r, every, now=later + 3 * every) if due[0] == tenant]
    memory.retier_session(tenant, "by-turns")                       # a sweep of a deleted session: nothing
