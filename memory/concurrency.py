"""Threads for reads and recalls: a fixed pool (``Threads``), a gate on how many compute at once
(``Gate``, ``COMPUTE``), and the C heap handed back after reads (``HEAP``).

Python threads share one GIL: what matters on a 2-core machine is how many threads want it at
once, not how many exist. These helpers keep that number small and fixed.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("optimem.concurrency")


class _Heap:
    """Hands the C heap's free memory back to the OS (glibc's ``malloc_trim``) after reads, at most
    once a second (a trim took 11-16 ms). A read allocates and frees tens of MB (the page image,
    its views, the crops) in whichever malloc arena its thread uses, and glibc keeps what is freed
    for reuse: a soak's server once held ~225 MB free in its arenas beside ~90 MB in use, and its
    RSS crept up with it. Elsewhere than glibc this does nothing."""

    def __init__(self):
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None
        self._last = 0.0

    def trim(self) -> None:
        now = time.monotonic()
        if self._trim is not None and now - self._last >= 1.0:
            self._last = now
            self._trim(0)


HEAP = _Heap()


class Gate:
    """At most ``n`` threads at once between ``held()`` and its end; a thread that waits (``aside()``)
    lets another take its turn meanwhile, and takes one back after.

    Python threads share one GIL: two threads computing keep a 2-core machine's Python busy, and
    every further one only lengthens the queue for the GIL, which the event loop joins after every
    poll. 45 recalls computing at once held the loop up to ~120 ms at a time (issue 10).
    """

    def __init__(self, n: int):
        self._free = threading.Semaphore(n)
        self._mine = threading.local()

    def resize(self, n: int) -> None:
        """At most ``n`` from now on (``OPTIMEM_RECALL_COMPUTE``). A thread holding a turn of the old
        size gives that one back, so nothing is counted twice."""
        self._free = threading.Semaphore(max(1, n))

    @contextmanager
    def held(self):
        if getattr(self._mine, "held", None) is not None:   # nested: the thread's turn already covers it
            yield
            return
        free = self._free
        free.acquire()
        self._mine.held = free
        try:
            yield
        finally:
            self._mine.held = None
            free.release()

    @contextmanager
    def aside(self):
        """While the calling thread waits: its turn (if it holds one) goes to another thread."""
        free = getattr(self._mine, "held", None)
        if free is None:
            yield
            return
        self._mine.held = None
        free.release()
        try:
            yield
        finally:
            free.acquire()
            self._mine.held = free


COMPUTE = Gate(2)     # recall threads computing at once per process (see the module; OPTIMEM_RECALL_COMPUTE)


class FairQueue:
    """Jobs queued per owner (a tenant) and taken in turn, one owner after another: a tenant with a
    hundred page reads queued holds up another tenant's one read by at most one read per thread,
    not by the hundred (a plain FIFO would). ``None`` (a stop) goes behind everything queued."""

    def __init__(self):
        self._cond = threading.Condition()
        self._owners: dict[str, collections.deque] = {}     # insertion order = whose turn is next
        self._stops = 0

    def put(self, item, owner: str = "") -> None:
        with self._cond:
            if item is None:
                self._stops += 1
            else:
                self._owners.setdefault(owner, collections.deque()).append(item)
            self._cond.notify()

    def get(self):
        with self._cond:
            while not self._owners and not self._stops:
                self._cond.wait()
            if not self._owners:
                self._stops -= 1
                return None
            owner = next(iter(self._owners))
            jobs = self._owners.pop(owner)
            item = jobs.popleft()
            if jobs:
                self._owners[owner] = jobs      # to the back of the line
            return item


class Threads:
    """A fixed number of daemon threads over one queue (the reader's pools; the API's recall
    threads). Not a ThreadPoolExecutor: that one makes the interpreter wait at exit for every
    queued job; an abandoned read is harmless here (the cache is written set-if-absent, the claim
    expires), and a recall cut short by shutdown has no one left to answer."""

    def __init__(self, threads: int, name: str = "optimem-read"):
        self.queue = FairQueue()
        self.threads, self.name = threads, name
        for i in range(threads):
            threading.Thread(target=Threads.run, args=(self.queue, name), name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn, *args, owner: str = "") -> None:
        """Run ``fn(*args)`` on a pool thread, in turn with other owners' jobs (``FairQueue``)."""
        self.queue.put((fn, args), owner)

    def stop(self) -> None:
        """Let the threads end once what is queued is done."""
        for _ in range(self.threads):
            self.queue.put(None)

    @staticmethod
    def run(q: FairQueue, name: str) -> None:
        while (item := q.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # fn reports to its future; never let one job end the thread
                log.exception("%s: job failed", name)
            del item, fn, args
