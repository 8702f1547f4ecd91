"""Sealing just after the append answers (OPTIMEM_SEAL_BACKGROUND, issue 12 item 2): the append
stores its turns and returns; a thread seals the full pages. Reads of the session wait for it, so
no read sees a turn that is neither recent text nor on a page; concurrent appends still seal every
page once; closing seals what is pending; the recent text stays within budget plus a page."""
from __future__ import annotations

import threading
import time

from optimem.memory.lab.corpus import longest
from optimem.memory.service import Memory
from optimem.memory.store import SessionKeys
from tests.conftest import settings_for
from tests.test_api import every_turn_is_somewhere
from tests.test_multiprocess import check_one_session, tagged


def background(redis_server, reader, tmp_path) -> Memory:
    return Memory(settings_for(redis_server, tmp_path, seal_background=True), backend=reader).open()


def test_reads_see_every_turn_while_pages_are_sealed_after_the_append(redis_server, reader, tmp_path, tenant):
    chat = longest()[1][:260]
    memory = background(redis_server, reader, tmp_path)
    try:
        memory.create_session("bg", tenant=tenant)
        sealing = 0
        for n, turn in enumerate(chat, start=1):
            got = memory.append("bg", [turn], tenant=tenant)
            assert got.sealed_pages == [] and got.turns == n
            sealing += got.sealing
            # the very next read: every turn so far is on a page or in the recent text, exactly once
            raw = memory.context("bg", tenant=tenant)
            on_pages = {t for p in memory.pages("bg", tenant=tenant) for t in range(p.first_turn, p.last_turn + 1)}
            as_text = {t.index for t in raw.turns}
            assert on_pages | as_text == set(range(n)), n
        assert sealing > 0 and memory.session("bg", tenant=tenant).pages >= 3
        every_turn_is_somewhere(memory, tenant, "bg", chat)
        k = SessionKeys(tenant, "bg")
        text = memory.store.text_turns(k)
        assert memory.store.text_tokens(k) == sum(t.tokens for t in text)   # the running count is exact
    finally:
        memory.close(stop_server=False)


def test_concurrent_appends_seal_each_page_once_and_close_seals_what_is_pending(redis_server, reader, tmp_path,
                                                                                tenant):
    chat = longest()[1]
    sent = {t: tagged(chat[t * 80:(t + 1) * 80], t) for t in range(4)}
    memory = background(redis_server, reader, tmp_path)
    memory.create_session("many", tenant=tenant)
    threads = [threading.Thread(target=lambda turns=turns: [memory.append("many", [t], tenant=tenant) for t in turns])
               for turns in sent.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    memory.close(stop_server=False)            # no settle first: closing seals what the appends left
    k = SessionKeys(tenant, "many")
    assert check_one_session(memory.store, tenant, "many", sent) >= 3
    assert memory.store.text_tokens(k) <= memory.settings.recent_tokens + 2000   # within budget + a page


def test_a_read_waits_for_the_seal_its_session_is_owed(redis_server, reader, tmp_path, tenant, monkeypatch):
    from optimem.memory import compactor

    real = compactor.compact

    def slow(*args, **kwargs):                 # a seal that takes its time, on the sealer thread
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(compactor, "compact", slow)
    memory = background(redis_server, reader, tmp_path)
    try:
        memory.create_session("slow", tenant=tenant)
        got = memory.append("slow", longest()[1][:200], tenant=tenant)
        k = SessionKeys(tenant, "slow")
        assert got.sealing and memory.store.seal_state(k)[1] == 0     # answered before any page was sealed
        assert memory.session("slow", tenant=tenant).pages >= 2         # the read waited for them
    finally:
        memory.close(stop_server=False)


def test_the_typesetter_process_gives_the_renderers_pages_and_survives_its_child_dying():
    from optimem import renderer
    from optimem.memory.typesetter import Typesetter

    chat = longest()[1][:150]
    turns = [renderer.TurnText(i, t["role"], t["content"], t["time"], 0) for i, t in enumerate(chat)]
    layout = renderer.Layout(page_px=1024, font_px=12, line_spacing=1.15)
    here = renderer.typeset(turns, layout, full_only=True)
    typeset = Typesetter()
    try:
        there = typeset(turns, layout, full_only=True)
        assert len(there) == len(here) >= 1
        assert [(p.png, p.lines, p.last_turn, p.end_offset) for p in there] == \
               [(p.png, p.lines, p.last_turn, p.end_offset) for p in here]      # the same bytes
        child = typeset._child
        child.kill()
        child.wait()
        assert [p.png for p in typeset(turns, layout, full_only=True)] == [p.png for p in here]  # restarted
        assert typeset._child.pid != child.pid
    finally:
        typeset.close()
    assert child.poll() is not None and typeset._child is None    # closing ends the child
