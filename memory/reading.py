"""Pages as the model sees them, and what the model makes of them: visual tokens and decoded text.

``PageImages`` draws what needs only the stored PNGs (a page at a tier's size, a mosaic canvas,
cached by its pages' generation); it never loads a model, so images-mode contexts and the image
routes run without one. ``Reader`` holds what reading needs (store, backend, ladder, cache TTL), so callers pass a page and
its tier, nothing more. Results are cached in the store per page (or mosaic canvas), tier and
model revision: a page is read once per tier, whoever asks first.

Reads are shared and bounded: they run on the reader's own small pool (``OPTIMEM_READ_THREADS``),
never on a request thread; a second caller for a page already being read joins that read (a future)
and waits for it with its own deadline; across processes a short-lived claim key in Redis
(``Store.claim_read``) makes a second process wait for the cache instead of reading the page again.
A deadline bounds the waiting, not the read: a read whose caller gave up finishes in the
background and lands in the cache for the next caller.

Recall threads compute a few at a time (``COMPUTE``, ``OPTIMEM_RECALL_COMPUTE``): each holds a turn while it runs and hands it on
while it waits for a read, so a burst of recalls never has dozens of Python threads queueing for
the GIL at once (the event loop needs the GIL after every poll, and waits behind all of them).

Reading one turn (``fetch(..., turn=)``): a backend that reads the renderer's line boxes
(``reads_line_subsets``) reads just that turn's text lines, headers skipped (~0.15 s instead of
5-17 s a page), cached per page, tier, turn and reader revision, shared and claimed like a page
read, on a pool of its own so it never queues behind whole-page reads. A whole-page read of the
page that is cached, or claimed by another process, answers instead; a backend that only reads
whole pages reads the page once and every turn on it shares that read.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from typing import TypeGuard

from PIL import Image

from optimem import renderer
from optimem.errors import NotFound
from optimem.memory.concurrency import COMPUTE, HEAP, Threads
from optimem.memory.store import SessionKeys, Store
from optimem.model.base import Backend, Decoded, LineBox, PageStack, PageView, TokenReader, shrinks_pages
from optimem.model.tiers import Ladder, Tier


log = logging.getLogger("optimem.reading")
CLAIM_MS = 120_000   # a read claim lives this long unless released (a process that died mid-read)
POLL_S = 0.2         # how often a read claimed by another process is checked on


def line_boxes(raw: list[list]) -> list[LineBox]:
    return [LineBox(turn, tuple(box), text, kind) for turn, box, text, kind in raw]


def page_view(png: bytes, lines: list[LineBox], tier: Tier, page_px: int) -> PageView:
    """The page shrunk to the tier's view, with its line boxes scaled alike (for mosaics: one cell)."""
    return PageView(renderer.view(png, tier.px), tier, renderer.scale_lines(lines, page_px, tier.px))


def tier_png(png: bytes, tier: Tier) -> bytes:
    out = io.BytesIO()
    renderer.view(png, tier.px).save(out, format="PNG")
    return out.getvalue()


def canvas(pngs: list[bytes], tier: Tier) -> Image.Image:
    """A mosaic canvas: the pages of one group shrunk into the cells of one encoder view."""
    return renderer.mosaic([renderer.view(png, tier.px) for png in pngs], tier.per_canvas, tier.canvas_px)


def group_members(group: int, tier: Tier) -> range:
    """The pages that share mosaic canvas ``group`` at a mosaic tier."""
    return range(group * tier.per_canvas, (group + 1) * tier.per_canvas)


def encodes(backend: Backend) -> TypeGuard[TokenReader]:
    """Whether the backend makes visual tokens (the CPU reader only reads)."""
    return hasattr(backend, "decode_tokens")


def token_unit(page: int, tier: Tier) -> str:
    """What one cache entry covers: a page, or the mosaic canvas its group shares."""
    return f"m{page // tier.per_canvas}" if tier.per_canvas > 1 else str(page)


class PageImages:
    """A session's pages as images, from the stored PNGs only: no model backend.

    A mosaic canvas is drawn once per (session, group, tier, pages' generation) and kept in the
    store with the other caches (``SessionKeys.canvas``, TTL ``ttl_s``): a group's pages never
    change once sealed, only more join it, so the generation is the session's creation time and
    how many of the group's pages exist. A context that sends canvases draws none when nothing
    moved (drawing a canvas is tens of ms; a 5,771-page session's took 60 s a call)."""

    def __init__(self, store: Store, ttl_s: int = 0):
        self.store, self.ttl_s = store, ttl_s

    def canvas_png(self, k: SessionKeys, group: int, tier: Tier) -> bytes | None:
        """PNG of mosaic canvas ``group`` at a mosaic tier; None when the group has no pages."""
        members = group_members(group, tier)
        generation = self.store.canvas_generation(k, members)
        if generation is None:
            return None
        cached = self.store.cached_canvas(k, group, tier.name, generation)
        if cached is not None:
            return cached
        pngs = self.store.pngs(k, members)
        if not pngs:
            return None
        out = io.BytesIO()
        canvas(pngs, tier).save(out, format="PNG")
        self.store.cache_canvas(k, group, tier.name, generation, out.getvalue(), self.ttl_s)
        return out.getvalue()


class Reader:
    """Reads a session's pages with one backend; every answer is cached in the store.

    ``threads``: page reads at once in this process (its own pool). ``claim_ms``: how long a read
    claim lives in Redis (refreshed when the read starts, released when it ends).
    """

    def __init__(self, store: Store, backend: Backend, ladder: Ladder, ttl_s: int = 0, threads: int = 1,
                 claim_ms: int = CLAIM_MS):
        self.store, self.backend, self.ladder, self.ttl_s = store, backend, ladder, ttl_s
        self.images = PageImages(store, ttl_s)
        self._tokens: TokenReader | None = backend if encodes(backend) else None
        self.encodes = self._tokens is not None
        self.id = f"{backend.name}@{backend.revision}"
        self.threads, self.claim_ms = max(1, int(threads)), claim_ms
        self._lock = threading.Lock()                # guards the dicts below, never held across I/O
        self._pool: Threads | None = None
        self._inflight: dict[tuple[str, int, str], Future] = {}    # (session tag, page, cache key)
        self._encoding: dict[tuple[str, str, str, str], Future] = {}   # (tag, unit, tier, cache_as): an encode here
        # Reads claimed by another process, resolved by the watcher: (keys, page, tier, future, turn).
        self._watched: dict[tuple[str, int, str], tuple[SessionKeys, int, Tier, Future, int | None]] = {}
        self._watcher: threading.Thread | None = None
        self._wake = threading.Event()
        self._line_pool: Threads | None = None
        self.reads_lines = bool(getattr(backend, "reads_line_subsets", False))

    def turn_lines(self, k: SessionKeys, page: int, turn: int) -> list[LineBox]:
        """A turn's text lines on a page (the typeset header is metadata: never read)."""
        return [line for line in line_boxes(self.store.lines(k, page)) if line.turn == turn and line.kind != "header"]

    def cache_key(self, tier: Tier, turn: int | None = None) -> str:
        """What decoded text depends on: for a reader only the image size (crops and g1024 are the
        same 1024 px image to it), for a visual-token model the tier itself (crops add local views);
        and the turn, for a read of one turn's lines."""
        base = tier.name if self.encodes else f"px{tier.px}"
        return base if turn is None else f"{base}:t{turn}"

    def view(self, k: SessionKeys, page: int, tier: Tier) -> PageView:
        lines = line_boxes(self.store.lines(k, page))
        return page_view(self.store.png(k, page), lines, tier, self.ladder.page_px)

    def canvas_png(self, k: SessionKeys, group: int, tier: Tier) -> bytes | None:
        return self.images.canvas_png(k, group, tier)

    def encoded(self, k: SessionKeys, page: int, tier: Tier):
        """Visual tokens of a page (or its mosaic canvas) at a tier: cached, or encoded now and cached.

        A cache entry that fails its checksum, or was made by another model revision, is dropped and
        recomputed from the page PNGs: never served.
        """
        from optimem.model.visual_tokens import CorruptTokens, VisualTokens  # GPU backends only

        unit, revision = token_unit(page, tier), self.backend.revision
        cache_as, members = revision, range(0)
        if tier.per_canvas > 1:
            # A canvas is cached per pages drawn on it: a group encoded before its last pages were
            # sealed (a time curve, a curve fading at once) is encoded again when they join it.
            group = group_members(page // tier.per_canvas, tier)
            generation = self.store.canvas_generation(k, group)
            members = range(group.start, group.start + int(generation.rsplit("-", 1)[1])) if generation else range(0)
            if page not in members:
                raise NotFound(f"session {k.session!r} has no page {page}")
            cache_as = f"{revision}:{generation}"
        raw = self.store.cached_tokens(k, unit, tier.name, cache_as)
        if raw is not None:
            try:
                cached = VisualTokens.from_bytes(raw)
                if cached.revision == revision and cached.tier == tier.name:
                    return cached
            except CorruptTokens:
                pass
            self.store.drop_tokens(k, unit, tier.name, cache_as)
        # One encode of a unit at a time in this process: a context call and a worker job (or two
        # contexts) asking together share it instead of each running the encoder.
        key = (k.tag, unit, tier.name, cache_as)
        mine: Future = Future()
        with self._lock:
            running = self._encoding.get(key)
            if running is None:
                self._encoding[key] = mine
        if running is not None:
            return self.wait(running, None)
        try:
            pngs = self.store.pngs(k, members) if tier.per_canvas > 1 else [self.store.png(k, page)]
            if shrinks_pages(self.backend):     # the view is made on the model's device, from the pages
                tokens = self.backend.encode_pages([PageStack(pngs, tier)])[0]
            else:
                view = PageView(canvas(pngs, tier), tier) if tier.per_canvas > 1 else self.view(k, page, tier)
                tokens = self.backend.encode([view])[0]
            self.store.cache_tokens(k, unit, tier.name, cache_as, tokens.to_bytes(), self.ttl_s)
            mine.set_result(tokens)
            return tokens
        except BaseException as e:
            mine.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._encoding[key]

    visual_tokens = encoded   # the old name (context.embeddings calls it), until it calls ``encoded``

    def cached(self, k: SessionKeys, page: int, tier: Tier, turn: int | None = None) -> dict | None:
        """Decoded text of a page (or of one turn's lines on it) at a tier if it was read before."""
        return None if tier.gone else self.store.cached_decoded(k, page, self.cache_key(tier, turn), self.id)

    def decoded(self, k: SessionKeys, page: int, tier: Tier, deadline: float | None = None) -> dict | None:
        """Decoded text of a page at a tier: from the cache, or read (once, shared) and cached.

        Returns {text, lines: [{text, score, turn}], seconds}; None for a gone page, and None when
        ``deadline`` (a ``time.monotonic()`` instant) passes first: the read goes on in the
        background and lands in the cache. No deadline: wait for the read however long it takes.
        """
        return self.wait(self.fetch(k, page, tier), deadline)

    @staticmethod
    def wait(future: Future, deadline: float | None) -> dict | None:
        """The result of a ``fetch`` future, or None if ``deadline`` passes first. A thread holding
        a compute turn (``COMPUTE``) hands it on while it waits."""
        if future.done():
            return future.result()
        with COMPUTE.aside():
            if deadline is None:
                return future.result()
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                return None

    def fetch(self, k: SessionKeys, page: int, tier: Tier, turn: int | None = None) -> Future:
        """A future of the page's decoded text: done if cached, else the read in flight for this
        page and tier (joined, in this process, or in another one through its Redis claim), else a
        new read on the reader's pool. Starts the read; never waits for it.

        ``turn``: only that turn's lines are wanted. The answer then has the same shape, and may be
        the whole page's (read or being read anyway) or just that turn's lines (see the module)."""
        if tier.gone:
            return _done(None)
        hit = self.cached(k, page, tier)
        if hit is not None:
            return _done(hit)
        if turn is not None:
            if not self.reads_lines:
                return self.fetch(k, page, tier)
            # A whole-page read in flight here is not joined (it may have seconds to go; the turn's
            # lines take ~0.15 s); one claimed by another process is (that is its claim's purpose).
            with self._lock:
                here = (k.tag, page, self.cache_key(tier)) in self._inflight
            if not here and self.store.read_claimed(k, page, self.cache_key(tier), self.id):
                return self.fetch(k, page, tier)
            hit = self.cached(k, page, tier, turn)
            if hit is not None:
                return _done(hit)
        ckey = self.cache_key(tier, turn)
        key = (k.tag, page, ckey)
        with self._lock:
            future = self._inflight.get(key)
        if future is not None:
            return future
        token = os.urandom(12).hex()
        claimed = self.store.claim_read(k, page, ckey, self.id, token, self.claim_ms)
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                future = Future()
                self._inflight[key] = future
                if not claimed:
                    self._watched[key] = (k, page, tier, future, turn)
                mine = True
            else:
                mine = False
        if not mine:
            if claimed:
                self.store.release_read(k, page, ckey, self.id, token)
            return future
        future.add_done_callback(lambda f: self._forget(key, f))
        if claimed:
            self._submit(k, page, tier, token, future, turn)
        else:
            self._watch()
        return future

    def _forget(self, key: tuple[str, int, str], future: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
            self._watched.pop(key, None)

    def _submit(self, k: SessionKeys, page: int, tier: Tier, token: str, future: Future,
                turn: int | None = None) -> None:
        with self._lock:
            if turn is None:
                if self._pool is None:
                    self._pool = Threads(self.threads)
                    weakref.finalize(self, self._pool.stop)
                pool = self._pool
            else:   # one turn's lines: a pool of its own, never queued behind whole pages
                if self._line_pool is None:
                    self._line_pool = Threads(self.threads)
                    weakref.finalize(self, self._line_pool.stop)
                pool = self._line_pool
        pool.submit(self._read, k, page, tier, token, future, turn, owner=k.tenant)   # tenants take turns

    def _read(self, k: SessionKeys, page: int, tier: Tier, token: str, future: Future,
              turn: int | None = None) -> None:
        """On the read pool: read the page (unless it was cached meanwhile) and cache it."""
        ckey = self.cache_key(tier, turn)
        try:
            hit = self.cached(k, page, tier, turn)
            if hit is None and turn is not None:
                hit = self.cached(k, page, tier)     # the whole page was read meanwhile
            if hit is None:
                # The claim was taken when the read was queued: extend it now that it runs. If it
                # expired in the queue and another process took it, wait for that one's read.
                if not self.store.claim_read(k, page, ckey, self.id, token, self.claim_ms, refresh=True):
                    with self._lock:
                        self._watched[(k.tag, page, ckey)] = (k, page, tier, future, turn)
                    self._watch()
                    return
                hit = self._read_now(k, page, tier, turn)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(hit)
        finally:
            try:
                self.store.release_read(k, page, ckey, self.id, token)
            except Exception:  # the claim expires by itself
                log.warning("could not release the read claim of page %s of %s", page, k.tag, exc_info=True)
            HEAP.trim()

    def _read_now(self, k: SessionKeys, page: int, tier: Tier, turn: int | None = None) -> dict | None:
        if turn is not None:
            lines = renderer.scale_lines(self.turn_lines(k, page, turn), self.ladder.page_px, tier.px)
            view = PageView(renderer.view(self.store.png(k, page), tier.px), tier, lines)
            if not lines:   # nothing typeset of this turn here (or no line boxes): nothing to read
                result = {"text": "", "seconds": 0.0, "lines": []}
                self.store.cache_decoded(k, page, self.cache_key(tier, turn), self.id, result)
                return result
            # A backend that reads whole views (DeepSeek-OCR) reads just these lines with decode_lines.
            decoded: Decoded = getattr(self.backend, "decode_lines", self.backend.decode)([view])[0]
            result = {"text": decoded.text, "seconds": decoded.seconds,
                      "lines": [asdict(line) for line in decoded.lines]}
            key = self.cache_key(tier, turn)
            self.store.cache_decoded(k, page, key, self.id, result)
            return self.store.cached_decoded(k, page, key, self.id)
        view = self.view(k, page, tier)
        if self._tokens is not None and tier.per_canvas == 1:
            # Read from the cached visual tokens: the encoder runs once per page and tier.
            decoded = self._tokens.decode_tokens([self.encoded(k, page, tier)], [view.lines])[0]
        else:
            decoded = self.backend.decode([view])[0]
        result = {"text": decoded.text, "seconds": decoded.seconds, "lines": [asdict(line) for line in decoded.lines]}
        key = self.cache_key(tier)
        self.store.cache_decoded(k, page, key, self.id, result)
        return self.store.cached_decoded(k, page, key, self.id)  # whoever cached first wins

    # -- reads claimed by another process -----------------------------------------------------
    def _watch(self) -> None:
        with self._lock:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch_loop, name="optimem-read-watch", daemon=True)
                self._watcher.start()
        self._wake.set()

    def _watch_loop(self) -> None:
        """One thread for all pages read by other processes: resolve each from the cache once it
        lands there; if the other process's claim goes (done, or died) with nothing cached, claim
        the read and do it here."""
        while True:
            with self._lock:
                watched = list(self._watched.items())
            if not watched:
                woken = self._wake.wait(5.0)
                self._wake.clear()
                if not woken:
                    with self._lock:
                        if not self._watched:   # idle: end (a new foreign claim starts another)
                            self._watcher = None
                            return
                continue
            for key, (k, page, tier, future, turn) in watched:
                try:
                    hit = self.cached(k, page, tier, turn)
                    if hit is None and turn is not None:
                        hit = self.cached(k, page, tier)
                    if hit is not None:
                        future.set_result(hit)
                        continue
                    ckey = self.cache_key(tier, turn)
                    if self.store.read_claimed(k, page, ckey, self.id):
                        continue
                    token = os.urandom(12).hex()
                    if self.store.claim_read(k, page, ckey, self.id, token, self.claim_ms):
                        with self._lock:
                            self._watched.pop(key, None)
                        self._submit(k, page, tier, token, future, turn)
                except Exception as exc:
                    with self._lock:
                        self._watched.pop(key, None)
                    if not future.done():
                        future.set_exception(exc)
            time.sleep(POLL_S)


def _done(value: dict | None) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
