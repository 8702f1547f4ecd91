"""Sealing off the request path: an append stores its turns (durable at once) and returns; pages are
typeset and sealed just after, on one thread per process.

Why: typesetting and drawing a page costs tens of milliseconds, and a one-turn append that happens to
fill a page would pay all of it (issue 12). Nothing is lost by waiting: the turns are in Redis before
the append answers, the seal is one transaction guarded by WATCH (``Store.seal``), and a process that
dies with a seal pending leaves the turns as text for the next append of that session to seal; a seal
that fails on the store (a dropped connection) is tried again after 1, 5 and 30 s (``RETRY_AFTER_S``).

Reads never wait on the sealer beyond a short bound (``READ_WAIT_S``, issue 25): turns not yet on
a page are text, in the session's turns and its index, and a read serves them as such. A read
waits (``wait_owed``) only for the seals asked for before it began, never for one a later append
asks for; it never seals on its own thread, and hands its compute turn on while it waits
(``COMPUTE.aside``). ``Memory`` asks it to wait only for the few pages an append fills, not for a
bulk import's backlog. So one tenant appending to and reading a busy session never holds up
another tenant's reads, and a read after a bulk import answers at once from the text while the
backlog is sealed behind it. (A seal is one transaction, so a read sees a turn either as text or
on a page; ``Memory`` reads both sides against one seal state.)

The typesetting itself runs in a child process (``memory/typesetter.py``): laying out a page is
tens of milliseconds of Python that would otherwise hold the GIL against the requests it runs behind.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Generic, TypeVar

from optimem.errors import OptimemError
from optimem.memory.concurrency import COMPUTE

log = logging.getLogger("optimem.sealer")
READ_WAIT_S = 2.0    # the longest a read waits for a seal its session was owed when it began
# Seconds before each new try of a seal that failed on something other than the session itself (a
# dropped Redis connection, a typesetter that died): a bulk import's backlog must not stay text
# until the session's next append, which may never come.
RETRY_AFTER_S = (1.0, 5.0, 30.0)
Job = TypeVar("Job")   # what ``seal`` takes: one session's compaction (Memory's ``_Seal``)


class Sealer(Generic[Job]):
    """Seals sessions in the background, one at a time, in the order they were asked for.

    ``seal(tag, job)`` runs ``job`` (the session's compaction) for one session; a session asked for
    again while its seal runs is sealed once more after it (its new turns may fill another page)."""

    def __init__(self, seal: Callable[[Job], object]):
        self._seal = seal
        self._cond = threading.Condition()
        self._pending: dict[str, Job] = {}          # tag -> job, in the order asked
        self._running: set[str] = set()
        # Requests are numbered in one sequence; per session with any request not sealed yet:
        self._seq = 0
        self._first: dict[str, int] = {}            # tag -> lowest number that may be unsealed
        self._last: dict[str, int] = {}             # tag -> its latest request's number
        self._taken: dict[str, int] = {}            # tag -> the latest request the running seal covers
        self._failures: dict[str, int] = {}         # tag -> seals failed in a row
        self._stopped = False
        self._thread: threading.Thread | None = None

    def request(self, tag: str, job: Job) -> None:
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, name="optimem-sealer", daemon=True)
                self._thread.start()
            self._pending[tag] = job if tag not in self._pending else _merge(self._pending[tag], job)
            self._seq += 1
            self._first.setdefault(tag, self._seq)
            self._last[tag] = self._seq
            self._cond.notify_all()

    def pending(self, tag: str) -> bool:
        with self._cond:
            return tag in self._pending or tag in self._running

    def asked(self, tag: str) -> int:
        """The number of the latest seal asked for ``tag`` and not done yet (0: none owed)."""
        with self._cond:
            return self._last.get(tag, 0)

    def wait_owed(self, tag: str, timeout_s: float | None = None) -> bool:
        """For a read: wait for the seals of ``tag`` asked for before now (not those asked later),
        done on the sealer thread, at most ``timeout_s``. The caller's compute turn goes to another
        thread meanwhile. False if it stopped waiting (the read then serves the turns as text)."""
        deadline = time.monotonic() + (READ_WAIT_S if timeout_s is None else timeout_s)
        with COMPUTE.aside(), self._cond:
            owed = self._last.get(tag)
            while owed is not None and self._first.get(tag, owed + 1) <= owed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def settle(self, tag: str, timeout_s: float | None = None, asked: int | None = None) -> bool:
        """Return once nothing is pending for ``tag`` here: seal it on this thread if it is waiting
        its turn, or wait for the sealer thread if that is on it (at most ``timeout_s``; None: as
        long as it takes). For callers that want the pages (``Memory.settle``, closing), not for
        reads (``wait_owed``). False if it gave up waiting.

        ``asked`` (a number ``asked()`` gave earlier): return once the seals asked up to it are
        done; later ones may still run. A bulk writer appends its next chunk while the sealer
        thread seals the last one, then settles that one, so the backlog stays one chunk deep and
        a seal still waiting its turn (the thread busy with other sessions) is done on the writer's
        thread, never behind other tenants."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with COMPUTE.aside(), self._cond:
                while True:
                    if asked is not None and self._first.get(tag, asked + 1) > asked:
                        return True               # the seals asked up to ``asked`` are done
                    if tag not in self._running:
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        log.warning("%s: still sealing after %.0f s", tag, timeout_s)
                        return False
                    self._cond.wait(left)
                if tag not in self._pending:
                    return True
                job = self._take(tag)
            self._run(tag, job)

    def _take(self, tag: str) -> Job:
        """(Holding the condition) the pending job of ``tag``, now running."""
        job = self._pending.pop(tag)
        self._running.add(tag)
        self._taken[tag] = self._last.get(tag, 0)
        return job

    def stop(self, timeout_s: float = 30.0) -> None:
        """Seal everything still pending (on this thread), then stop the sealer thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            tags = list(self._pending)
        for tag in tags:
            self.settle(tag, timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self, tag: str, job: Job) -> None:
        try:
            self._seal(job)
            self._failures.pop(tag, None)
        except OptimemError:    # the session itself (deleted meanwhile): nothing to try again
            log.exception("sealing %s failed; its turns stay text until its next append", tag)
        except Exception:  # noqa: BLE001  the turns stay text meanwhile; nothing is lost
            self._retry(tag, job)
        finally:
            with self._cond:
                self._running.discard(tag)
                covered = self._taken.pop(tag, 0)
                if self._last.get(tag, 0) > covered:    # asked again while it ran: that one is owed
                    self._first[tag] = covered + 1
                else:                                   # nothing owed: forget the session
                    self._first.pop(tag, None)
                    self._last.pop(tag, None)
                self._cond.notify_all()

    def _retry(self, tag: str, job: Job) -> None:
        tries = self._failures.get(tag, 0)
        if tries >= len(RETRY_AFTER_S) or self._stopped:
            self._failures.pop(tag, None)
            log.exception("sealing %s failed %d times; its turns stay text until its next append", tag, tries + 1)
            return
        self._failures[tag] = tries + 1
        log.exception("sealing %s failed; trying again in %.0f s (its turns are text meanwhile)",
                      tag, RETRY_AFTER_S[tries])
        again = threading.Timer(RETRY_AFTER_S[tries], self.request, (tag, job))
        again.daemon = True
        again.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not any(t not in self._running for t in self._pending):
                    self._cond.wait()
                if self._stopped:
                    return
                tag = next(t for t in self._pending if t not in self._running)
                job = self._take(tag)
            self._run(tag, job)


def _merge(old: Job, new: Job) -> Job:
    """Two requests for one session: the job knows how to combine (e.g. re-tier if either asked)."""
    merge = getattr(old, "merge", None)
    return merge(new) if merge else new
