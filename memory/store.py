"""The Redis schema, written down in one place, and the atomic functions that change it.

Every key of a session carries ``{tenant:session}`` as a hash tag, so one session lives on one
Redis Cluster slot and multi-key changes stay atomic in MULTI/EXEC.

    key                              type    holds                                          written by
    om:sessions:{tenant}             SET     the tenant's session ids                       create, delete
    om:{t:s}:meta                    HASH    created, curve, keep_source, next_turn          create, append, set_curve
    om:{t:s}:seal                    HASH    unsealed_from (first turn still text), next_page  seal
    om:{t:s}:turns                   HASH    turn -> {role, content, time, start, tokens}:    append, seal
                                             turns still (partly) text; ``start`` = chars
                                             of content already on sealed pages
    om:{t:s}:source                  HASH    turn -> {role, content, time}: sealed turns'      seal (keep_source only)
                                             exact text
    om:{t:s}:pages                   HASH    page -> PageRecord JSON (span, times, tokens)   seal
    om:{t:s}:png                     HASH    page -> full-resolution PNG: the truth         seal
    om:{t:s}:lines                   HASH    page -> line boxes JSON                         seal
    om:{t:s}:decoded                 HASH    "page:tier:backend@rev" -> Decoded JSON (cache)  model worker, recall
    om:{t:s}:queued                  HASH    page -> tier last sent to the model worker      retier
    om:{t:s}:vt:{unit}:{tier}:{rev}  STRING  visual tokens, safetensors bytes (cache, TTL);  model worker, context
                                             unit = page, or m<group> for a mosaic canvas
    om:jobs                          STREAM  model work; consumer group "workers"            enqueue, workers

Turns are never deleted before the page covering them is committed: ``seal`` writes the pages and
trims their turns in one transaction, guarded by WATCH on the seal state.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import redis

from optimem.errors import NotFound

JOBS = "om:jobs"


class Conflict(RuntimeError):
    """Someone else changed the seal state first; try again."""


@dataclass
class TurnRecord:
    index: int
    role: str
    content: str
    time: str
    start: int = 0     # chars of content already typeset onto sealed pages
    tokens: int = 0    # text tokens of content[start:]


@dataclass
class PageRecord:
    page: int
    first_turn: int
    first_offset: int
    last_turn: int
    end_offset: int
    sealed_at_turn: int          # the session's turn count when the page was sealed
    sealed_time: float
    first_time: str
    last_time: str
    text_tokens: int             # text tokens of everything typeset on the page
    turns: list[dict[str, Any]] = field(default_factory=list)  # [{index, role, time, start, end}]


@dataclass(frozen=True)
class SessionMeta:
    """A session's settings and size, read once per call and passed down with its keys."""
    created: float
    curve: str          # the curve's JSON
    keep_source: bool
    turns: int          # turns appended so far (the next turn's index)


class SessionKeys:
    """The Redis keys of one session; made once a session id is validated, then passed along."""

    def __init__(self, tenant: str, session: str):
        self.tenant, self.session = tenant, session
        tag = f"om:{{{tenant}:{session}}}"
        self.meta, self.seal, self.turns, self.source = (f"{tag}:meta", f"{tag}:seal", f"{tag}:turns",
                                                         f"{tag}:source")
        self.pages, self.png, self.lines = f"{tag}:pages", f"{tag}:png", f"{tag}:lines"
        self.decoded, self.queued = f"{tag}:decoded", f"{tag}:queued"
        self.tag = tag
        self.index = f"om:sessions:{{{tenant}}}"

    def visual_tokens(self, unit: str, tier: str, revision: str) -> str:
        """``unit`` is a page number, or "m<group>" for a mosaic canvas of several pages."""
        return f"{self.tag}:vt:{unit}:{tier}:{revision}"

    def all(self) -> list[str]:
        return [self.meta, self.seal, self.turns, self.source, self.pages, self.png, self.lines,
                self.decoded, self.queued]


def _s(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """Thin functions over redis-py; no ORM. Every multi-key change is one transaction here."""

    def __init__(self, client: redis.Redis):
        self.r = client

    # -- sessions ---------------------------------------------------------------------------
    def create_session(self, k: SessionKeys, curve_json: str, keep_source: bool) -> bool:
        """False if the id is taken (HSETNX on meta makes concurrent creates safe)."""
        if not self.r.hsetnx(k.meta, "created", repr(time.time())):
            return False
        with self.r.pipeline() as p:
            p.hset(k.meta, mapping={"curve": curve_json, "keep_source": int(keep_source), "next_turn": 0})
            p.hset(k.seal, mapping={"unsealed_from": 0, "next_page": 0})
            p.execute()
        self.r.sadd(k.index, k.session)
        return True

    def meta(self, k: SessionKeys) -> SessionMeta:
        raw = {_s(a): _s(b) for a, b in self.r.hgetall(k.meta).items()}
        if "curve" not in raw:
            raise NotFound(f"no session {k.session!r}")
        return SessionMeta(float(raw["created"]), raw["curve"], raw["keep_source"] == "1", int(raw["next_turn"]))

    def sessions(self, tenant: str) -> list[str]:
        return sorted(_s(s) for s in self.r.smembers(f"om:sessions:{{{tenant}}}"))

    def delete_session(self, k: SessionKeys) -> None:
        vt_keys = list(self.r.scan_iter(match=f"{k.tag}:vt:*", count=1000))
        with self.r.pipeline() as p:
            p.delete(*k.all(), *vt_keys)
            p.execute()
        self.r.srem(k.index, k.session)

    def set_curve(self, k: SessionKeys, curve_json: str) -> None:
        self.r.hset(k.meta, "curve", curve_json)

    # -- turns ------------------------------------------------------------------------------
    def append(self, k: SessionKeys, turns: list[TurnRecord]) -> int:
        """Give the turns the next indices and store them atomically; returns the first index."""
        with self.r.pipeline() as p:
            while True:
                try:
                    p.watch(k.meta)
                    if not p.exists(k.meta):
                        raise NotFound(f"no session {k.session!r}")
                    first = int(p.hget(k.meta, "next_turn"))
                    p.multi()
                    for offset, turn in enumerate(turns):
                        turn.index = first + offset
                        p.hset(k.turns, turn.index, json.dumps(asdict(turn)))
                    p.hset(k.meta, "next_turn", first + len(turns))
                    p.execute()
                    return first
                except redis.WatchError:
                    continue

    def text_turns(self, k: SessionKeys) -> list[TurnRecord]:
        raw = self.r.hgetall(k.turns)
        return sorted((TurnRecord(**json.loads(v)) for v in raw.values()), key=lambda t: t.index)

    def seal_state(self, k: SessionKeys) -> tuple[int, int]:
        return self.seal_state_of(self.r, k)

    def seal(self, k: SessionKeys, expect: tuple[int, int], pages: list[tuple[PageRecord, bytes, list]],
             turns: dict[int, TurnRecord], keep_source: bool) -> None:
        """Commit sealed pages and trim the turns they cover, in one transaction.

        ``expect`` is the seal state the pages were typeset from; if it moved, nothing is written
        and Conflict is raised. A turn finished on a page leaves ``turns`` (and goes to ``source``
        when the session keeps source text); a turn that continues past the last page stays, with
        ``start`` moved past what was sealed.
        """
        last = pages[-1][0]
        with self.r.pipeline() as p:
            try:
                p.watch(k.seal)
                if self.seal_state_of(p, k) != expect:
                    raise Conflict("seal state moved")
                p.multi()
                for record, png, lines in pages:
                    p.hset(k.pages, record.page, json.dumps(asdict(record)))
                    p.hset(k.png, record.page, png)
                    p.hset(k.lines, record.page, json.dumps(lines))
                for index in range(expect[0], last.last_turn + 1):
                    turn = turns[index]
                    if index == last.last_turn and last.end_offset < len(turn.content):
                        p.hset(k.turns, index, json.dumps(asdict(turn)))  # caller moved start/tokens
                        continue
                    if keep_source:
                        p.hset(k.source, index, json.dumps(
                            {"role": turn.role, "content": turn.content, "time": turn.time}))
                    p.hdel(k.turns, index)
                finished = last.end_offset >= len(turns[last.last_turn].content)
                p.hset(k.seal, mapping={"unsealed_from": last.last_turn + (1 if finished else 0),
                                        "next_page": last.page + 1})
                p.execute()
            except redis.WatchError:
                raise Conflict("seal state moved") from None

    @staticmethod
    def seal_state_of(p, k: SessionKeys) -> tuple[int, int]:
        unsealed_from, next_page = p.hmget(k.seal, "unsealed_from", "next_page")
        return int(unsealed_from or 0), int(next_page or 0)

    # -- pages ------------------------------------------------------------------------------
    def pages(self, k: SessionKeys) -> list[PageRecord]:
        raw = self.r.hgetall(k.pages)
        return sorted((PageRecord(**json.loads(v)) for v in raw.values()), key=lambda p: p.page)

    def page(self, k: SessionKeys, page: int) -> PageRecord:
        raw = self.r.hget(k.pages, page)
        if raw is None:
            raise NotFound(f"session {k.session!r} has no page {page}")
        return PageRecord(**json.loads(raw))

    def png(self, k: SessionKeys, page: int) -> bytes:
        data = self.r.hget(k.png, page)
        if data is None:
            raise NotFound(f"session {k.session!r} has no page {page}")
        return data

    def pngs(self, k: SessionKeys, pages: Iterable[int]) -> list[bytes]:
        """The PNGs of those pages that exist, in order (a mosaic group may not be full yet)."""
        return [png for png in self.r.hmget(k.png, list(pages)) if png]

    def lines(self, k: SessionKeys, page: int) -> list[list]:
        raw = self.r.hget(k.lines, page)
        return json.loads(raw) if raw else []

    def sources(self, k: SessionKeys, turns: Iterable[int]) -> dict[int, dict]:
        """Exact text of turns, sealed (if kept) or still text."""
        wanted = list(dict.fromkeys(turns))
        if not wanted:
            return {}
        out: dict[int, dict] = {}
        for index, raw in zip(wanted, self.r.hmget(k.source, wanted)):
            if raw:
                out[index] = json.loads(raw)
        missing = [i for i in wanted if i not in out]
        if missing:
            for index, raw in zip(missing, self.r.hmget(k.turns, missing)):
                if raw:
                    t = json.loads(raw)
                    out[index] = {"role": t["role"], "content": t["content"], "time": t["time"]}
        return out

    # -- caches -----------------------------------------------------------------------------
    def cached_decoded(self, k: SessionKeys, page: int, tier: str, reader: str) -> dict | None:
        raw = self.r.hget(k.decoded, f"{page}:{tier}:{reader}")
        return json.loads(raw) if raw else None

    def cache_decoded(self, k: SessionKeys, page: int, tier: str, reader: str, decoded: dict) -> None:
        # HSETNX: two workers reading the same page never leave two different answers behind.
        self.r.hsetnx(k.decoded, f"{page}:{tier}:{reader}", json.dumps(decoded))

    def cached_tokens(self, k: SessionKeys, unit: str, tier: str, revision: str) -> bytes | None:
        return self.r.get(k.visual_tokens(unit, tier, revision))

    def cache_tokens(self, k: SessionKeys, unit: str, tier: str, revision: str, data: bytes, ttl_s: int) -> None:
        """Set-if-absent with a TTL: caches expire (and with maxmemory-policy volatile-lru, Redis may
        evict them under memory pressure) while turns and pages, which have no TTL, never are."""
        self.r.set(k.visual_tokens(unit, tier, revision), data, nx=True, ex=ttl_s or None)

    def drop_tokens(self, k: SessionKeys, unit: str, tier: str, revision: str) -> None:
        self.r.delete(k.visual_tokens(unit, tier, revision))

    # -- model jobs -------------------------------------------------------------------------
    def queued_tiers(self, k: SessionKeys) -> dict[int, str]:
        return {int(a): _s(b) for a, b in self.r.hgetall(k.queued).items()}

    def enqueue(self, k: SessionKeys, jobs: list[tuple[str, int, str]]) -> None:
        """Send (kind, page, tier) jobs to the model workers and note each page's tier as queued,
        in one round trip; the note goes after the XADDs, so a crash between them re-sends."""
        with self.r.pipeline(transaction=False) as pipe:
            for kind, page, tier in jobs:
                pipe.xadd(JOBS, {"kind": kind, "tenant": k.tenant, "session": k.session, "page": page,
                                 "tier": tier}, maxlen=1_000_000, approximate=True)
            for _, page, tier in jobs:
                pipe.hset(k.queued, page, tier)
            pipe.execute()
