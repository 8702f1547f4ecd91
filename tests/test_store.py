"""The Redis schema (``memory/store.py``), key by key, on the real embedded Redis: what each write
puts where, what reads give back, what a delete leaves (nothing), which keys expire and which never
do; the locks and claims; and a DELETE that races a seal (issue 25 item 8)."""
from __future__ import annotations

import json
import time

import pytest

from optimem.errors import NotFound
from optimem.memory import index as ix, locks
from optimem.memory.lab.corpus import longest
from optimem.memory.store import JOBS, SessionKeys, Store, TurnRecord


def turn(content: str, role: str = "user", tokens: int = 5) -> TurnRecord:
    return TurnRecord(index=-1, role=role, content=content, time="2024-05-01T12:00:00Z", tokens=tokens)


def session_keys(r, k: SessionKeys) -> set[str]:
    """Every key of the session (its hash tag), as text."""
    return {key.decode() for key in r.scan_iter(match=f"om:{{{k.tenant}:{k.session}}}*", count=1000)}


@pytest.fixture
def store(memory) -> Store:
    return memory.store


def test_create_writes_meta_seal_state_and_the_tenants_session_set(store, tenant):
    k = SessionKeys(tenant, "s")
    assert store.create_session(k, '{"kind": "keep"}', keep_source=False)
    assert not store.create_session(k, '{"kind": "other"}', keep_source=True)     # the id is taken
    meta = store.meta(k)
    assert (meta.curve, meta.keep_source, meta.turns) == ('{"kind": "keep"}', False, 0)
    assert abs(meta.created - time.time()) < 60
    assert store.seal_state(k) == (0, 0)
    assert k.sessions == f"om:sessions:{{{tenant}}}" and store.r.smembers(k.sessions) == {b"s"}
    assert store.sessions(tenant) == ["s"]
    assert session_keys(store.r, k) == {k.meta, k.seal}
    assert store.r.ttl(k.meta) == -1 and store.r.ttl(k.seal) == -1 and store.r.ttl(k.sessions) == -1   # never expire
    with pytest.raises(NotFound):
        store.meta(SessionKeys(tenant, "missing"))


def test_append_numbers_turns_counts_their_tokens_and_indexes_them_in_one_transaction(store, tenant):
    k = SessionKeys(tenant, "a")
    store.create_session(k, "{}", keep_source=True)
    assert store.append(k, [turn("the blue bicycle", tokens=4), turn("a red kite", "assistant", 3)]) == 0
    assert store.append(k, [turn("green tea")]) == 2
    assert store.meta(k).turns == 3 and store.text_tokens(k) == 4 + 3 + 5
    stored = store.text_turns(k)
    assert [(t.index, t.role, t.content, t.start) for t in stored] == [
        (0, "user", "the blue bicycle", 0), (1, "assistant", "a red kite", 0), (2, "user", "green tea", 0)]
    assert json.loads(store.r.hget(k.turns, 1))["tokens"] == 3
    assert store.sources(k, [2, 0, 9]) == {2: {"role": "user", "content": "green tea", "time": "2024-05-01T12:00:00Z"},
                                           0: {"role": "user", "content": "the blue bicycle",
                                               "time": "2024-05-01T12:00:00Z"}}
    assert [doc for doc, _, _ in store.search(k, "bicycle")] == [ix.source_doc(0)]
    assert store.r.hlen(ix.docs_key(k.tag)) == 3 and int(store.r.hget(ix.stats_key(k.tag), "docs")) == 3
    with pytest.raises(NotFound):
        store.append(SessionKeys(tenant, "missing"), [turn("x")])
    assert not store.r.exists(SessionKeys(tenant, "missing").turns)              # nothing written


def test_a_seal_writes_pages_and_their_index_and_moves_finished_turns_to_source(memory, tenant):
    chat = longest()[1][:200]
    memory.create_session("sealed", tenant=tenant)
    memory.append("sealed", chat, tenant=tenant)
    store, k = memory.store, SessionKeys(tenant, "sealed")
    unsealed_from, pages = store.seal_state(k)
    assert pages >= 2
    for key in (k.pages, k.page_info, k.png, k.lines):
        assert store.r.hlen(key) == pages, key
    assert store.r.zcard(k.by_turn) == pages
    records = store.pages(k)
    assert [r.page for r in records] == list(range(pages))
    assert store.r.zscore(k.by_turn, pages - 1) == records[-1].last_turn
    assert json.loads(store.r.hget(k.page_info, 0))[:2] == [records[0].first_turn, records[0].last_turn]
    assert store.png(k, 0).startswith(b"\x89PNG") and store.lines(k, 0)
    # finished turns left the text for the source; the rest (and a turn cut by the last page) stay text
    text = {t.index for t in store.text_turns(k)}
    assert min(text) == unsealed_from and set(range(unsealed_from)) <= {int(i) for i in store.r.hkeys(k.source)}
    assert store.text_tokens(k) == sum(t.tokens for t in store.text_turns(k))
    assert store.sources(k, [0])[0]["content"] == chat[0]["content"]
    assert store.pages_holding(k, [0])[0].page == 0
    for key in (k.pages, k.png, k.lines, k.source, k.turns):
        assert store.r.ttl(key) == -1, key                  # the truth never expires


def test_a_forget_for_real_seal_keeps_no_source_and_unindexes_the_sealed_turns(memory, tenant):
    memory.create_session("forget", keep_source=False, tenant=tenant)
    memory.append("forget", longest()[1][:200], tenant=tenant)
    store, k = memory.store, SessionKeys(tenant, "forget")
    unsealed_from, pages = store.seal_state(k)
    assert pages >= 2 and not store.r.exists(k.source)
    docs = {d.decode() for d in store.r.hkeys(ix.docs_key(k.tag))}
    assert ix.source_doc(0) not in docs and ix.source_doc(unsealed_from) in docs


def test_delete_removes_every_key_of_the_session_and_its_caches(memory, tenant):
    memory.create_session("gone", tenant=tenant)
    memory.create_session("stays", tenant=tenant)
    memory.append("gone", longest()[1][:200], tenant=tenant)
    store, k = memory.store, SessionKeys(tenant, "gone")
    store.cache_tokens(k, "0", "g1024", "rev", b"tokens", ttl_s=60)
    memory.context("gone", format="openai", tenant=tenant)                      # caches a mosaic canvas
    assert any(":canvas:" in key for key in session_keys(store.r, k))
    store.claim_read(k, 0, "px1024", "reader@1", "token", 60_000)
    memory.delete_session("gone", tenant=tenant)
    assert session_keys(store.r, k) == {k.reading(0, "px1024", "reader@1")}    # a claim lapses by itself
    assert store.r.pttl(k.reading(0, "px1024", "reader@1")) > 0
    assert store.sessions(tenant) == ["stays"] and not store.r.exists(ix.vocab_key(k.tag))


def test_caches_are_set_if_absent_and_expire(store, tenant):
    k = SessionKeys(tenant, "c")
    store.cache_decoded(k, 3, "px1024", "reader@1", {"text": "first"})
    store.cache_decoded(k, 3, "px1024", "reader@1", {"text": "second"})          # HSETNX: the first stays
    assert store.cached_decoded(k, 3, "px1024", "reader@1") == {"text": "first"}
    assert store.r.hkeys(k.decoded) == [b"3:px1024:reader@1"]
    store.cache_tokens(k, "m2", "mosaic4", "rev", b"one", ttl_s=100)
    store.cache_tokens(k, "m2", "mosaic4", "rev", b"two", ttl_s=100)
    assert store.cached_tokens(k, "m2", "mosaic4", "rev") == b"one"
    assert 0 < store.r.ttl(k.token_cache("m2", "mosaic4", "rev")) <= 100
    assert k.token_cache("m2", "mosaic4", "rev") == f"{k.tag}:vt:m2:mosaic4:rev"
    store.drop_tokens(k, "m2", "mosaic4", "rev")
    assert store.cached_tokens(k, "m2", "mosaic4", "rev") is None
    store.cache_canvas(k, 0, "mosaic4", "1.5-3", b"png", ttl_s=50)
    assert store.cached_canvas(k, 0, "mosaic4", "1.5-3") == b"png" and store.cached_canvas(k, 0, "mosaic4", "1.5-4") is None
    assert 0 < store.r.ttl(k.canvas(0, "mosaic4", "1.5-3")) <= 50


def test_a_canvas_generation_names_the_session_and_how_many_of_its_pages_exist(store, tenant):
    k = SessionKeys(tenant, "g")
    assert store.canvas_generation(k, range(0, 4)) is None                      # no session
    store.create_session(k, "{}", keep_source=True)
    created = store.r.hget(k.meta, "created").decode()
    assert store.canvas_generation(k, range(0, 4)) is None                      # no page yet
    store.r.hset(k.seal, "next_page", 6)
    assert store.canvas_generation(k, range(0, 4)) == f"{created}-4"
    assert store.canvas_generation(k, range(4, 8)) == f"{created}-2"
    assert store.canvas_generation(k, range(8, 12)) is None


def test_a_read_claim_is_held_by_one_token_extended_by_it_and_released_only_by_it(store, tenant):
    k = SessionKeys(tenant, "r")
    key = k.reading(0, "px1024", "reader@1")
    assert key == f"{k.tag}:reading:0:px1024:reader@1"
    assert store.claim_read(k, 0, "px1024", "reader@1", "mine", 5_000)
    assert not store.claim_read(k, 0, "px1024", "reader@1", "theirs", 5_000)
    assert store.read_claimed(k, 0, "px1024", "reader@1") and 0 < store.r.pttl(key) <= 5_000
    assert store.claim_read(k, 0, "px1024", "reader@1", "mine", 60_000, refresh=True)
    assert store.r.pttl(key) > 5_000                                             # extended
    assert not store.claim_read(k, 0, "px1024", "reader@1", "theirs", 60_000, refresh=True)
    store.release_read(k, 0, "px1024", "reader@1", "theirs")                     # not theirs to drop
    assert store.read_claimed(k, 0, "px1024", "reader@1")
    store.release_read(k, 0, "px1024", "reader@1", "mine")
    assert not store.read_claimed(k, 0, "px1024", "reader@1")
    assert store.claim_read(k, 0, "px1024", "reader@1", "again", 5_000, refresh=True)   # expired: taken again


def test_the_compaction_lock_is_one_key_with_a_lease_that_a_second_holder_waits_for(store, tenant):
    k = SessionKeys(tenant, "l")
    here = locks.SessionLocks(lambda: store.r, lease_ms=20_000, wait_s=0.2)
    there = locks.SessionLocks(lambda: store.r, lease_ms=20_000, wait_s=0.2)    # another process's
    key = locks.compact_key(k.tag)
    assert key == f"{k.tag}:lock:compact"
    with here[k.tag] as held:
        assert held and 0 < store.r.pttl(key) <= 20_000
        start = time.monotonic()
        with there[k.tag] as also:
            assert not also and time.monotonic() - start >= 0.15                 # waited, then went on
        assert store.r.exists(key)                                               # not released by the loser
    assert not store.r.exists(key)
    with there[k.tag] as held:
        assert held


def test_jobs_go_on_the_stream_and_each_page_is_noted_as_queued(store, tenant):
    k = SessionKeys(tenant, "j")
    before = store.r.xlen(JOBS)
    store.jobs_max = 0
    try:
        assert store.enqueue(k, [("decode", 0, "g1024"), ("decode", 1, "mosaic4")]) == 0
    finally:
        del store.jobs_max
    entries = store.r.xrevrange(JOBS, count=2)
    assert store.r.xlen(JOBS) == before + 2
    assert {e[1][b"page"] for e in entries} == {b"0", b"1"} and {e[1][b"session"] for e in entries} == {b"j"}
    assert store.queued_tiers(k) == {0: "g1024", 1: "mosaic4"} and store.queued_tiers(k, [1, 5]) == {1: "mosaic4"}
    store.r.xdel(JOBS, *(e[0] for e in entries))
    store.set_retier_mark(k, 16, 2, "{}")
    assert store.retier_mark(k) == (16, 2, "{}")


def test_a_delete_that_lands_while_a_seal_is_typeset_stays_deleted(memory, tenant):
    """Issue 25 item 8: the compactor read the session, a DELETE committed, then the seal wrote
    pages, PNGs and source into the deleted session; re-creating the id showed them."""
    chat = longest()[1][:200]
    memory.create_session("race", tenant=tenant)
    real = memory.store.seal
    deleted = []

    def delete_then_seal(*args, **kwargs):        # after the compactor's reads, before its seal
        if not deleted:
            memory.delete_session("race", tenant=tenant)
            deleted.append(True)
        return real(*args, **kwargs)

    memory.store.seal = delete_then_seal
    got = memory.append("race", chat, tenant=tenant)
    assert deleted and got.sealed_pages == []
    k = SessionKeys(tenant, "race")
    assert session_keys(memory.store.r, k) == set(), sorted(session_keys(memory.store.r, k))[:5]
    assert "race" not in memory.sessions(tenant=tenant)
    del memory.store.seal
    memory.create_session("race", tenant=tenant)                # the id again: an empty session
    fresh = memory.session("race", tenant=tenant)
    assert (fresh.turns, fresh.pages) == (0, 0) and memory.sources("race", [0], tenant=tenant) == {}
