"""The Redis schema, written down in one place, and the atomic functions that change it.

Every key of a session carries ``{tenant:session}`` as a hash tag, so one session lives on one
Redis Cluster slot and multi-key changes stay atomic in MULTI/EXEC (with WATCH) on a cluster too
(``redis_server.ClusterClient``: ``OPTIMEM_REDIS_URL=redis+cluster://host:port``). The global keys
(``om:sessions:{tenant}``, ``om:jobs``, ``om:jobs:shed``) are each on a slot of their own and are
only ever written alone or in non-transactional pipelines.

    key                              type    holds                                          written by
    om:sessions:{tenant}             SET     the tenant's session ids (SessionKeys.sessions) create, delete
    om:{t:s}:meta                    HASH    created, curve, keep_source, next_turn,         create, append, set_curve,
                                             text_tokens (of the turns not sealed yet)       seal
    om:{t:s}:seal                    HASH    unsealed_from (first turn still text), next_page  seal
    om:{t:s}:turns                   HASH    turn -> {role, content, time, start, tokens}:    append, seal
                                             turns still (partly) text; ``start`` = chars
                                             of content already on sealed pages
    om:{t:s}:source                  HASH    turn -> {role, content, time}: sealed turns'      seal (keep_source only)
                                             exact text
    om:{t:s}:pages                   HASH    page -> PageRecord JSON (span, times, tokens)   seal
    om:{t:s}:pages:by_turn           ZSET    page -> its last turn: ages, tier crossings      seal (built lazily
                                             (ZRANGEBYSCORE), without parsing PageRecords    from pages for an
    om:{t:s}:pages:info              HASH    page -> [first_turn, last_turn, first_time,     older session:
                                             last_time, text_tokens, min_time, max_time]:    page_entries)
                                             what tiers, costs, context rows and recall by
                                             time need (rows of older sessions lack the
                                             last two)
    om:{t:s}:png                     HASH    page -> full-resolution PNG: the truth         seal
    om:{t:s}:lines                   HASH    page -> line boxes JSON                         seal
    om:{t:s}:decoded                 HASH    "page:tier:backend@rev" -> Decoded JSON (cache)  model worker, recall
    om:{t:s}:reading:{page}:{tier}:{backend@rev}                                               Reader (claim_read)
                                     STRING  a lock (memory/locks.py): this page is being read
                                             at this tier by some process (short-lived);
                                             others wait for the decoded cache instead
    om:{t:s}:lock:compact            STRING  a lock (memory/locks.py): some API process is      Memory.append
                                             compacting this session (30 s lease; saves wasted  (memory/locks.py)
                                             typesetting, the seal's WATCH keeps correctness)
    om:{t:s}:queued                  HASH    page -> tier last sent to the model worker      retier
                                             (read-ahead only: waiting or in progress; a
                                             worker deletes an entry once done; past
                                             OPTIMEM_JOBS_MAX entries the oldest are shed)
    om:{t:s}:retiered                HASH    turns, pages, curve: the session as the last     retier
                                             retier saw it; the next one reads only pages
                                             that crossed a tier boundary since (or are new)
    om:{t:s}:forgotten               SET     turns forgotten on request (text gone, number    forget (memory/
                                             kept; their records say ``forgotten``)           erasure.py)
    om:{t:s}:vec                     HASH    "<model>:<dims>:<block>" -> float16 turn         recall's first
                                             vectors, "forgets" -> their generation (TTL 7   question (memory/
                                             days; memory/vectors.py)                        vectors.py); forget
    om:{t:s}:vt:{unit}:{tier}:{rev}  STRING  visual tokens, safetensors bytes (cache, TTL);  model worker, context
                                             unit = page, or m<group> for a mosaic canvas
                                             (its rev then ends ":<generation>", as below)
                                             (SessionKeys.token_cache)
    om:{t:s}:canvas:{tier}:{group}:{generation}                                                PageImages (context,
                                     STRING  a mosaic canvas's PNG (cache, TTL); generation =   mosaic image route)
                                             "<created>-<pages of the group that exist>"
    om:jobs                          STREAM  model work; consumer group "workers"            enqueue, workers
    om:jobs:shed                     STRING  count of jobs shed (trimmed unread) so far      enqueue
    om:quota:{tenant}:recalls        ZSET    lease -> expiry: the tenant's recalls running    memory/quotas.py
    om:quota:{tenant}:appends:{sec}  STRING  the tenant's append calls in that second         (fair shares)

The text index (``memory/index.py``; BM25 over turns, written in the same MULTI as what causes it).
Documents: ``t<turn>`` a turn's exact text, ``p<page>:<turn>`` what a read of a page gave of a turn.

    om:{t:s}:ix:p:{term}             ZSET    doc -> tf * 2^20 + doc length (a posting list)   append, seal,
                                                                                            index_decoded
    om:{t:s}:ix:vocab                ZSET    term -> document frequency (no zeros kept)       (same)
    om:{t:s}:ix:docs                 HASH    doc -> "<length> <term> ...": what to remove     (same)
    om:{t:s}:ix:stats                HASH    docs, tokens (average document length)           (same)
    om:{t:s}:ix:pages                HASH    page -> tier key its decoded text was indexed at index_decoded,
                                             (forget-for-real sessions only)                  unindex_pages

Keep-source sessions index every turn's source at append and keep it (a page that fades to gone
still has its source). Forget-for-real sessions index a turn's text at append, drop it when the
turn is sealed onto a page (``seal``), index a page's decoded text when it is read
(``index_decoded``, replacing an earlier read) and drop it when the page is gone (``unindex_pages``).
A turn read by recall alone (only its lines) is cached in ``decoded`` as
"page:tier:t<turn>:backend@rev" beside the whole-page entries.

Turns are never deleted before the page covering them is committed: ``seal`` writes the pages and
trims their turns in one transaction, guarded by WATCH on the seal state and on ``meta`` (a session
deleted meanwhile stays deleted). Every WATCH/MULTI goes through redis-py's ``transaction()``
(``RedisCluster.transaction`` too), which retries when a watched key moved.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.exceptions import LockNotOwnedError

from optimem.errors import NotFound
from optimem.memory import index as ix, locks
from optimem.memory.redis_server import Client

JOBS = "om:jobs"
JOBS_SHED = "om:jobs:shed"
CLAIM_MS = 120_000  # a read claim's lease (a process that died mid-read); Reader passes its own
JOBS_MAX = 10_000   # default cap of the job stream (Settings.jobs_max; Memory.open sets it per store)


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
    forgotten: bool = False   # forgotten on request (memory/erasure.py): content emptied, number kept


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
    importing: float | None = None     # an import's latest sign of life (memory/transfer.py); None: not importing


class SessionKeys:
    """The Redis keys of one session; made once a session id is validated, then passed along."""

    def __init__(self, tenant: str, session: str):
        self.tenant, self.session = tenant, session
        tag = f"om:{{{tenant}:{session}}}"
        self.meta, self.seal, self.turns, self.source = (f"{tag}:meta", f"{tag}:seal", f"{tag}:turns",
                                                         f"{tag}:source")
        self.pages, self.png, self.lines = f"{tag}:pages", f"{tag}:png", f"{tag}:lines"
        self.decoded, self.queued = f"{tag}:decoded", f"{tag}:queued"
        self.by_turn, self.page_info, self.retiered = f"{tag}:pages:by_turn", f"{tag}:pages:info", f"{tag}:retiered"
        self.forgotten = f"{tag}:forgotten"
        self.vectors = f"{tag}:vec"      # recall's turn vectors (memory/vectors.py)
        self.tag = tag
        self.sessions = f"om:sessions:{{{tenant}}}"     # the tenant's session ids (not the text index)

    def reading(self, page: int, tier: str, reader: str) -> str:
        """The claim key of a page read in flight at a tier (``tier`` as in the decoded cache)."""
        return f"{self.tag}:reading:{page}:{tier}:{reader}"

    def token_cache(self, unit: str, tier: str, revision: str) -> str:
        """Where a unit's visual tokens are cached. ``unit`` is a page number, or "m<group>" for a
        mosaic canvas of several pages."""
        return f"{self.tag}:vt:{unit}:{tier}:{revision}"

    def canvas(self, group: int, tier: str, generation: str) -> str:
        """Where a mosaic canvas's PNG is cached: ``generation`` names the pages drawn on it."""
        return f"{self.tag}:canvas:{tier}:{group}:{generation}"

    def all(self) -> list[str]:
        return [self.meta, self.seal, self.turns, self.source, self.pages, self.png, self.lines,
                self.decoded, self.queued, self.by_turn, self.page_info, self.retiered, self.forgotten, self.vectors]


def page_entry(record: PageRecord) -> str:
    """A page's row in ``pages:info``: what its tier, cost and context row need, and the earliest
    and latest time of its turns (callers may send times out of order), for recall by time."""
    times = [span["time"] for span in record.turns] or [record.first_time, record.last_time]
    return json.dumps([record.first_turn, record.last_turn, record.first_time, record.last_time,
                       record.text_tokens, min(times), max(times)], separators=(",", ":"))


def light_record(page: int, raw: bytes | str) -> PageRecord:
    """A PageRecord from a ``pages:info`` row: spans' offsets, seal time and ``turns`` left empty
    (read the full record with ``Store.pages_of`` where those are needed)."""
    first_turn, last_turn, first_time, last_time, text_tokens = json.loads(raw)[:5]
    return PageRecord(page=page, first_turn=first_turn, first_offset=0, last_turn=last_turn, end_offset=0,
                      sealed_at_turn=0, sealed_time=0.0, first_time=first_time, last_time=last_time,
                      text_tokens=text_tokens)


def _s(value: bytes | str) -> str:
    """A reply as text (our clients answer bytes: none sets decode_responses)."""
    return value.decode() if isinstance(value, bytes) else value


def _b(value: bytes | str) -> bytes:
    """A binary reply as bytes: it always is (no decode_responses), though redis-py's annotations
    allow str too."""
    return value if isinstance(value, bytes) else value.encode()


T = TypeVar("T")


class Store:
    """Thin functions over redis-py; no ORM. Every multi-key change is one transaction here."""

    jobs_max: int = JOBS_MAX   # the job stream's cap (Memory.open sets Settings.jobs_max per store)

    def __init__(self, client: Client):
        self.r = client

    def _transaction(self, func: Callable[[Pipeline], T], *watches: str) -> T:
        """redis-py's ``transaction()`` (WATCH, MULTI/EXEC, retried while a watched key moves),
        returning what ``func`` returned. redis-py annotates ``func`` as returning None and the call
        as returning EXEC's replies, which holds only without ``value_from_callable``."""
        return self.r.transaction(func, *watches, value_from_callable=True)  # type: ignore[arg-type, return-value]

    # -- sessions ---------------------------------------------------------------------------
    def create_session(self, k: SessionKeys, curve_json: str, keep_source: bool) -> bool:
        """False if the id is taken (HSETNX on meta makes concurrent creates safe)."""
        if not self.r.hsetnx(k.meta, "created", repr(time.time())):
            return False
        with self.r.pipeline() as p:
            p.hset(k.meta, mapping={"curve": curve_json, "keep_source": int(keep_source), "next_turn": 0})
            p.hset(k.seal, mapping={"unsealed_from": 0, "next_page": 0})
            p.execute()
        self.r.sadd(k.sessions, k.session)
        return True

    def meta(self, k: SessionKeys) -> SessionMeta:
        raw = {_s(a): _s(b) for a, b in self.r.hgetall(k.meta).items()}
        if "curve" not in raw:
            raise NotFound(f"no session {k.session!r}")
        return SessionMeta(float(raw["created"]), raw["curve"], raw["keep_source"] == "1", int(raw["next_turn"]),
                           float(raw["importing"]) if raw.get("importing") else None)

    def import_alive(self, k: SessionKeys, stamp: float | None) -> None:
        """An import building the session is alive at ``stamp`` (None: it finished). Only on a session
        that exists (a DELETE meanwhile is not undone by a stray meta field)."""
        def write(p) -> None:
            if not p.exists(k.meta):
                raise NotFound(f"no session {k.session!r}")
            p.multi()
            if stamp is None:
                p.hdel(k.meta, "importing")
            else:
                p.hset(k.meta, "importing", repr(stamp))

        self.r.transaction(write, k.meta)

    def sessions(self, tenant: str) -> list[str]:
        return sorted(_s(s) for s in self.r.smembers(f"om:sessions:{{{tenant}}}"))

    def delete_session(self, k: SessionKeys) -> None:
        vt_keys = self._keys_with_prefix(k, f"{k.tag}:vt:") + self._keys_with_prefix(k, f"{k.tag}:canvas:")

        def drop(p) -> None:
            # WATCH the vocabulary: a term added by a concurrent append is not left behind.
            terms = [_s(t) for t in p.zrange(ix.vocab_key(k.tag), 0, -1)]
            p.multi()
            p.delete(*k.all(), *vt_keys, *ix.fixed_keys(k.tag))
            for i in range(0, len(terms), 10_000):
                p.delete(*(ix.post_key(k.tag, t) for t in terms[i:i + 10_000]))

        self.r.transaction(drop, ix.vocab_key(k.tag))
        self.r.srem(k.sessions, k.session)

    def _keys_with_prefix(self, k: SessionKeys, prefix: str) -> list:
        """The session's keys that start with ``prefix``: SCAN on one server; on a Redis Cluster only
        the session's slot is listed (CLUSTER GETKEYSINSLOT on the node that owns it), since a SCAN
        would walk every node's whole keyspace."""
        if isinstance(self.r, RedisCluster):
            slot = self.r.keyslot(k.meta)
            node = self.r.nodes_manager.get_node_from_slot(slot)
            count = int(self.r.execute_command("CLUSTER COUNTKEYSINSLOT", slot, target_nodes=node))
            keys = self.r.execute_command("CLUSTER GETKEYSINSLOT", slot, count, target_nodes=node) if count else []
            return [key for key in keys if _s(key).startswith(prefix)]
        return list(self.r.scan_iter(match=f"{prefix}*", count=1000))

    def set_curve(self, k: SessionKeys, curve_json: str) -> None:
        self.r.hset(k.meta, "curve", curve_json)

    # -- turns ------------------------------------------------------------------------------
    def append(self, k: SessionKeys, turns: list[TurnRecord]) -> int:
        """Give the turns the next indices and store them atomically; returns the first index."""

        def add(p) -> int:
            if not p.exists(k.meta):
                raise NotFound(f"no session {k.session!r}")
            first, counted = p.hmget(k.meta, "next_turn", "text_tokens")
            first = int(first)
            if counted is None:     # a session from before the count: count its text once
                counted = sum(json.loads(v)["tokens"] for v in p.hvals(k.turns))
            p.multi()
            for offset, turn in enumerate(turns):
                turn.index = first + offset
            if turns:
                p.hset(k.turns, mapping={turn.index: json.dumps(vars(turn)) for turn in turns})
            ix.add_many(p, k.tag, ((ix.source_doc(turn.index), turn.content) for turn in turns))
            p.hset(k.meta, mapping={"next_turn": first + len(turns),
                                    "text_tokens": int(counted) + sum(t.tokens for t in turns)})
            return first

        return self._transaction(add, k.meta)

    def text_tokens(self, k: SessionKeys) -> int:
        """Tokens of the text not sealed yet (kept in ``meta`` by append and seal): whether a seal
        may be due, without reading the turns."""
        counted = self.r.hget(k.meta, "text_tokens")
        return int(counted) if counted is not None else 1 << 62

    def text_turns(self, k: SessionKeys) -> list[TurnRecord]:
        raw = self.r.hgetall(k.turns)
        return sorted((TurnRecord(**json.loads(v)) for v in raw.values()), key=lambda t: t.index)

    def text_turns_at(self, k: SessionKeys, turns: list[int]) -> dict[int, TurnRecord | None]:
        """These turns as kept in the text (None: not there, sealed or never appended): one HMGET,
        so a read touches the turns it asks for, not a backlog of thousands."""
        if not turns:
            return {}
        return {t: TurnRecord(**json.loads(raw)) if raw else None for t, raw in zip(turns, self.r.hmget(k.turns, turns))}

    def text_tail(self, k: SessionKeys, tokens: int, batch: int = 128) -> tuple[list[TurnRecord], int]:
        """The newest turns kept as text, oldest first, until they hold more than ``tokens`` text
        tokens, and how many older text turns were left unread: what a context of a budget can
        show, without reading a bulk import's whole backlog (HMGET in batches from the newest)."""
        with self.r.pipeline(transaction=False) as p:     # one round trip (one hash tag: cluster-safe)
            p.hget(k.seal, "unsealed_from")
            p.hget(k.meta, "next_turn")
            unsealed_from, next_turn = p.execute()
        first, end = int(unsealed_from or 0), int(next_turn or 0)
        got: list[TurnRecord] = []
        spent, at = 0, end
        while at > first and spent <= tokens:
            ask = list(range(max(first, at - batch), at))
            for raw in reversed(self.r.hmget(k.turns, ask)):
                at -= 1
                if raw:
                    turn = TurnRecord(**json.loads(raw))
                    got.append(turn)
                    spent += turn.tokens
                    if spent > tokens:
                        break
        return got[::-1], at - first

    def seal_state(self, k: SessionKeys) -> tuple[int, int]:
        return self.seal_state_of(self.r, k)

    def seal(self, k: SessionKeys, expect: tuple[int, int], pages: list[tuple[PageRecord, bytes, list]],
             turns: dict[int, TurnRecord], keep_source: bool, sealed_tokens: int = 0) -> None:
        """Commit sealed pages and trim the turns they cover, in one transaction.

        ``expect`` is the seal state the pages were typeset from; if it moved, nothing is written
        and Conflict is raised. A turn finished on a page leaves ``turns`` (and goes to ``source``
        when the session keeps source text); a turn that continues past the last page stays, with
        ``start`` moved past what was sealed. ``sealed_tokens``: text tokens that leave the text.
        """
        last = pages[-1][0]

        def write(p) -> None:
            # The session must still exist (a DELETE between the compactor's read and this would
            # otherwise be undone: pages, PNGs and source written into a deleted session).
            if not p.exists(k.meta):
                raise NotFound(f"no session {k.session!r}")
            if self.seal_state_of(p, k) != expect:
                raise Conflict("seal state moved")
            finished_turns = [i for i in range(expect[0], last.last_turn + 1)
                              if i != last.last_turn or last.end_offset >= len(turns[i].content)]
            # A forget-for-real session no longer holds a sealed turn in words: its text leaves
            # the index with it (the page's decoded text comes in when the page is read).
            unindex = {} if keep_source or not finished_turns else dict(zip(
                (ix.source_doc(i) for i in finished_turns),
                p.hmget(ix.docs_key(k.tag), [ix.source_doc(i) for i in finished_turns])))
            p.multi()
            ix.remove(p, k.tag, unindex)
            for record, png, lines in pages:
                p.hset(k.pages, record.page, json.dumps(vars(record)))
                p.zadd(k.by_turn, {record.page: record.last_turn})
                p.hset(k.page_info, record.page, page_entry(record))
                p.hset(k.png, record.page, png)
                p.hset(k.lines, record.page, json.dumps(lines))
            for index in range(expect[0], last.last_turn + 1):
                turn = turns[index]
                if index == last.last_turn and last.end_offset < len(turn.content):
                    p.hset(k.turns, index, json.dumps(vars(turn)))  # caller moved start/tokens
                    continue
                if keep_source:
                    p.hset(k.source, index, json.dumps(
                        {"role": turn.role, "content": turn.content, "time": turn.time}))
                p.hdel(k.turns, index)
            finished = last.end_offset >= len(turns[last.last_turn].content)
            p.hset(k.seal, mapping={"unsealed_from": last.last_turn + (1 if finished else 0),
                                    "next_page": last.page + 1})
            p.hincrby(k.meta, "text_tokens", -sealed_tokens)

        # WATCH meta too: a DELETE, or an append (then tried again: the seal state tells whether
        # another seal came first, and Conflict is raised).
        self.r.transaction(write, k.seal, k.meta)

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

    def pages_of(self, k: SessionKeys, pages: list[int]) -> list[PageRecord]:
        """Full records of these pages (those that exist), in the order asked."""
        if not pages:
            return []
        return [PageRecord(**json.loads(raw)) for raw in self.r.hmget(k.pages, pages) if raw]

    # -- the page index (pages:by_turn, pages:info): ages, tiers and costs without PageRecords ------
    def build_page_index(self, k: SessionKeys) -> int:
        """Write the page index from the page records (a session sealed before the index existed):
        one pass, guarded by WATCH on the seal state so a concurrent seal is not missed. Returns
        how many pages it holds."""

        def build(p) -> int:
            records = [PageRecord(**json.loads(v)) for v in p.hgetall(k.pages).values()]
            p.multi()
            for i in range(0, len(records), 1000):
                chunk = records[i:i + 1000]
                p.zadd(k.by_turn, {r.page: r.last_turn for r in chunk})
                p.hset(k.page_info, mapping={r.page: page_entry(r) for r in chunk})
            return len(records)

        return self._transaction(build, k.seal)

    def page_entries(self, k: SessionKeys, after_turn: float | None = None) -> tuple[list[PageRecord], int]:
        """Light records (``light_record``) of the pages whose last turn is after ``after_turn``
        (None: every page), by page number, and how many pages the session has in all: one round
        trip for every page, two for a range. Builds the index first where it is missing or short
        (an older session; the seal writes it in the same transaction as the pages)."""
        for _ in range(3):
            with self.r.pipeline(transaction=False) as p:
                p.zcard(k.by_turn)
                p.hlen(k.pages)
                if after_turn is None:
                    p.hgetall(k.page_info)
                else:
                    p.zrangebyscore(k.by_turn, f"({after_turn}", "+inf")
                indexed, total, got = p.execute()
            if indexed < total:
                self.build_page_index(k)
                continue
            if after_turn is None:
                rows = [(int(page), raw) for page, raw in got.items()]
            else:
                wanted = [int(page) for page in got]
                rows = list(zip(wanted, self.r.hmget(k.page_info, wanted))) if wanted else []
            return sorted((light_record(page, raw) for page, raw in rows if raw), key=lambda r: r.page), indexed
        raise RuntimeError("the page index could not be built")  # pragma: no cover

    def page_entries_of(self, k: SessionKeys, pages: Iterable[int]) -> list[PageRecord]:
        """Light records of these pages (those that exist), by page number."""
        wanted = sorted(set(pages))
        if not wanted:
            return []
        raws = self.r.hmget(k.page_info, wanted)
        if any(raw is None for raw in raws) and self.r.zcard(k.by_turn) < self.r.hlen(k.pages):
            self.build_page_index(k)
            raws = self.r.hmget(k.page_info, wanted)
        return [light_record(page, raw) for page, raw in zip(wanted, raws) if raw]

    def page_entry(self, k: SessionKeys, page: int) -> PageRecord:
        got = self.page_entries_of(k, [page])
        if not got:
            raise NotFound(f"session {k.session!r} has no page {page}")
        return got[0]

    def pages_holding(self, k: SessionKeys, turns: Iterable[int]) -> list[PageRecord]:
        """Full records of the pages that hold any of these turns, by page number: O(turns asked),
        not O(pages). Pages are in turn order, so the pages holding turn t are those whose last
        turn is t (ZRANGEBYSCORE t t: a long turn runs over several) and the first page ending
        after t, where that page begins at or before t."""
        wanted = sorted(set(turns))
        if not wanted:
            return []
        self.page_entries_of(k, [0])      # builds the page index of an older session (cheap if there)
        with self.r.pipeline(transaction=False) as p:
            for t in wanted:
                p.zrangebyscore(k.by_turn, t, t)
                p.zrangebyscore(k.by_turn, f"({t}", "+inf", start=0, num=1)
            got = p.execute()
        pages = {int(page) for found in got for page in found}
        records = self.pages_of(k, sorted(pages))
        return [r for r in records if any(r.first_turn <= t <= r.last_turn for t in wanted)]

    def pages_in_time(self, k: SessionKeys, since: str | None, until: str | None) -> list[int]:
        """Pages that may hold a turn timed within [since, until] (normalised ISO strings, which sort
        as times do), by page number: one HGETALL of the compact index, no PageRecord parsed. A row
        written before it carried its min/max times is kept (it may hold one)."""
        self.page_entries_of(k, [0])
        out = []
        for page, raw in self.r.hgetall(k.page_info).items():
            row = json.loads(raw)
            if len(row) < 7 or ((since is None or row[6] >= since) and (until is None or row[5] <= until)):
                out.append(int(page))
        return sorted(out)

    def pages_ending_in(self, k: SessionKeys, ranges: list[tuple[float, float]]) -> set[int]:
        """Pages whose last turn lies in any of the ranges (lo, hi], in one round trip."""
        ranges = [(lo, hi) for lo, hi in ranges if hi > lo]
        if not ranges:
            return set()
        with self.r.pipeline(transaction=False) as p:
            for lo, hi in ranges:
                p.zrangebyscore(k.by_turn, f"({lo}", hi)
            return {int(page) for got in p.execute() for page in got}

    def retier_mark(self, k: SessionKeys) -> tuple[int, int, str] | None:
        """(turns, pages, curve JSON) as the last retier saw the session, or None."""
        turns, pages, curve = self.r.hmget(k.retiered, "turns", "pages", "curve")
        return None if turns is None or pages is None or curve is None else (int(turns), int(pages), _s(curve))

    def set_retier_mark(self, k: SessionKeys, turns: int, pages: int, curve: str) -> None:
        self.r.hset(k.retiered, mapping={"turns": turns, "pages": pages, "curve": curve})

    def png(self, k: SessionKeys, page: int) -> bytes:
        data = self.r.hget(k.png, page)
        if data is None:
            raise NotFound(f"session {k.session!r} has no page {page}")
        return _b(data)

    def pngs(self, k: SessionKeys, pages: Iterable[int]) -> list[bytes]:
        """The PNGs of those pages that exist, in order (a mosaic group may not be full yet)."""
        wanted = list(pages)
        return [_b(png) for png in self.r.hmget(k.png, wanted) if png] if wanted else []   # HMGET needs a field

    def lines(self, k: SessionKeys, page: int) -> list[list]:
        raw = self.r.hget(k.lines, page)
        return json.loads(raw) if raw else []

    def sources(self, k: SessionKeys, turns: Iterable[int]) -> dict[int, dict]:
        """Exact text of turns, sealed (if kept) or still text."""
        wanted = list(dict.fromkeys(turns))
        if not wanted:
            return {}
        # Both hashes in one MULTI: a seal moving a turn from ``turns`` to ``source`` in between
        # two reads would otherwise hide it from both.
        with self.r.pipeline(transaction=True) as p:
            p.hmget(k.source, wanted)
            p.hmget(k.turns, wanted)
            sealed, text = p.execute()
        out: dict[int, dict] = {}
        for index, kept, raw in zip(wanted, sealed, text):
            if kept:
                out[index] = json.loads(kept)
            elif raw:
                t = json.loads(raw)
                out[index] = {"role": t["role"], "content": t["content"], "time": t["time"]}
        return out

    # -- text index (memory/index.py) -------------------------------------------------------
    def search(self, k: SessionKeys, query: str, limit: int = 50, expand: bool = True) -> list[tuple[str, float, float]]:
        return ix.search(self.r, k.tag, query, limit, expand=expand)

    def indexed_pages(self, k: SessionKeys) -> dict[int, str]:
        return {int(a): _s(b) for a, b in self.r.hgetall(ix.pages_key(k.tag)).items()}

    def index_decoded(self, k: SessionKeys, page: int, tier: str, texts: dict[int, str]) -> bool:
        """Index what a read of ``page`` at ``tier`` gave of each turn (forget-for-real), replacing
        what an earlier read of the page gave, in one transaction. False if the session is gone."""

        def index(p) -> bool:
            if not p.exists(k.meta):
                return False
            old = self._page_docs(p, k, page)
            p.multi()
            ix.remove(p, k.tag, old)
            ix.add_many(p, k.tag, ((ix.page_doc(page, turn), text) for turn, text in texts.items()))
            p.hset(ix.pages_key(k.tag), page, tier)
            return True

        return self._transaction(index, k.meta, ix.docs_key(k.tag))

    def unindex_pages(self, k: SessionKeys, pages: Iterable[int]) -> None:
        """Take pages' decoded text out of the index (a page faded to gone), in one transaction."""
        pages = list(pages)
        if not pages:
            return

        def unindex(p) -> None:
            old: dict = {}
            for page in pages:
                old.update(self._page_docs(p, k, page))
            p.multi()
            ix.remove(p, k.tag, old)
            p.hdel(ix.pages_key(k.tag), *pages)

        self.r.transaction(unindex, ix.docs_key(k.tag))

    def _page_docs(self, p, k: SessionKeys, page: int) -> dict[str, Any]:
        """The index entries of a page's decoded text (read on a watched pipeline)."""
        raw = p.hget(k.pages, page)
        if raw is None:
            return {}
        docs = [ix.page_doc(page, s["index"]) for s in json.loads(raw)["turns"]]
        return dict(zip(docs, p.hmget(ix.docs_key(k.tag), docs)))

    # -- caches -----------------------------------------------------------------------------
    def cached_decoded(self, k: SessionKeys, page: int, tier: str, reader: str) -> dict | None:
        raw = self.r.hget(k.decoded, f"{page}:{tier}:{reader}")
        return json.loads(raw) if raw else None

    def cache_decoded(self, k: SessionKeys, page: int, tier: str, reader: str, decoded: dict) -> None:
        # HSETNX: two workers reading the same page never leave two different answers behind.
        self.r.hsetnx(k.decoded, f"{page}:{tier}:{reader}", json.dumps(decoded))

    def claim_read(self, k: SessionKeys, page: int, tier: str, reader: str, token: str, ms: int,
                   refresh: bool = False) -> bool:
        """Claim a page read for ``ms`` milliseconds (``locks.claim``), so other API processes wait for
        the decoded cache instead of reading the page too. ``refresh``: extend a claim already held
        (or take it again if it expired); False when another process holds it."""
        lock = locks.claim(self.r, k.reading(page, tier, reader), ms)
        if refresh:
            lock.local.token = token
            try:
                return lock.reacquire()
            except LockNotOwnedError:
                pass
        return lock.acquire(blocking=False, token=token)

    def read_claimed(self, k: SessionKeys, page: int, tier: str, reader: str) -> bool:
        return bool(self.r.exists(k.reading(page, tier, reader)))

    def release_read(self, k: SessionKeys, page: int, tier: str, reader: str, token: str) -> None:
        """Drop a read claim, only if it is still ours."""
        lock = locks.claim(self.r, k.reading(page, tier, reader), CLAIM_MS)
        try:
            lock.do_release(token)
        except LockNotOwnedError:
            pass    # expired, and maybe claimed by another process since: not ours to drop

    def cached_tokens(self, k: SessionKeys, unit: str, tier: str, revision: str) -> bytes | None:
        data = self.r.get(k.token_cache(unit, tier, revision))
        return None if data is None else _b(data)

    def cache_tokens(self, k: SessionKeys, unit: str, tier: str, revision: str, data: bytes, ttl_s: int) -> None:
        """Set-if-absent with a TTL: caches expire (and with maxmemory-policy volatile-lru, Redis may
        evict them under memory pressure) while turns and pages, which have no TTL, never are."""
        self.r.set(k.token_cache(unit, tier, revision), data, nx=True, ex=ttl_s or None)

    def drop_tokens(self, k: SessionKeys, unit: str, tier: str, revision: str) -> None:
        self.r.delete(k.token_cache(unit, tier, revision))

    def canvas_generation(self, k: SessionKeys, members: range) -> str | None:
        """What a mosaic canvas of pages ``members`` shows: "<session created>-<pages of it that
        exist>" (pages are numbered in seal order and never change), or None when none exists."""
        with self.r.pipeline(transaction=False) as p:
            p.hget(k.meta, "created")
            p.hget(k.seal, "next_page")
            created, next_page = p.execute()
        drawn = min(len(members), int(next_page or 0) - members.start)
        return None if created is None or drawn <= 0 else f"{_s(created)}-{drawn}"

    def cached_canvas(self, k: SessionKeys, group: int, tier: str, generation: str) -> bytes | None:
        png = self.r.get(k.canvas(group, tier, generation))
        return None if png is None else _b(png)

    def cache_canvas(self, k: SessionKeys, group: int, tier: str, generation: str, png: bytes, ttl_s: int) -> None:
        """Like the visual tokens: a cache with a TTL, evicted first under memory pressure."""
        self.r.set(k.canvas(group, tier, generation), png, nx=True, ex=ttl_s or None)

    # -- model jobs -------------------------------------------------------------------------
    def queued_tiers(self, k: SessionKeys, pages: list[int] | None = None) -> dict[int, str]:
        """page -> tier last sent to the workers: every page, or only ``pages``."""
        if pages is None:
            return {int(a): _s(b) for a, b in self.r.hgetall(k.queued).items()}
        if not pages:
            return {}
        return {page: _s(tier) for page, tier in zip(pages, self.r.hmget(k.queued, pages)) if tier is not None}

    def enqueue(self, k: SessionKeys, jobs: list[tuple[str, int, str]],
                noted: list[tuple[int, str]] | None = None) -> int:
        """Send (kind, page, tier) jobs to the model workers and note each page's tier as queued
        (``noted``: these (page, tier) instead, e.g. every page of a mosaic canvas that one job
        encodes), in one round trip; the note goes after the XADDs, so a crash between them re-sends.

        Backpressure: the stream holds at most ``jobs_max`` entries (``OPTIMEM_JOBS_MAX``; 0: no
        cap); past it the oldest are trimmed (shed) and counted in ``om:jobs:shed``. Jobs are only
        read-ahead for caches, never turns: a shed page is read when a recall or context wants it,
        or ahead again when its tier changes. Returns how many jobs were shed."""
        if not jobs:
            return 0
        cap = int(self.jobs_max or 0)
        with self.r.pipeline(transaction=False) as pipe:
            for kind, page, tier in jobs:
                pipe.xadd(JOBS, {"kind": kind, "tenant": k.tenant, "session": k.session, "page": page,
                                 "tier": tier})
            if cap > 0:
                pipe.xtrim(JOBS, maxlen=cap, approximate=False)
            for page, tier in (noted if noted is not None else [(page, tier) for _, page, tier in jobs]):
                pipe.hset(k.queued, page, tier)
            done = pipe.execute()
        shed = int(done[len(jobs)]) if cap > 0 else 0
        if shed:
            self.r.incrby(JOBS_SHED, shed)
        return shed

    def jobs_state(self) -> tuple[int, float, int]:
        """(backlog, age in seconds of the oldest entry, jobs shed so far), in one round trip (two
        when there is a backlog: the server's clock, asked apart because a Redis Cluster pipeline
        refuses TIME). The stream holds only jobs waiting or in progress (workers delete what they
        finish)."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.xlen(JOBS)
            pipe.xrange(JOBS, count=1)
            pipe.get(JOBS_SHED)
            length, first, shed = pipe.execute()
        oldest = 0.0
        if first:
            secs, micros = self.r.time()
            ms = int(_s(first[0][0]).split("-")[0])
            oldest = max(0.0, secs + micros / 1e6 - ms / 1000)
        return int(length), round(oldest, 3), int(shed or 0)
