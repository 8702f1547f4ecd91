"""``Memory``: optimem in-process. The one object the API, the CLI, the lab and embedders talk to.

It keeps the life cycle (Redis, the backend, the in-process worker), validates what callers send
(raising ``optimem.errors`` classes whose message says what to fix) and delegates: turns to
``turns``/``compactor``, tiers to ``curves``/``context``, model work to ``jobs``/``reading``,
recall to ``recall``. Every verb takes the session first and the tenant as a keyword.
"""
from __future__ import annotations

import base64
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from optimem import renderer
from optimem.errors import BadRequest, NotFound, SessionExists
from optimem.memory import (compactor, context, curves, erasure, jobs, locks, recall as recalling, searchable, timed,
                            turns as turn_input)
from optimem.memory.context import Links, PlacedPage
from optimem.memory.curves import Curve
from optimem.memory.reading import PageImages, Reader, token_unit, tier_png
from optimem.memory.redis_server import EmbeddedRedis, connect
from optimem.memory.results import (Appended, EmbeddingsContext, Forgotten, OpenAIContext, PageSpans, RawContext,
                                    Recall, Session)
from optimem.memory.sealer import Sealer
from optimem.memory.store import SessionKeys, SessionMeta, Store
from optimem.memory.typesetter import Typesetter
from optimem.model import backends
from optimem.model.base import Backend
from optimem.model.tiers import Ladder, Tier, ladder as ladder_for
from optimem.settings import Settings

DEFAULT_TENANT = "default"
SESSION_CHARS = r"[A-Za-z0-9._-]{1,128}"   # a session id: the one definition the API's schemas reuse
SESSION_ID = re.compile(SESSION_CHARS)
RETIER_EVERY = 16  # turns; tiers are always computed exactly at read time, this only pre-reads
BACKLOG_TOKENS = 8_000  # text past the budget that a read waits to see sealed (~4 pages); past it, none


@dataclass(frozen=True)
class _Seal:
    """A seal owed to a session after an append (``Memory._seal``)."""
    k: SessionKeys
    keep_source: bool
    retier: bool

    def merge(self, other: "_Seal") -> "_Seal":
        return _Seal(self.k, self.keep_source, self.retier or other.retier)


@dataclass(frozen=True)
class _Open:
    """A validated, existing session: its keys and its meta, read once per call."""
    k: SessionKeys
    meta: SessionMeta
    curve: Curve


class Memory:
    """Optical memory in-process, over the embedded Redis (or ``OPTIMEM_REDIS_URL``).

    >>> with Memory() as memory:
    ...     memory.add("alice", "My locker code is 4817.")
    ...     memory.recall("alice", query="locker code").hits[0].text
    """

    def __init__(self, settings: Settings | None = None, *, backend: Backend | None = None):
        self.settings = settings or Settings.from_env()
        self._backend = backend
        self.ladder: Ladder = backend.ladder if backend else ladder_for(self.settings.family)
        self.layout = renderer.Layout(page_px=self.ladder.page_px, font_px=self.settings.font_px,
                                      line_spacing=self.settings.line_spacing)
        self.server: EmbeddedRedis | None = None
        self._store: Store | None = None
        self.worker: jobs.Worker | None = None
        self.sweeper: timed.Sweeper | None = None
        self.rewrite: erasure.FileRewrite | None = None   # Redis' files rewritten after a forget
        self._reader: Reader | None = None
        self._images: PageImages | None = None
        self._locks = locks.SessionLocks(lambda: self._store.r if self._store else None)  # across processes, in Redis
        self._backend_lock = threading.Lock()
        self._sealer: Sealer | None = Sealer(self._seal) if self.settings.seal_background else None
        # Sealing behind requests typesets in a child process (no GIL shared with them); inline, here.
        self._typeset = Typesetter() if self.settings.seal_background else renderer.typeset

    # -- life cycle ---------------------------------------------------------------------------
    def open(self) -> "Memory":
        from optimem.memory.metrics import MeteredStore  # the store, counted for /metrics

        client, self.server = connect(self.settings.redis_url, self.settings.data_dir, self.settings.redis_maxmemory)
        self._store = MeteredStore(client)
        self._reader = self._images = None    # over this store (a Memory may be opened again)
        self.store.jobs_max = self.settings.jobs_max
        jobs.ensure_group(client)
        self.rewrite = erasure.FileRewrite(client)
        if self.settings.worker:
            batch = jobs.batch_for(self.settings.worker_batch, self.encodes())
            self.worker = jobs.Worker(client, self.handle_job, batch=batch).start()
            self.sweeper = self.sweeping()
        if isinstance(self._typeset, Typesetter):
            self._typeset.start()
        return self

    def sweeping(self) -> timed.Sweeper | None:
        """The time-based curves' sweep (``OPTIMEM_RETIER_SWEEP_S``; 0: none), started."""
        every = self.settings.retier_sweep_s
        return timed.Sweeper(self.store.r, self.retier_session, every).start() if every > 0 else None

    def close(self, stop_server: bool = True, timeout_s: float = 30) -> None:
        """Stop the worker (waiting up to ``timeout_s`` for the job in hand: a job is only
        read-ahead, so one cut short is done again later), then the embedded Redis, which saves
        and exits, unless another process or Memory is connected to it (the last one stops it).
        Acknowledged turns are in Redis already: nothing here can lose them."""
        if self._sealer is not None:
            self._sealer.stop(timeout_s)          # seal what appends left pending
            self._sealer = Sealer(self._seal)     # (a Memory may be opened again)
            if isinstance(self._typeset, Typesetter):
                self._typeset.close()             # its child process; started again on next use
        if self.worker:
            self.worker.stop(timeout_s)
            self.worker = None
        if self.sweeper:
            self.sweeper.stop(timeout_s)
            self.sweeper = None
        if self.rewrite is not None:
            self.rewrite.wait(timeout_s)     # a forget's file rewrite, before the server may stop
        if self._store is not None:
            self._store.r.close()   # our connections: the embedded server's other users count them
        if self.server and stop_server:
            self.server.stop()     # unless another process (or Memory) still uses it

    @property
    def store(self) -> Store:
        """The Redis store (the schema and every write); there from ``open()`` on."""
        if self._store is None:
            raise RuntimeError("this Memory is not open: call open() or use it in a with block")
        return self._store

    @property
    def is_open(self) -> bool:
        return self._store is not None

    def __enter__(self) -> "Memory":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def backend(self) -> Backend:
        """The model backend, loaded on first use (an API process without a worker may never need it)."""
        with self._backend_lock:
            if self._backend is None:
                self._backend = backends.load(self.settings)
            return self._backend

    @property
    def backend_name(self) -> str:
        return self._backend.name if self._backend else self.settings.backend

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            self._reader = Reader(self.store, self.backend, self.ladder, self.settings.token_ttl,
                                  threads=self.settings.read_threads)
        return self._reader

    @property
    def images(self) -> PageImages:
        """Pages and mosaic canvases as images, from the stored PNGs: no model backend loaded."""
        if self._images is None:
            self._images = self._reader.images if self._reader else PageImages(self.store, self.settings.token_ttl)
        return self._images

    def encodes(self) -> bool:
        """Whether the backend makes visual tokens; known from the setting without loading the model."""
        return self.reader.encodes if self._backend else self.settings.backend == "deepseek-ocr2"

    # -- sessions -----------------------------------------------------------------------------
    def keys(self, session: Any, tenant: str) -> SessionKeys:
        """The Redis keys of a session id, once the id is valid (400 otherwise)."""
        if not isinstance(session, str) or not SESSION_ID.fullmatch(session):
            raise BadRequest("session id must be 1-128 characters of letters, digits, '.', '_' or '-'")
        return SessionKeys(tenant, session)

    def _open(self, session: Any, tenant: str, settle: bool = True) -> _Open:
        k = self.keys(session, tenant)
        if settle and self._sealer is not None and self._sealer.pending(k.tag) and not self._backlog(k):
            # The seal an append just asked for, for a moment at most (its turns are text meanwhile).
            self._sealer.wait_owed(k.tag)
        meta = self.store.meta(k)
        return _Open(k, meta, curves.load(meta.curve, self.ladder))

    def _backlog(self, k: SessionKeys) -> bool:
        """Whether more text waits to be sealed than a few pages hold (a bulk import): a read then
        serves it as text at once rather than wait for any of it to be sealed."""
        return self.store.text_tokens(k) > self.settings.recent_tokens + BACKLOG_TOKENS

    def curve(self, spec: Any) -> Curve:
        """A curve (preset name, JSON or dict) validated against this memory's tiers."""
        return curves.load(spec, self.ladder)

    def create_session(self, session: str | None = None, *, curve: Any = None, keep_source: bool = True,
                       tenant: str = DEFAULT_TENANT) -> Session:
        session = session or base64.b32encode(os.urandom(10)).decode().lower()
        k = self.keys(session, tenant)
        loaded = self.curve(curve if curve is not None else self.settings.curve)
        if not self.store.create_session(k, loaded.to_json(), keep_source):
            raise SessionExists(f"session {session!r} already exists")
        timed.track(self.store.r, k, loaded)
        return self.session(session, tenant=tenant)

    def session(self, session: str, *, tenant: str = DEFAULT_TENANT) -> Session:
        s = self._open(session, tenant)
        unsealed_from, next_page = self.store.seal_state(s.k)
        return Session(id=session, created=s.meta.created, curve=s.curve.spec, keep_source=s.meta.keep_source,
                       turns=s.meta.turns, pages=next_page, text_turns_from=unsealed_from, family=self.ladder.family,
                       importing=s.meta.importing is not None)

    def sessions(self, *, tenant: str = DEFAULT_TENANT) -> list[str]:
        return self.store.sessions(tenant)

    def delete_session(self, session: str, *, tenant: str = DEFAULT_TENANT) -> None:
        k = self._open(session, tenant).k
        self.store.delete_session(k)
        timed.untrack(self.store.r, k)

    def set_curve(self, session: str, curve: Any, *, tenant: str = DEFAULT_TENANT) -> Session:
        s, loaded = self._open(session, tenant), self.curve(curve)
        self.store.set_curve(s.k, loaded.to_json())
        timed.track(self.store.r, s.k, loaded)
        self._retier(_Open(s.k, s.meta, loaded), full=True)
        return self.session(session, tenant=tenant)

    # -- turns --------------------------------------------------------------------------------
    def append(self, session: str, turns: list[dict[str, Any]], *, tenant: str = DEFAULT_TENANT) -> Appended:
        """Store turns ({role, content, time?}) in order; seal full pages past the recent-text budget:
        inside this call, or just after it (``OPTIMEM_SEAL_BACKGROUND``, the default: ``sealing``
        says a seal is under way; reads wait for it a moment at most, seeing its turns as text)."""
        k = self.keys(session, tenant)
        records = turn_input.parse_turns(turns, self.settings.max_turn_chars, self.settings.tokenizer)
        keep_source = self.store.meta(k).keep_source
        first = self.store.append(k, records)
        last = first + len(records)
        # Re-tier on a seal and every RETIER_EVERY turns, only where read-ahead pays (jobs.kinds_for):
        # reading only the pages that crossed a tier boundary since the last time (jobs.retier).
        job = _Seal(k, keep_source, retier=last // RETIER_EVERY != first // RETIER_EVERY)
        if self._sealer is not None and self._may_seal(k):
            self._sealer.request(k.tag, job)
            return Appended(session=session, first_index=first, appended=len(records), turns=last,
                            sealed_pages=[], sealing=True)
        sealed = self._seal(job)
        return Appended(session=session, first_index=first, appended=len(records), turns=last,
                        sealed_pages=[p.page for p in sealed])

    def _may_seal(self, k: SessionKeys) -> bool:
        """Whether the recent text is past its budget (a seal may be due): one HGET."""
        return self.store.text_tokens(k) > self.settings.recent_tokens

    def _seal(self, job: "_Seal") -> list:
        """Seal the full pages past the recent-text budget (under the session's lock), then re-tier
        where read-ahead pays."""
        k, keep_source = job.k, job.keep_source
        sealed = []
        if self._may_seal(k):    # text within budget: nothing to seal, no lock, no read of the turns
            with self._locks[k.tag]:
                sealed = compactor.compact(self.store, k, self.settings.recent_tokens, self.layout, keep_source,
                                           self.settings.tokenizer, typeset=self._typeset)
        if (sealed or job.retier) and (not keep_source or self.encodes()):   # where read-ahead pays
            self.retier_session(k.tenant, k.session, sealed=bool(sealed))
        return sealed

    def retier_session(self, tenant: str, session: str, sealed: bool = False) -> None:
        """Send the workers the pages whose tier changed (``jobs.retier``), where read-ahead pays;
        in a forget-for-real session a page faded out leaves the index. After a seal, and for a
        time-based curve also while the session is left alone (``timed.Sweeper``)."""
        try:
            s = self._open(session, tenant, settle=False)
        except NotFound:          # deleted meanwhile (or with its tenant): no more sweeps of it
            timed.untrack(self.store.r, self.keys(session, tenant))
            return
        if sealed:   # a session from before the sweep joins it (a keep-source one on the CPU reader need not)
            timed.track(self.store.r, s.k, s.curve, keep_due=True)
        if s.meta.keep_source and not self.encodes():
            return
        changed = self._retier(s)
        if not s.meta.keep_source:   # a page faded out holds nothing: its decoded text leaves the index
            searchable.drop_gone(self.store, s.k, changed)

    def settle(self, session: str, *, tenant: str = DEFAULT_TENANT, asked: int | None = None) -> None:
        """Wait until the pages this process owes the session are sealed (background sealing),
        however long that takes (a read of the session waits at most ``sealer.READ_WAIT_S`` and
        serves the turns not yet on a page as text). ``asked``: only those owed when
        ``seals_asked`` gave that number; seals asked since may still run (a bulk writer's next
        chunk appended while the last one is typeset)."""
        if self._sealer is not None:
            self._sealer.settle(self.keys(session, tenant).tag, timeout_s=None, asked=asked)

    def seals_asked(self, session: str, *, tenant: str = DEFAULT_TENANT) -> int:
        """The number of the session's latest seal asked for and not done (0: none), for ``settle``."""
        return 0 if self._sealer is None else self._sealer.asked(self.keys(session, tenant).tag)

    def add(self, session: str, content: str, role: str = "user", *, time: str | None = None,
            tenant: str = DEFAULT_TENANT) -> Appended:
        """Append one turn."""
        return self.append(session, [{"role": role, "content": content, "time": time}], tenant=tenant)

    def forget(self, session: str, turn: int, last: int | None = None, *, tenant: str = DEFAULT_TENANT) -> Forgotten:
        """Forget turns ``turn``..``last`` (one turn when ``last`` is None) for real: their text leaves
        the source, the text index, the pixels of the pages holding them (painted over) and every
        cache of those pages; their numbers, roles and times stay. Then Redis rewrites its files
        (``erasure.FileRewrite``, within ``erasure.REWRITE_EVERY_S`` plus a rewrite already running)."""
        started = time.perf_counter()
        s = self._open(session, tenant)
        last = turn if last is None else last
        for name, value in (("turn", turn), ("last", last)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < s.meta.turns:
                raise BadRequest(f"{name} must be a turn of the session: 0..{s.meta.turns - 1}, got {value!r}")
        if last < turn or last - turn >= erasure.MAX_TURNS:
            raise BadRequest(f"from..to must be in order and span at most {erasure.MAX_TURNS} turns")
        with self._locks[s.k.tag]:        # no seal of this session runs meanwhile (WATCH holds anyway)
            pages = erasure.forget_turns(self.store, s.k, list(range(turn, last + 1)), s.meta.keep_source,
                                         lambda page: [prefix for t in self.ladder.tiers if t.per_canvas > 1
                                                       for prefix in (s.k.token_cache(token_unit(page, t), t.name, ""),
                                                                      s.k.canvas(page // t.per_canvas, t.name, ""))])
        if self.rewrite is not None:
            self.rewrite.request()
        return Forgotten(session=session, turns=list(range(turn, last + 1)), pages=pages,
                         seconds=round(time.perf_counter() - started, 4))

    def forgotten(self, session: str, *, tenant: str = DEFAULT_TENANT) -> set[int]:
        """The turns of a session forgotten on request."""
        return {int(n) for n in self.store.r.smembers(self._open(session, tenant).k.forgotten)}

    def sources(self, session: str, turns: list[int], *, tenant: str = DEFAULT_TENANT) -> dict[int, dict]:
        """Exact text of turns: sealed ones only where the session keeps source, recent ones always."""
        return self.store.sources(self._open(session, tenant).k, turns)

    # -- tiers and model work -----------------------------------------------------------------
    def _placed(self, s: _Open) -> list[PlacedPage]:
        """Every page, with its full record (turn spans), at the tier its age gives it: what recall
        and the inspector need. O(pages in the session): context and re-tiering use the page index."""
        return context.place(self.store.pages(s.k), s.curve, self.ladder, s.meta.turns)

    def _kept(self, s: _Open) -> tuple[list[PlacedPage], int]:
        """The pages the curve still keeps (not gone), placed from the page index (light records),
        and how many are gone. A turn curve reads only pages younger than its gone age (one
        ZRANGEBYSCORE); a time curve reads the whole index (compact rows, no PageRecord)."""
        after = None
        if s.curve.unit == "turns" and (gone := context.gone_age(s.curve, self.ladder)) is not None:
            after = s.meta.turns - 1 - gone   # age >= gone  <=>  last turn <= turns - 1 - gone
        records, total = self.store.page_entries(s.k, after)
        kept = [p for p in context.place(records, s.curve, self.ladder, s.meta.turns) if not p.tier.gone]
        return kept, total - len(kept)

    def _as_of_one_seal(self, k: SessionKeys, read: Callable[[], Any], tries: int = 5) -> Any:
        """``read()`` (pages, then text turns) again if a seal committed while it ran: a seal moves
        turns from text onto pages in one transaction, and a read of the pages before it and of
        the text after it would see those turns in neither."""
        for _ in range(tries - 1):
            before = self.store.seal_state(k)
            got = read()
            if self.store.seal_state(k) == before:
                return got
        return read()

    def _tier_now(self, k: SessionKeys, page: int) -> Tier:
        """The tier a page's age gives it now, under its session's curve (from its page-index row)."""
        s = self._open(k.session, k.tenant)
        return context.place([self.store.page_entry(k, page)], s.curve, self.ladder, s.meta.turns)[0].tier

    def _retier(self, s: _Open, full: bool = False) -> list[PlacedPage]:
        return jobs.retier(self.store, s.k, s.meta, s.curve, self.ladder, self.encodes(), full=full)

    def handle_job(self, fields: dict[str, str]) -> None:
        """Do one model job from the stream (the worker calls this)."""
        job = jobs.Job.of(fields)
        jobs.handle(job, self._tier_now, self.reader)
        if job.kind != "decode":
            return
        # Forget-for-real: a page is searchable once read; index what this read gave of it.
        try:
            s = self._open(job.k.session, job.k.tenant)
            if s.meta.keep_source:
                return
            placed = context.place([self.store.page(s.k, job.page)], s.curve, self.ladder, s.meta.turns)[0]
        except NotFound:
            return
        if placed.tier.name == job.tier:
            searchable.reindex_cached(self.store, s.k, placed, self.reader)

    # -- context ------------------------------------------------------------------------------
    def context(self, session: str, *, budget: int | None = None, format: str = "raw", links: Links | None = None,
                min_memory_tokens: int = 0, text_only: bool = False, tenant: str = DEFAULT_TENANT
                ) -> RawContext | OpenAIContext | EmbeddingsContext:
        """Recent turns plus pages within ``budget`` tokens, as ``format``: raw, openai (messages with
        page images) or embeddings (cached visual tokens). Images and tokens are inline unless
        ``links`` says where they are served.

        Pages start at the tier their age gives them; when they don't fit what recent text leaves of
        the budget they fade further (oldest first, one tier at a time) and are dropped, oldest
        first, only when even the faintest view doesn't fit (``context.assemble``). Recent text
        comes first, except for ``min_memory_tokens``: that much of the budget (no more than the
        memory needs) is kept for pages even when recent text would fill it. Beyond the newest
        ``OPTIMEM_RECENT_FLOOR_TURNS`` turns, text moves onto pages made for the context when the
        memory would otherwise fade below legible. ``text_only``: the caller sends no pages (the
        proxy's tool mode), so the whole budget goes to recent text."""
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise BadRequest("budget must be a whole number of tokens >= 0")
        if isinstance(min_memory_tokens, bool) or not isinstance(min_memory_tokens, int) or min_memory_tokens < 0:
            raise BadRequest("min_memory_tokens must be a whole number of tokens >= 0")
        if format not in context.FORMATS:
            raise BadRequest("format must be 'raw', 'openai' or 'embeddings'")
        if format == "embeddings" and not self.encodes():
            raise BadRequest("format=embeddings needs visual tokens: set OPTIMEM_BACKEND=deepseek-ocr2 "
                             "(the CPU reader only reads pages back; use format=openai for page images)")
        s = self._open(session, tenant)
        reach = self.settings.recent_tokens + 2 * context.PAGE_TOKENS

        def snapshot():
            pages = self._kept(s) if not text_only else ([], 0)
            if budget is None:
                return pages, self.store.text_turns(s.k), 0
            # Text older than the budget and the made pages' reach can't be shown: not read (a bulk
            # import's backlog of thousands of turns would otherwise be read on every call).
            return (pages, *self.store.text_tail(s.k, budget + reach))
        (kept, forgotten), text, unread = self._as_of_one_seal(s.k, snapshot)
        making = None if text_only else context.Making(self.settings.recent_floor_turns, context.made_pages(
            s.k.tag, self.layout, self.settings.tokenizer, s.curve, self.ladder, s.meta.turns),
            reach_tokens=reach)
        built = context.assemble(text, kept, budget, ladder=self.ladder, min_memory_tokens=min_memory_tokens,
                                 forgotten=forgotten, making=making, unread_turns=unread)
        # The formats need a page's number, turn range, times and token costs: all in the light
        # records of the page index; no full PageRecord (turn spans) is read.
        made: RawContext | OpenAIContext | EmbeddingsContext
        if format == "raw":
            made = context.raw(s.k, s.meta, self.ladder, built, links)
        elif format == "openai":
            made = context.openai(s.k, built, self.images, links)   # stored PNGs only: no model
        else:
            made = context.embeddings(s.k, built, self.reader, links)
        made.accounting.turns_forgotten = int(self.store.r.scard(s.k.forgotten))
        return made

    def pages(self, session: str, *, links: Links | None = None, tenant: str = DEFAULT_TENANT) -> list[PageSpans]:
        """Every sealed page with its tier and age now and its turn spans, faded-out ones included."""
        s = self._open(session, tenant)
        return [PageSpans(**context.page_info(p, session, links).model_dump(), turns=p.record.turns)
                for p in self._placed(s)]

    def _tier(self, name: str) -> Tier:
        if name not in self.ladder.names():
            raise BadRequest(f"unknown tier {name!r}; this ladder ({self.ladder.family}) has {self.ladder.names()}")
        return self.ladder[name]

    def page_image(self, session: str, page: int, tier: str | None = None, *, tenant: str = DEFAULT_TENANT) -> bytes:
        """PNG of a page at a tier (default: the tier its age gives it now; 'full' for the original)."""
        k = self._open(session, tenant).k
        png = self.store.png(k, page)
        if tier == "full":
            return png
        chosen = self._tier_now(k, page) if tier is None else self._tier(tier)
        if chosen.gone:
            raise BadRequest(f"page {page} is gone at tier 'gone': it has faded out of memory")
        return tier_png(png, chosen)

    def mosaic_image(self, session: str, tier: str, group: int, *, tenant: str = DEFAULT_TENANT) -> bytes:
        """PNG of the mosaic canvas that pages of ``group`` share at a mosaic tier."""
        k = self._open(session, tenant).k
        chosen = self._tier(tier)
        if chosen.per_canvas <= 1:
            raise BadRequest(f"tier {tier!r} is not a mosaic")
        png = self.images.canvas_png(k, group, chosen)
        if png is None:
            raise NotFound(f"session {session!r} has no pages in {tier} group {group}")
        return png

    def token_bytes(self, session: str, unit: str, tier: str, *, tenant: str = DEFAULT_TENANT) -> bytes:
        """Safetensors bytes of a page's (or canvas's) visual tokens at a tier; see model.visual_tokens."""
        k = self._open(session, tenant).k
        if not self.encodes():
            raise BadRequest("visual tokens need OPTIMEM_BACKEND=deepseek-ocr2")
        chosen = self._tier(tier)
        if chosen.gone:
            raise BadRequest("a gone page has no visual tokens")
        page = int(unit[1:]) * chosen.per_canvas if unit[1:].isdigit() and unit.startswith("m") else \
            int(unit) if unit.isdigit() else None
        if page is None or token_unit(page, chosen) != unit:
            raise BadRequest(f"unit {unit!r} is not a page number (or m<group> for a mosaic tier)")
        return self.reader.encoded(k, page, chosen).to_bytes()

    # -- recall -------------------------------------------------------------------------------
    def _located(self, s: _Open) -> recalling.Turns:
        """Where a recall's turns are: pages placed and text turns read only for the turns it asks about."""
        text_from, pages = self.store.seal_state(s.k)
        return recalling.Turns(self.store, s.k, lambda records: context.place(records, s.curve, self.ladder,
                                                                             s.meta.turns),
                               text_from, s.meta.turns, pages)

    def recall(self, session: str, query: str | None = None, *, turn: int | str | None = None,
               since: str | None = None, until: str | None = None, role: str | None = None, limit: int = 5,
               tenant: str = DEFAULT_TENANT) -> Recall:
        """Old turns back as text: by content (``query``), by position (``turn``: index, 'first',
        'last') or by time (``since``/``until``), optionally only one speaker's."""
        q = recalling.Query.of(query, turn, since, until, role, limit)
        s = self._open(session, tenant)
        # Pages are located and placed for the turns the recall looks at only (O(hits), not O(pages)).
        return recalling.recall(q, s.k, s.meta, self._located(s), lambda: self.reader, self.store,
                                self.settings.recall_read_s, lambda: self._placed(s), self.settings.embed_model)
