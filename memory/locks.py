"""Locks that hold across processes, in Redis: one implementation, redis-py's ``redis.lock.Lock``
(``SET key token NX PX``, released and extended by its Lua scripts, registered once per process).

Two kinds of lock use it:

- A session's compaction lock, ``om:{tenant:session}:lock:compact`` (``SessionLocks``). Compaction
  does not need a lock to be correct: ``Store.seal`` commits only if the seal state it typeset
  from has not moved (WATCH/MULTI), so two processes sealing the same pages leave them sealed once.
  What the lock saves is the work of the loser: typesetting and PNG-encoding a page is the
  expensive part of an append (tens of ms). With the lock, one compactor per session runs at a
  time across every API process; the others wait for it and then find the pages already sealed.
  A holder that dies leaves the key to expire after the lease. A waiter that waits longer than
  ``wait_s`` goes on without the lock: safe, because the seal transaction is the real guard.
  Threads of one process first queue on a local ``threading.Lock`` per session, so a process
  holds at most one Redis lock per session and polls Redis from one thread at a time.
- A page read's claim (``Store.claim_read``): the token is the reader's own (``claim``), since a
  claim is taken on one thread and released on another.

Both keys sit under the session's hash tag: the same Redis Cluster slot as the session.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from optimem.memory.redis_server import Client

LEASE_MS = 30_000     # a compaction that takes longer than this may overlap another (still safe)
# Past this a waiter compacts without the lock (still safe; may be wasted work). A lock left by a
# killed process (its lease runs 30 s) delays the next seal 10 s; reads never wait on it.
WAIT_S = 10.0
POLL_S = 0.01         # pause between tries while waiting


def compact_key(tag: str) -> str:
    """The compaction lock of the session whose keys start with ``tag`` (``SessionKeys.tag``)."""
    return f"{tag}:lock:compact"


def claim(r: Client, key: str, lease_ms: int) -> Lock:
    """A lock on ``key`` whose token is not tied to a thread (taken on one, released on another),
    that expires ``lease_ms`` after it is taken."""
    return Lock(r, key, timeout=lease_ms / 1000, sleep=POLL_S, thread_local=False)


class SessionLocks:
    """``with locks[tag]:`` holds the session's compaction lock in this process and in Redis.

    ``client`` gives the Redis client when a lock is taken (the store opens after this is made);
    while it gives None, only the local lock is taken."""

    def __init__(self, client: Callable[[], Client | None], lease_ms: int = LEASE_MS, wait_s: float = WAIT_S):
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
            lock = claim(r, compact_key(tag), self.lease_ms)
            held = lock.acquire(blocking_timeout=self.wait_s)
            try:
                yield held
            finally:
                if held:
                    try:
                        lock.release()
                    except (redis.RedisError, LockError):
                        pass  # the lease expires on its own (or did, and another holds the key now)
