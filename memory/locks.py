"""Per-session locks that hold across processes: a Redis key, not process memory.

Compaction does not need a lock to be correct: ``Store.seal`` commits only if the seal state it
typeset from has not moved (WATCH/MULTI), so two processes sealing the same pages leave them sealed
once. What the lock saves is the work of the loser: typesetting and PNG-encoding a page is the
expensive part of an append (tens of ms), and a loser throws it away and starts over (up to
``compactor.compact``'s attempts). With the lock, one compactor per session runs at a time across
every API process; the others wait for it and then find the pages already sealed.

The lock is ``SET key token NX PX lease`` and is released by a compare-and-delete script, so a
process only ever deletes its own lock. The key is ``om:{tenant:session}:lock:compact`` (under the
session's hash tag: same Redis Cluster slot as the session). A holder that dies leaves the key to
expire after the lease. A waiter that waits longer than ``wait_s`` goes on without the lock:
safe, because the seal transaction is the real guard; it only risks doing the work twice.

Threads of one process first queue on a local ``threading.Lock`` per session, so a process holds
at most one Redis lock per session and polls Redis from one thread at a time.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

import redis

LEASE_MS = 30_000     # a compaction that takes longer than this may overlap another (still safe)
# Past this a waiter compacts without the lock (still safe; may be wasted work). Well under the
# 30 s a read waits for a seal it is owed (sealer.settle), so a lock left by a killed process (its
# lease runs 30 s) delays the next seal 10 s, and a read still sees that seal.
WAIT_S = 10.0
POLL_S = (0.002, 0.05)  # first and longest pause between tries (doubling)

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def compact_key(tag: str) -> str:
    """The compaction lock of the session whose keys start with ``tag`` (``SessionKeys.tag``)."""
    return f"{tag}:lock:compact"


class RedisLock:
    """One lock key: ``acquire`` (SET NX PX with a random token), ``release`` (compare-and-delete)."""

    def __init__(self, r: redis.Redis, key: str, lease_ms: int = LEASE_MS):
        self.r, self.key, self.lease_ms = r, key, lease_ms
        self.token: str | None = None

    def try_acquire(self) -> bool:
        token = os.urandom(16).hex()
        if self.r.set(self.key, token, nx=True, px=self.lease_ms):
            self.token = token
            return True
        return False

    def acquire(self, wait_s: float = WAIT_S) -> bool:
        """Wait up to ``wait_s`` for the lock; False if it was not had in time."""
        deadline = time.monotonic() + wait_s
        pause = POLL_S[0]
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, POLL_S[1])
        return True

    def release(self) -> None:
        """Delete the key if it still holds our token (it may have expired and been taken since)."""
        if self.token is not None:
            token, self.token = self.token, None
            self.r.eval(_RELEASE, 1, self.key, token)


class SessionLocks:
    """``with locks[tag]:`` holds the session's compaction lock in this process and in Redis.

    ``client`` gives the Redis client when a lock is taken (the store opens after this is made);
    while it gives None, only the local lock is taken."""

    def __init__(self, client: Callable[[], redis.Redis | None], lease_ms: int = LEASE_MS, wait_s: float = WAIT_S):
        self._client, self.lease_ms, self.wait_s = client, lease_ms, wait_s
        self._local: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def _local_lock(self, tag: str) -> threading.Lock:
        with self._guard:
            return self._local[tag]

    def __getitem__(self, tag: str):
        return self._hold(tag)

    @contextmanager
    def _hold(self, tag: str) -> Iterator[bool]:
        """Yields whether the Redis lock is held (False: it was not had within ``wait_s``)."""
        with self._local_lock(tag):
            r = self._client()
            if r is None:
                yield False
                return
            lock = RedisLock(r, compact_key(tag), self.lease_ms)
            held = lock.acquire(self.wait_s)
            try:
                yield held
            finally:
                if held:
                    try:
                        lock.release()
                    except redis.RedisError:
                        pass  # the lease expires on its own
