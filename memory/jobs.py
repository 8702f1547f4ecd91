"""Model work on a Redis Stream with a consumer group, so API processes stay fast and any number of
workers (on any machine that reaches the Redis) share the load; and re-tiering, which sends it.

A job is {kind, tenant, session, page, tier}. Results go into caches with set-if-absent writes, so a
job done twice leaves one answer. A worker that dies mid-job leaves the entry pending; another
worker claims it after ``claim_after_ms`` (XAUTOCLAIM).
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
from optimem.memory.context import PlacedPage
from optimem.memory.reading import Reader
from optimem.memory.store import JOBS, SessionKeys, Store
from optimem.model.tiers import Tier

GROUP = "workers"
log = logging.getLogger("optimem.worker")


def ensure_group(r: redis.Redis) -> None:
    try:
        r.xgroup_create(JOBS, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


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


def retier(store: Store, k: SessionKeys, placed: list[PlacedPage], encodes: bool) -> int:
    """Send pages whose tier changed since they were last sent to the model workers, to be read
    (and encoded) ahead of use. Returns how many pages were sent."""
    queued = store.queued_tiers(k)
    changed = [p for p in placed if not p.tier.gone and queued.get(p.record.page) != p.tier.name]
    kinds = ("encode", "decode") if encodes else ("decode",)
    store.enqueue(k, [(kind, p.record.page, p.tier.name) for p in changed for kind in kinds])
    return len(changed)


def handle(job: Job, tier_now: Callable[[SessionKeys, int], Tier], reader: Reader) -> None:
    """Do one job, unless its page faded further while it waited (a newer job has it) or its
    session or page was deleted since."""
    try:
        tier = tier_now(job.k, job.page)
        if tier.name != job.tier:
            return
        if job.kind == "encode":
            reader.visual_tokens(job.k, job.page, tier)
        elif job.kind == "decode":
            reader.decoded(job.k, job.page, tier)
        else:
            log.warning("unknown job kind %r", job.kind)
    except NotFound:
        pass


def backlog(r: redis.Redis) -> int:
    """Jobs not yet acknowledged: waiting plus in progress."""
    try:
        info = r.xinfo_groups(JOBS)
    except redis.ResponseError:
        return 0
    for group in info:
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name != GROUP:
            continue
        lag = group.get("lag")
        if lag is None:  # Redis < 7 has no lag: count what was added after the last delivery
            last = group["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            lag = len(r.xrange(JOBS, min=f"({last}", max="+"))
        return int(lag) + int(group["pending"])
    return 0


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
            return [entry for entry in claimed[1] if entry[1]]
        got = self.r.xreadgroup(GROUP, self.name, {JOBS: ">"}, count=8, block=block_ms or None)
        return [entry for _, entries in got or [] for entry in entries]

    def run_once(self, block_ms: int = 1000) -> int:
        done = 0
        for entry_id, fields in self._entries(block_ms):
            job = {a.decode(): b.decode() for a, b in fields.items()}
            try:
                self.handle(job)
            except Exception:  # a bad job must not stop the worker; the cache stays empty and
                log.exception("job %s failed: %s", entry_id, job)  # recall reads the page itself
            self.r.xack(JOBS, GROUP, entry_id)
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

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
