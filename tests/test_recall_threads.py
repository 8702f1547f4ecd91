"""How recalls share the process (issue 10): a bounded number of slots, threads started with the
app (never one per recall on the event loop), a few recalls computing at a time (``COMPUTE``) with
the turn handed on while a recall waits for reads, and the reader loaded at start."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from fastapi.testclient import TestClient

from optimem.api import recall_slots as slots_module
from optimem.api.app import create_app
from optimem.memory.concurrency import COMPUTE, Gate
from optimem.memory.reading import Reader
from optimem.memory.service import Memory
from tests.conftest import settings_for


def test_turns_let_n_threads_in_and_a_waiting_thread_hands_its_turn_on():
    turns = Gate(1)
    order: list[str] = []
    waiting, other_done = threading.Event(), threading.Event()

    def first():
        with turns.held():
            order.append("first in")
            with turns.aside():          # e.g. waiting for a page read
                waiting.set()
                assert other_done.wait(10)
            order.append("first back")   # only once the other thread gave the turn back

    def second():
        assert waiting.wait(10)
        with turns.held():               # the only turn: free because first stepped aside
            order.append("second in")
        other_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == ["first in", "second in", "first back"]


def test_turns_nest_and_aside_is_a_no_op_without_a_turn():
    turns = Gate(1)
    with turns.aside():                  # holds none: nothing to hand on
        pass
    with turns.held():
        with turns.held():               # a nested hold does not wait for itself
            pass
    with turns.held():                   # and the turn was given back once
        pass


def test_a_recall_thread_waiting_for_a_read_leaves_its_turn_to_others():
    """Reader.wait steps aside: threads holding every turn and waiting on reads block nobody."""
    futures = [Future() for _ in range(2)]   # COMPUTE lets 2 in
    both_waiting = threading.Barrier(3)
    results: list = []

    def recall_like(future: Future):
        with COMPUTE.held():
            both_waiting.wait(10)
            results.append(Reader.wait(future, time.monotonic() + 10))

    threads = [threading.Thread(target=recall_like, args=(f,)) for f in futures]
    for t in threads:
        t.start()
    both_waiting.wait(10)
    got_turn = threading.Event()

    def third():
        with COMPUTE.held():
            got_turn.set()

    extra = threading.Thread(target=third)
    extra.start()
    assert got_turn.wait(10), "a third thread never got a turn while the two holders waited for reads"
    for i, f in enumerate(futures):
        f.set_result({"page": i})
    for t in threads + [extra]:
        t.join(10)
    assert sorted(r["page"] for r in results) == [0, 1]


@pytest.fixture
def app_with(memory, tenant):
    """A TestClient over ``memory`` with settings changed before the app starts."""
    def make(**settings):
        for name, value in settings.items():
            setattr(memory.settings, name, value)
        memory.settings.api_keys = f"key-{tenant}:{tenant}"
        client = TestClient(create_app(memory))
        client.headers["Authorization"] = f"Bearer key-{tenant}"
        return client
    return make


def test_a_recall_past_every_slot_is_refused_503_with_retry_after_and_the_slot_comes_back(
        app_with, memory, monkeypatch):
    monkeypatch.setattr(slots_module, "SLOT_WAIT_S", 0.2)
    entered, release = threading.Event(), threading.Event()
    real = memory.recall

    def held_recall(*args, **kwargs):
        entered.set()
        assert release.wait(20)
        return real(*args, **kwargs)

    with app_with(recall_concurrency=1, recall_read_s=7) as client:
        client.post("/v1/sessions", json={"id": "s"})
        client.post("/v1/sessions/s/turns", json={"turns": [{"role": "user", "content": "hello there"}]})
        monkeypatch.setattr(memory, "recall", held_recall)
        first: list = []
        t = threading.Thread(target=lambda: first.append(client.post("/v1/sessions/s/recall", json={"turn": 0})))
        t.start()
        assert entered.wait(20)
        busy = client.post("/v1/sessions/s/recall", json={"turn": 0})
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "7"
        assert "OPTIMEM_RECALL_CONCURRENCY = 1" in busy.json()["detail"]
        release.set()
        t.join(20)
        assert first[0].status_code == 200
        monkeypatch.setattr(memory, "recall", real)
        assert client.post("/v1/sessions/s/recall", json={"turn": 0}).status_code == 200   # slot given back


def test_recalls_run_on_threads_started_with_the_app_not_one_per_recall(app_with, memory, monkeypatch):
    ran_on: list[int] = []
    real = memory.recall

    def recording(*args, **kwargs):
        ran_on.append(threading.get_ident())
        return real(*args, **kwargs)

    with app_with(recall_concurrency=3) as client:
        client.post("/v1/sessions", json={"id": "s"})
        client.post("/v1/sessions/s/turns", json={"turns": [{"role": "user", "content": "hello there"}]})
        started = {t.ident for t in threading.enumerate() if t.name.startswith("optimem-recall-")}
        monkeypatch.setattr(memory, "recall", recording)
        for _ in range(6):
            assert client.post("/v1/sessions/s/recall", json={"turn": 0}).status_code == 200
    assert len(started) >= 3 and set(ran_on) <= started


def test_the_reader_loads_when_the_app_starts_not_in_the_first_recall(redis_server, tmp_path):
    memory = Memory(settings_for(redis_server, tmp_path)).open()   # no backend handed in
    try:
        assert memory._backend is None
        with TestClient(create_app(memory)):
            deadline = time.monotonic() + 60
            while getattr(memory._backend, "_engine", None) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert memory.backend_name == "rapidocr" and memory._backend._engine is not None   # warmed too
    finally:
        memory.close()


def test_the_recogniser_runs_without_onnxruntimes_memory_pattern_and_with_its_arena(reader):
    """Each line crop is an input width of its own: a memory pattern per width grew RSS for good;
    the arena reuses one run's peak where malloc and free left glibc holding swings of ~100 MB."""
    engine = reader._load()
    assert engine.text_rec.session.session.get_session_options().enable_mem_pattern is False
    assert engine.text_rec.session.session.get_session_options().enable_cpu_mem_arena is True


def holders_at_once(gate: Gate, tries: int) -> int:
    """How many of ``tries`` threads get into ``gate`` together (each holds until all have tried)."""
    inside, tried, done = [], threading.Barrier(tries + 1), threading.Event()

    def hold():
        got = gate._free.acquire(timeout=0.5)       # what held() would wait for, without blocking forever
        if got:
            inside.append(1)
        tried.wait(10)
        done.wait(10)
        if got:
            gate._free.release()

    threads = [threading.Thread(target=hold) for _ in range(tries)]
    for t in threads:
        t.start()
    tried.wait(10)
    done.set()
    for t in threads:
        t.join(10)
    return len(inside)


def test_recalls_computing_at_once_follow_the_setting_and_a_turn_of_the_old_size_goes_back_to_it():
    gate = Gate(2)
    with gate.held():                    # a turn of the old size, held across the resize
        gate.resize(3)
        assert holders_at_once(gate, 5) == 3
    assert holders_at_once(gate, 5) == 3         # giving it back did not add a fourth
    gate.resize(0)
    assert holders_at_once(gate, 3) == 1         # never none


def test_the_app_sizes_the_compute_turns_from_its_settings(app_with):
    try:
        with app_with(recall_compute=3):
            assert holders_at_once(COMPUTE, 5) == 3
        with app_with(recall_compute=1):
            assert holders_at_once(COMPUTE, 3) == 1
    finally:
        COMPUTE.resize(2)


def test_page_reads_are_taken_a_tenant_at_a_time(memory):
    """A tenant with many page reads queued holds up another tenant's one read by at most the read
    running and one more, not by its whole queue (the read pool used to be first come, first
    served: a tenant recalling across many unread pages stalled every other tenant's recall)."""
    from optimem.memory.lab.corpus import longest
    from optimem.memory.store import SessionKeys

    chat = longest()[1]
    memory.create_session("many", tenant="busyreads")
    memory.append("many", chat[:500], tenant="busyreads")
    memory.create_session("one", tenant="quietreads")
    memory.append("one", chat[:120], tenant="quietreads")
    busy, quiet = SessionKeys("busyreads", "many"), SessionKeys("quietreads", "one")
    pages = min(5, memory.store.seal_state(busy)[1])
    assert pages == 5 and memory.store.seal_state(quiet)[1] >= 1
    tier = memory.ladder["mosaic4"]
    order: list[str] = []
    # One turn's lines a read (the reads a recall makes): a turn on each of the busy tenant's pages.
    futures = [memory.reader.fetch(busy, r.page, tier, turn=r.turns[-1]["index"])
               for r in memory.store.pages_of(busy, list(range(pages)))]
    futures.append(memory.reader.fetch(quiet, 0, tier, turn=memory.store.pages_of(quiet, [0])[0].turns[-1]["index"]))
    for n, future in enumerate(futures):
        future.add_done_callback(lambda f, who="quiet" if n == len(futures) - 1 else f"busy{n}": order.append(who))
    assert futures[-1].result(timeout=300) is not None
    for future in futures:
        future.result(timeout=300)
    assert order.index("quiet") <= 2, order        # after the read running and at most one more
