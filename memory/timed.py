"""Time-based curves (``unit: seconds``) fade pages as time passes, with no append to say so. The
sessions that have one are kept in one sorted set (TIMED; score: when each is next due), and every
process that runs a model worker sweeps it (``Sweeper``): each due session is re-tiered
(``Memory.retier_session``), so read-ahead, and in a forget-for-real session the index, follow a page's
tier while the session is left alone. Without it a page's new tier was only sent on the next append.

One key for every tenant (a single key in a Redis Cluster too); a session is claimed for a sweep by
raising its score (``ZADD XX GT CH``), so of two processes sweeping at once, one does it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from redis import RedisError

from optimem.memory.curves import Curve
from optimem.memory.redis_server import Client
from optimem.memory.store import SessionKeys

log = logging.getLogger(__name__)
TIMED = "om:timed"
BATCH = 100          # sessions claimed per look at the set


def _member(k: SessionKeys) -> str:
    return json.dumps([k.tenant, k.session])


def track(r: Client, k: SessionKeys, curve: Curve, keep_due: bool = False) -> None:
    """Note the session's curve: swept (due now) when it counts seconds, not when it counts turns.
    ``keep_due``: a session already noted keeps its due time (a seal notes sessions from before
    the sweep, cheaply)."""
    if curve.unit == "seconds":
        r.zadd(TIMED, {_member(k): time.time()}, nx=keep_due)
    else:
        r.zrem(TIMED, _member(k))


def untrack(r: Client, k: SessionKeys) -> None:
    r.zrem(TIMED, _member(k))


def claim_due(r: Client, every_s: float, now: float | None = None) -> list[tuple[str, str]]:
    """(tenant, session) of the sessions due now, each claimed (due again ``every_s`` from now)."""
    now = time.time() if now is None else now
    claimed = []
    for raw in r.zrangebyscore(TIMED, "-inf", now, start=0, num=BATCH):
        member = raw.decode() if isinstance(raw, bytes) else str(raw)
        if r.zadd(TIMED, {member: now + every_s}, xx=True, gt=True, ch=True):
            tenant, session = json.loads(member)
            claimed.append((tenant, session))
    return claimed


class Sweeper:
    """A thread that every ``every_s`` re-tiers the due sessions with ``retier(tenant, session)``."""

    def __init__(self, r: Client, retier: Callable[[str, str], None], every_s: float):
        self.r, self.retier, self.every_s = r, retier, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optimem-timed-retier", daemon=True)

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def sweep(self) -> int:
        due = claim_due(self.r, self.every_s)
        for tenant, session in due:
            try:
                self.retier(tenant, session)
            except Exception:     # one session's fault must not stop the others' sweeps
                log.exception("timed re-tier of session %r (tenant %r) failed", session, tenant)
        return len(due)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                while self.sweep() == BATCH and not self._stop.is_set():
                    pass
            except RedisError as exc:       # Redis away for a moment: the next sweep tries again
                log.warning("timed re-tier sweep failed: %r", exc)

    def stop(self, timeout_s: float = 30) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
