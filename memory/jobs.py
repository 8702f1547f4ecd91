"""Model work on a Redis Stream with a consumer group, so API processes stay fast and any number of
workers (on any machine that reaches the Redis) share the load; and re-tiering, which sends it.

A job is {kind, tenant, session, page, tier}. Results go into caches with set-if-absent writes, so a
job done twice leaves one answer. A worker that dies mid-job leaves the entry pending; another
worker claims it after ``claim_after_ms`` (XAUTOCLAIM).

The stream is the backlog: a worker deletes an entry once it has done it (XACK + XDEL), so what is
left is waiting or in progress, and ``Store.enqueue`` caps it (``OPTIMEM_JOBS_MAX``), shedding the
oldest read-ahead first. Jobs are caches' read-ahead only; turns never go through this stream.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Callable

import redis

from optimem.errors import NotFound
from optimem.memory import context
from optimem.memory.context import PlacedPage
from optimem.memory.curves import Curve
from optimem.memory.reading import Reader
from optimem.memory.store import JOBS, SessionKeys, SessionMeta, Store
from optimem.model.tiers import Ladder, Tier

GROUP = "workers"
log = logging.getLogger("optimem.worker")


def ensure_group(r: redis.Redis) -> None:
    try:
        r.xgroup_create(JOBS, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    drop_done(r)


def drop_done(r: redis.Redis) -> int:
    """Delete entries every worker is done with (delivered and acknowledged), left by optimem
    versions that acknowledged without deleting: they would count as backlog and fill the cap."""
    try:
        group = next((g for g in r.xinfo_groups(JOBS) if _text(g["name"]) == GROUP), None)
        if group is None:
            return 0
        last = _text(group["last-delivered-id"])
        ms, seq = (int(x) for x in last.split("-"))
        first_undelivered = f"{ms}-{seq + 1}"
        pending = r.xpending(JOBS, GROUP)
        minid = first_undelivered
        if pending and pending.get("pending"):
            low = _text(pending["min"])
            if tuple(int(x) for x in low.split("-")) < (ms, seq + 1):
                minid = low
        return int(r.xtrim(JOBS, minid=minid, approximate=False))
    except redis.ResponseError:
        return 0


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Job:
    kind: str            # "encode" (visual tokens) or "decode" (text)
    k: SessionKeys
    page: int
    tier: str

    @classmethod
    def of(cls, fields: dict[str, str]) -> "Job":
        return cls(fields["kind"], SessionKeys(fields["tenant"], fields["session"]), int(fields["page"]),
                   fields["tier"])


def kinds_for(meta: SessionMeta, encodes: bool) -> tuple[str, ...]:
    """The read-ahead that pays for a session: "encode" where the backend makes visual tokens
    (context's embeddings format serves them), "decode" only for a forget-for-real session (its
    text index holds the decoded text of its pages, so a page must be read to be found)."""
    return (("encode",) if encodes else ()) + (() if meta.keep_source else ("decode",))


def retier(store: Store, k: SessionKeys, meta: SessionMeta, curve: Curve, ladder: Ladder, encodes: bool,
           full: bool = False) -> list[PlacedPage]:
    """Send the model workers the pages whose tier changed since they were last sent, to be read
    (decoded) or encoded ahead of use; returns those pages (placed, light records), gone ones too.

    What reading costs and when it happens: a page read (decode) on the CPU reader is seconds of
    CPU per page (5-17 s for a whole 1024 px page with rapidocr), an encode is one vision-encoder
    pass on the GPU backend. A keep-source session needs neither for recall (its text index is
    over the exact source, and recall reads only the hit turns' lines, on demand), so it gets no
    decode jobs; a forget-for-real session gets a decode job each time a page reaches a new
    readable tier (its index holds what a read gave). Encode jobs go out only where the backend
    makes visual tokens. The inspector, the lab and recall read what they show on demand.

    Cost is proportional to what changes, not to history: the session as the last retier saw it
    (``retiered``: turns, pages, curve) says which pages can have changed tier since: those whose
    last turn puts them across one of the curve's tier boundaries (``context.boundaries``; read
    with ZRANGEBYSCORE on the page index) and pages sealed since. A time curve, a changed curve,
    a first retier or ``full`` look at every page (from the compact page index, no PageRecord)."""
    kinds = kinds_for(meta, encodes)
    if not kinds:
        return []
    turns, pages = meta.turns, store.seal_state(k)[1]
    curve_json = curve.to_json()
    mark = None if full or curve.unit != "turns" else store.retier_mark(k)
    if mark is None or mark[2] != curve_json or mark[0] > turns or mark[1] > pages:
        records, _ = store.page_entries(k)
        queued = store.queued_tiers(k)
    else:
        old_turns, old_pages = mark[0], mark[1]
        crossed = store.pages_ending_in(k, [(old_turns - 1 - age, turns - 1 - age)
                                            for age, _ in context.boundaries(curve, ladder)[1:]])
        records = store.page_entries_of(k, crossed | set(range(old_pages, pages)))
        queued = store.queued_tiers(k, [r.page for r in records])
    placed = context.place(records, curve, ladder, turns)
    changed = [p for p in placed if queued.get(p.record.page) != p.tier.name]
    store.enqueue(k, [(kind, p.record.page, p.tier.name) for p in changed if not p.tier.gone for kind in kinds])
    store.set_retier_mark(k, turns, pages, curve_json)
    return changed


def handle(job: Job, tier_now: Callable[[SessionKeys, int], Tier], reader: Reader) -> None:
    """Do one job, unless its page faded further while it waited (a newer job has it) or its
    session or page was deleted since."""
    try:
        tier = tier_now(job.k, job.page)
        if tier.name != job.tier:
            return
        if job.kind == "encode":
            reader.encoded(job.k, job.page, tier)
        elif job.kind == "decode":
            reader.decoded(job.k, job.page, tier)
        else:
            log.warning("unknown job kind %r", job.kind)
    except NotFound:
        pass


def backlog(r: redis.Redis) -> int:
    """Jobs not yet done: waiting plus in progress (finished ones are deleted from the stream)."""
    return int(r.xlen(JOBS))


Handler = Callable[[dict[str, str]], None]


class Worker:
    def __init__(self, r: redis.Redis, handle: Handler, name: str | None = None, claim_after_ms: int = 60_000):
        self.r, self.handle = r, handle
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
        self.claim_after_ms = claim_after_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ensure_group(r)

    def _entries(self, block_ms: int) -> list[tuple[bytes, dict]]:
        claimed = self.r.xautoclaim(JOBS, GROUP, self.name, min_idle_time=self.claim_after_ms, count=8)
        if claimed and claimed[1]:
            shed = [entry[0] for entry in claimed[1] if not entry[1]]  # trimmed while pending: forget them
            if shed:
                self.r.xack(JOBS, GROUP, *shed)
            live = [entry for entry in claimed[1] if entry[1]]
            if live:
                return live
        got = self.r.xreadgroup(GROUP, self.name, {JOBS: ">"}, count=8, block=block_ms or None)
        return [entry for _, entries in got or [] for entry in entries]

    def run_once(self, block_ms: int = 1000) -> int:
        done = 0
        for entry_id, fields in self._entries(block_ms):
            if self._stop.is_set():
                break   # left pending: claimed again after claim_after_ms by a worker that runs
            job = {a.decode(): b.decode() for a, b in fields.items()}
            try:
                self.handle(job)
            except Exception:  # a bad job must not stop the worker; the cache stays empty and
                log.exception("job %s failed: %s", entry_id, job)  # recall reads the page itself
            with self.r.pipeline(transaction=False) as pipe:
                pipe.xack(JOBS, GROUP, entry_id)
                pipe.xdel(JOBS, entry_id)   # the stream holds only what is left to do
                pipe.execute()
            done += 1
        return done

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except (redis.ConnectionError, redis.TimeoutError):
                if self._stop.wait(1.0):
                    break

    def start(self) -> "Worker":
        self._thread = threading.Thread(target=self.run_forever, name="optimem-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30) -> None:
        """Stop taking jobs and wait up to ``timeout_s`` for the one in hand (a daemon thread: one
        still running after that is abandoned; its entry stays pending and is claimed again)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=timeout_s)
