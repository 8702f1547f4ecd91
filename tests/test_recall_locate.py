"""Recall locates its turns through the page index, not by reading every page record (issue 9):
the turns it chooses (by index, 'first', 'last', a time range, a role) and the pages it says hold
them are exactly what a brute-force pass over every page record gives, also when callers send
times out of order and when a turn runs over several pages. No page is read here (no OCR)."""
from __future__ import annotations

import random

import pytest

from optimem.memory import recall as recalling
from optimem.memory.lab.corpus import longest



def brute_force(memory, session, tenant):
    """(turn -> (role, time), turn -> sorted pages holding it) from every page record and the text."""
    s = memory._open(session, tenant)
    info, held = {}, {}
    for record in memory.store.pages(s.k):
        for span in record.turns:
            info[span["index"]] = (span["role"], span["time"])
            held.setdefault(span["index"], []).append(record.page)
    for t in memory.store.text_turns(s.k):
        info[t.index] = (t.role, t.time)
    return info, held


def expected(q, info):
    wanted = sorted(t for t, (role, when) in info.items() if q.wants(role, when))
    if isinstance(q.turn, int):
        return [q.turn] if q.turn in wanted else []
    if q.turn == "first":
        return wanted[:1]
    if q.turn == "last":
        return wanted[-1:]
    return wanted[:q.limit]


def locator(memory, session, tenant):
    s = memory._open(session, tenant)
    return memory._located(s)


def test_located_turns_match_a_pass_over_every_page(memory, tenant):
    rng = random.Random(7)
    turns = [dict(t) for t in longest()[1]]
    for t in turns[::9]:                       # callers' clocks are not always in order
        t["time"] = turns[rng.randrange(len(turns))]["time"]
    long = " ".join(t["content"] for t in turns[:400])[:14_000]
    turns[200] = {**turns[200], "content": long}           # a turn over several pages
    memory.create_session("loc", tenant=tenant)
    for i in range(0, len(turns), 500):
        memory.append("loc", turns[i:i + 500], tenant=tenant)
    info, held = brute_force(memory, "loc", tenant)
    assert len(set(map(tuple, held.values()))) > 15 and len(held[200]) >= 2    # many pages; 200 spans some

    times = sorted({when for _, when in info.values()})
    queries = [dict(turn=t) for t in (0, 1, 57, 200, 201, 1579, 1580, 5000)]
    queries += [dict(turn=w, role=r) for w in ("first", "last") for r in (None, "user", "assistant", "nobody")]
    for _ in range(20):
        lo, hi = sorted(rng.sample(times, 2))
        queries.append(dict(since=lo, until=hi, limit=rng.choice([1, 5, 40])))
        queries.append(dict(turn=rng.choice(["first", "last"]), since=lo, role=rng.choice([None, "user"])))
        queries.append(dict(until=hi, role="assistant", limit=7))
    for spec in queries:
        q = recalling.Query.of(**spec)
        got = locator(memory, "loc", tenant).chosen(q)
        assert got == expected(q, info), spec
        where = locator(memory, "loc", tenant).where(got)
        for turn in got:
            assert [p.record.page for p, _ in where[turn]] == held.get(turn, []), (spec, turn)


def test_content_recall_answers_from_located_pages_only(memory, tenant, monkeypatch):
    """A content query never reads the whole session's page records (store.pages) on a keep-source
    session, and filters its hits by role and time through the located spans."""
    turns = longest()[1][:400]
    memory.create_session("idx", tenant=tenant)
    memory.append("idx", turns, tenant=tenant)
    monkeypatch.setattr(memory.store, "pages", lambda k: pytest.fail("recall read every page record"))
    target = next(i for i, t in enumerate(turns[:150]) if t["role"] == "user" and len(t["content"].split()) > 8)
    words = " ".join(turns[target]["content"].split()[:8])
    got = memory.recall("idx", query=words, role="user", limit=3, tenant=tenant)
    assert got.hits and got.hits[0].turn == target and got.hits[0].found_by == "index"
    assert all(h.role == "user" for h in got.hits)
    none = memory.recall("idx", query=words, role="assistant", until=turns[0]["time"], tenant=tenant)
    assert all(h.role == "assistant" and h.time <= turns[0]["time"] for h in none.hits)
