"""Nothing is lost: across a restart of the service, and when the process is killed mid-seal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from optimem.memory.lab.corpus import longest
from optimem.memory.redis_server import EmbeddedRedis
from optimem.memory.service import Memory
from optimem.settings import Settings
from tests.test_api import every_turn_is_somewhere
from tests.live import free_port


def start_service(data_dir, port) -> subprocess.Popen:
    env = {**os.environ, "OPTIMEM_DATA_DIR": str(data_dir), "OPTIMEM_RECENT_TOKENS": "300",
           "OPTIMEM_WORKER": "0", "OPTIMEM_REDIS_URL": ""}
    proc = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("optimem serve did not come up")


def test_everything_is_still_there_after_a_restart(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    turns = longest()[1][:200]
    proc = start_service(tmp_path, port)
    try:
        httpx.post(f"{url}/v1/sessions", json={"id": "keep"}).raise_for_status()
        httpx.post(f"{url}/v1/sessions/keep/turns", json={"turns": turns}, timeout=120).raise_for_status()
        before = httpx.get(f"{url}/v1/sessions/keep/context").json()
        page = httpx.get(f"{url}/v1/sessions/keep/pages/0/image?tier=full").content
        assert before["pages"]
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not (tmp_path / "redis" / "redis.sock").exists() or not EmbeddedRedis(tmp_path)._alive(), \
        "the embedded Redis should stop with the service"
    proc = start_service(tmp_path, port)
    try:
        assert httpx.get(f"{url}/v1/sessions/keep/context").json() == before
        assert httpx.get(f"{url}/v1/sessions/keep/pages/0/image?tier=full").content == page
        assert httpx.get(f"{url}/v1/sessions").json() == {"sessions": ["keep"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


# The child appends real turns one at a time and SIGKILLs itself at a chosen point of the Nth seal:
# "before" the transaction (pages typeset, nothing written) or "after" it (pages committed, model
# jobs not yet sent).
CHILD = textwrap.dedent("""
    import os, signal, sys
    from optimem.memory.lab.corpus import longest
    from optimem.memory.service import Memory
    from optimem.settings import Settings
    from optimem.memory.store import Store

    data_dir, when, nth, start, background = (sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                              sys.argv[5] == "1")
    real_seal, calls = Store.seal, [0]
    def seal(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_seal(self, *args, **kwargs)
        if calls[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    Store.seal = seal
    memory = Memory(Settings(data_dir=data_dir, recent_tokens=300, worker=False, seal_background=background)).open()
    if start == 0:
        memory.create_session("crash", tenant="default")
    for turn in longest()[1][start:start + 150]:
        memory.append("crash", [turn], tenant="default")
    memory.close()
""")


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_between_sealing_steps_loses_no_turn(tmp_path, when, background):
    """Sealing inside the append or just after it (on the sealer thread, while appends go on)."""
    turns = longest()[1]
    sent = 0
    # the sealer may seal several pages in one call: the first seal of each child is the one killed
    for nth in ((1, 1) if background else (1, 2)):
        child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), when, str(nth), str(sent),
                                str(int(background))])
        assert child.returncode == -signal.SIGKILL
        memory = Memory(Settings(data_dir=tmp_path, recent_tokens=300, worker=False)).open()
        try:
            sent = memory.session("crash", tenant="default").turns
            every_turn_is_somewhere(memory, "default", "crash", turns[:sent])
        finally:
            memory.close(stop_server=False)
    # and the session carries on sealing where it stopped
    memory = Memory(Settings(data_dir=tmp_path, recent_tokens=300, worker=False)).open()
    try:
        before = memory.session("crash", tenant="default")
        memory.append("crash", turns[sent:sent + 100], tenant="default")
        memory.settle("crash", tenant="default")      # sealed behind the append: wait for it here
        after = memory.session("crash", tenant="default")
        assert after.pages > before.pages
        every_turn_is_somewhere(memory, "default", "crash", turns[:sent + 100])
    finally:
        memory.close()


def test_an_embedded_memory_on_the_servers_data_dir_leaves_the_servers_redis_running(tmp_path):
    """Issue 25 item 4: ``optimem.Memory()`` on a running server's data directory adopts its
    embedded Redis; closing it used to shut that Redis down, and the server then answered 500 on
    every route. The last user to close stops it: here the server, on SIGTERM."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(tmp_path, port)
    try:
        httpx.post(f"{url}/v1/sessions", json={"id": "served"}).raise_for_status()
        with Memory(Settings(data_dir=tmp_path, recent_tokens=300, worker=False)) as embedded:
            embedded.create_session("embedded")
            embedded.add("embedded", "written beside the server")
            assert sorted(embedded.sessions()) == ["embedded", "served"]      # the same store
        assert EmbeddedRedis(tmp_path)._alive()
        got = httpx.post(f"{url}/v1/sessions/served/turns", json={"turns": [{"role": "user", "content": "still here"}]})
        assert got.status_code == 200, got.text[:200]
        assert httpx.get(f"{url}/v1/sessions").json() == {"sessions": ["embedded", "served"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not EmbeddedRedis(tmp_path)._alive(), "the server, the last user, stops it"
