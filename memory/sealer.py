"""Sealing off the request path: an append stores its turns (durable at once) and returns; pages are
typeset and sealed just after, on one thread per process.

Why: typesetting and drawing a page costs tens of milliseconds, and a one-turn append that happens to
fill a page would pay all of it (issue 12). Nothing is lost by waiting: the turns are in Redis before
the append answers, the seal is one transaction guarded by WATCH (``Store.seal``), and a process that
dies with a seal pending leaves the turns as text for the next append of that session to seal.

Reads stay consistent: a read of a session this process has a seal pending for ``settle``s it first,
doing the seal itself if the thread has not started on it, else waiting for the thread. So no reader
in this process sees turns that are neither recent text nor on a page.

The typesetting itself runs in a child process (``memory/typesetter.py``): laying out a page is
tens of milliseconds of Python that would otherwise hold the GIL against the requests it runs behind.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("optimem.sealer")


class Sealer:
    """Seals sessions in the background, one at a time, in the order they were asked for.

    ``seal(tag, job)`` runs ``job`` (the session's compaction) for one session; a session asked for
    again while its seal runs is sealed once more after it (its new turns may fill another page)."""

    def __init__(self, seal: Callable[[object], None]):
        self._seal = seal
        self._cond = threading.Condition()
        self._pending: dict[str, object] = {}       # tag -> job, in the order asked
        self._running: set[str] = set()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def request(self, tag: str, job: object) -> None:
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, name="optimem-sealer", daemon=True)
                self._thread.start()
            self._pending[tag] = job if tag not in self._pending else _merge(self._pending[tag], job)
            self._cond.notify_all()

    def pending(self, tag: str) -> bool:
        with self._cond:
            return tag in self._pending or tag in self._running

    def settle(self, tag: str, timeout_s: float | None = 30.0) -> bool:
        """Return once nothing is pending for ``tag`` here: seal it on this thread if it is waiting
        its turn, or wait for the sealer thread if that is on it (at most ``timeout_s``; None: as
        long as it takes). False if it gave up waiting."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._cond:
                while tag in self._running:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        log.warning("%s: still sealing after %.0f s; reading what is there", tag, timeout_s)
                        return False
                    self._cond.wait(left)
                if tag not in self._pending:
                    return True
                job = self._pending.pop(tag)
                self._running.add(tag)
            self._run(tag, job)

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

    def _run(self, tag: str, job: object) -> None:
        try:
            self._seal(job)
        except Exception:  # noqa: BLE001  the turns stay text; the session's next append seals them
            log.exception("sealing %s failed; its turns stay text until its next append", tag)
        finally:
            with self._cond:
                self._running.discard(tag)
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not any(t not in self._running for t in self._pending):
                    self._cond.wait()
                if self._stopped:
                    return
                tag = next(t for t in self._pending if t not in self._running)
                job = self._pending.pop(tag)
                self._running.add(tag)
            self._run(tag, job)


def _merge(old: object, new: object) -> object:
    """Two requests for one session: the job knows how to combine (e.g. re-tier if either asked)."""
    merge = getattr(old, "merge", None)
    return merge(new) if merge else new
