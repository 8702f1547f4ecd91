"""Model work on a Redis Stream with a consumer group, so API processes stay fast and any number of
workers (on any machine that reaches the Redis) share the load; and re-tiering, which sends it.

A job is {kind, tenant, session, page, tier}. Results go into caches with set-if-absent writes, so a
job done twice leaves one answer. A worker that dies mid-job leaves the entry pending; another
worker claims it after ``claim_after_ms`` (XAUTOCLAIM).

The stream is the backlog: a worker deletes an entry once it has done it (XACK + XDEL), so what is
left is waiting or in progress, and ``Store.enqueue`` caps it (``OPTIMEM_JOBS_MAX``), shedding the
oldest read-ahead first. Jobs are caches' read-ahead only; turns never go through this stream.

A worker runs up to ``batch`` jobs at once, encodes and decodes on separate pools, and keeps
reading the stream while they run (``run_forever``): a GPU backend batches the concurrent calls
(encodes of one tier, decodes of one size: ``model.batching``), and a long decode never holds up an
encode, or the next read of the stream, behind it. Entries read are gathered for ``window_ms``
after the first, up to ``batch``, so jobs sent together go to the model together.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, cast

import redis

from optimem.errors import NotFound
from optimem.memory import context
from optimem.memory.context import PlacedPage
from optimem.memory.curves import Curve
from optimem.memory.reading import Reader
from optimem.memory.redis_server import Client
from optimem.memory.store import JOBS, SessionKeys, SessionMeta, Store
from optimem.model.tiers import Ladder, Tier

GROUP = "workers"
log = logging.getLogger("optimem.worker")


def ensure_group(r: Client) -> None:
    try:
        r.xgroup_create(JOBS, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    drop_done(r)


def drop_done(r: Client) -> int:
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
    # A mosaic canvas is one encode for all of its pages: one job per canvas, not one per page (4
    # or 16 jobs at once would each encode the same canvas, or read its cache). It goes out for the
    # canvas's newest changed page: the last of them to fade further, which would drop the job.
    newest: dict[tuple[str, int], int] = {}
    for p in changed:
        if p.tier.per_canvas > 1:
            canvas = (p.tier.name, p.record.page // p.tier.per_canvas)
            newest[canvas] = max(newest.get(canvas, -1), p.record.page)
    sent = [(kind, p.record.page, p.tier.name) for p in changed if not p.tier.gone for kind in kinds
            if kind != "encode" or p.tier.per_canvas == 1
            or newest[(p.tier.name, p.record.page // p.tier.per_canvas)] == p.record.page]
    store.enqueue(k, sent, noted=[(p.record.page, p.tier.name) for p in changed if not p.tier.gone])
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


def backlog(r: Client) -> int:
    """Jobs not yet done: waiting plus in progress (finished ones are deleted from the stream)."""
    return int(r.xlen(JOBS))


Handler = Callable[[dict[str, str]], None]


def batch_for(setting: int, encodes: bool) -> int:
    """Jobs a worker runs at once per kind: ``OPTIMEM_WORKER_BATCH``, or when it is 0, 8 for a
    backend that batches on a GPU (it makes visual tokens) and 1 for the CPU reader, whose reads
    are seconds of CPU each and would only crowd the cores."""
    return setting if setting > 0 else 8 if encodes else 1


class Worker:
    """Consumes the job stream. ``batch``: jobs at once per kind (encode, decode); ``window_ms``:
    how long a read waits for more entries once it has one, to fill a batch."""

    def __init__(self, r: Client, handle: Handler, name: str | None = None, claim_after_ms: int = 60_000,
                 batch: int = 1, window_ms: int = 20):
        self.r, self.handle = r, handle
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
        self.claim_after_ms = claim_after_ms
        self.batch, self.window_ms = max(1, batch), max(0, window_ms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._inflight: set[Future] = set()
        self._lock = threading.Lock()
        ensure_group(r)

    def _entries(self, block_ms: int, count: int = 8) -> list[tuple[bytes, dict]]:
        claimed = self.r.xautoclaim(JOBS, GROUP, self.name, min_idle_time=self.claim_after_ms, count=count)
        if claimed and claimed[1]:
            shed = [entry[0] for entry in claimed[1] if not entry[1]]  # trimmed while pending: forget them
            if shed:
                self.r.xack(JOBS, GROUP, *shed)
            live = [entry for entry in claimed[1] if entry[1]]
            if live:
                return live
        entries = self._read(count, block_ms)
        deadline = time.monotonic() + self.window_ms / 1000
        while entries and len(entries) < count and (left := deadline - time.monotonic()) > 0.001:
            more = self._read(count - len(entries), max(1, int(left * 1000)))
            if not more:
                break
            entries += more
        return entries

    def _read(self, count: int, block_ms: int) -> list[tuple[bytes, dict]]:
        got = self.r.xreadgroup(GROUP, self.name, {JOBS: ">"}, count=count, block=block_ms or None)
        # Our clients speak RESP2, where the reply is [[stream, [(id, fields), ...]], ...] (or None
        # when the wait ran out); redis-py's annotation also allows RESP3's dict.
        streams = cast("list[list[Any]] | None", got) or []
        return [entry for _, entries in streams for entry in entries]

    def _submit(self, entry_id: bytes, fields: dict) -> Future:
        job = {a.decode(): b.decode() for a, b in fields.items()}
        kind = "encode" if job.get("kind") == "encode" else "decode"
        with self._lock:
            if kind not in self._pools:
                self._pools[kind] = ThreadPoolExecutor(self.batch, thread_name_prefix=f"optimem-worker-{kind}")
            future = self._pools[kind].submit(self._do, entry_id, job)
            self._inflight.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        with self._lock:
            self._inflight.discard(future)

    def _do(self, entry_id: bytes, job: dict[str, str]) -> None:
        try:
            self.handle(job)
        except Exception:  # a bad job must not stop the worker; the cache stays empty and
            log.exception("job %s failed: %s", entry_id, job)  # recall reads the page itself
        with self.r.pipeline(transaction=False) as pipe:
            pipe.xack(JOBS, GROUP, entry_id)
            pipe.xdel(JOBS, entry_id)   # the stream holds only what is left to do
            pipe.execute()

    def _start(self, block_ms: int, count: int) -> list[Future]:
        futures = []
        for entry_id, fields in self._entries(block_ms, count):
            if self._stop.is_set():
                break   # left pending: claimed again after claim_after_ms by a worker that runs
            futures.append(self._submit(entry_id, fields))
        return futures

    def run_once(self, block_ms: int = 1000) -> int:
        """Read up to ``batch`` jobs, run them (at once) and return how many, once all are done."""
        futures = self._start(block_ms, self.batch)
        wait(futures)
        return len(futures)

    def run_forever(self) -> None:
        """Keep up to ``batch`` jobs of each kind running; read the stream again as soon as one ends."""
        while not self._stop.is_set():
            try:
                with self._lock:
                    running = set(self._inflight)
                if len(running) >= 2 * self.batch:
                    wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                    continue
                self._start(1000, min(self.batch, 2 * self.batch - len(running)))
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
        start = time.monotonic()
        if self._thread:
            self._thread.join(timeout=timeout_s)
        with self._lock:
            running = set(self._inflight)
        wait(running, timeout=max(0.0, timeout_s - (time.monotonic() - start)))
        for pool in list(self._pools.values()):
            pool.shutdown(wait=False, cancel_futures=True)
