"""`optimem serve --workers 2` over the embedded Redis: the parent starts one redis-server for both
API processes, each runs a model worker, both answer, concurrent appends keep every turn once and in
order, SIGTERM stops it all (Redis with its save) promptly, and a restart finds the data (started
with --no-worker: then no process runs a worker)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import redis

from optimem.memory.lab.corpus import longest
from optimem.memory.store import Store
from tests.live import free_port
from tests.test_multiprocess import check_one_session, optimem_env, tagged, wait_for

THREADS, PER_THREAD = 6, 40


def start(env: dict, port: int, *more: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "serve", "--workers", "2", "--port", str(port),
                             "--log-level", "warning", *more], env=env, start_new_session=True)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, "serve did not come up",
             60, [proc])
    wait_for(lambda: len(api_children(proc)) == 2, "two API processes did not start", 30, [proc])
    return proc


def api_children(proc: subprocess.Popen) -> list[psutil.Process]:
    """uvicorn's worker processes (spawned by multiprocessing), not redis-server or the resource tracker."""
    return [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]


def waiting_workers(r: redis.Redis) -> int:
    """Model workers blocked on the job stream right now (each waits there between jobs)."""
    return sum("b" in c["flags"] and c["cmd"] == "xreadgroup" for c in r.client_list())


def stop(proc: subprocess.Popen) -> float:
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("serve --workers 2 did not exit within 15 s of SIGTERM")
    return time.monotonic() - began


def test_serve_workers_share_one_embedded_redis(tmp_path):
    data = tmp_path / "data"
    env = optimem_env(data, "", OPTIMEM_WORKER="1")  # embedded Redis; each API process runs its worker
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(env, port)
    try:
        children = api_children(proc)
        redis_servers = [c for c in psutil.Process(proc.pid).children() if c.name() == "redis-server"]
        assert len(redis_servers) == 1, "the parent should start exactly one embedded redis-server"
        r = redis.Redis(unix_socket_path=str(data / "redis" / "redis.sock"))
        # one model worker per API process, each waiting on the job stream's consumer group
        wait_for(lambda: waiting_workers(r) == 2, "two workers are not waiting for jobs", 20, [proc])

        # Which process holds a connection to the port is who answers it: sample while appending.
        # Every request is a new connection (httpx.post), so the kernel hands them to both.
        answered: set[int] = set()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for c in children:
                    if any(x.status == psutil.CONN_ESTABLISHED and x.laddr.port == port
                           for x in c.net_connections(kind="tcp")):
                        answered.add(c.pid)
                time.sleep(0.02)

        chat = longest()[1]
        sent = {t: tagged(chat[t * PER_THREAD:(t + 1) * PER_THREAD], t) for t in range(THREADS)}
        httpx.post(f"{url}/v1/sessions", json={"id": "shared"}).raise_for_status()
        errors: list[str] = []

        def client(thread: int) -> None:
            for turn in sent[thread]:  # one at a time, in order
                got = httpx.post(f"{url}/v1/sessions/shared/turns", json={"turns": [turn]}, timeout=60)
                if got.status_code != 200:
                    errors.append(got.text)

        sampler = threading.Thread(target=sample)
        threads = [threading.Thread(target=client, args=(t,)) for t in sent]
        sampler.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        sampler.join()
        assert not errors, errors[:3]
        # consistent at any moment (a seal is one transaction); pages sealed after the response may follow
        pages = check_one_session(Store(r), "default", "shared", sent)
        assert answered == {c.pid for c in children}, f"only {answered} of {[c.pid for c in children]} answered"
        everyone = psutil.Process(proc.pid).children(recursive=True)  # with whatever the API processes started
        r.close()
    finally:
        exit_s = stop(proc)
    assert proc.returncode == 0
    # A grandchild (an API process's typesetter) exits when its pipe closes, just after its parent
    _, alive = psutil.wait_procs(everyone, timeout=5)
    assert not alive, f"outlived the parent by 5 s: {[(p.pid, p.name()) for p in alive]}"
    print(f"\nSIGTERM to exit: {exit_s:.1f} s; {pages} pages; answered by {sorted(answered)}")

    proc = start(env, port, "--no-worker")  # the same data directory: everything acknowledged is still there
    try:
        assert httpx.get(f"{url}/v1/sessions/shared").json()["turns"] == THREADS * PER_THREAD
        r = redis.Redis(unix_socket_path=str(data / "redis" / "redis.sock"))
        assert check_one_session(Store(r), "default", "shared", sent) >= max(pages, 2)
        time.sleep(1.5)  # a worker would be blocked on the stream by now
        assert waiting_workers(r) == 0, "--no-worker holds for every API process"
        r.close()
    finally:
        stop(proc)
