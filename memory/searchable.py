"""Forget-for-real sessions keep no source: what recall can search of their sealed turns is what
the pages read back (``p<page>:<turn>`` documents of ``memory/index.py``). This module is the one
place that keeps that decoded-text index in step with the pages: index a read, re-index a page read
again at its tier now, take a page out when it fades to gone, and make the unread pages searchable
before a content recall."""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from optimem.memory.context import PlacedPage
from optimem.memory.fragments import fragments_from_decoded, headers_of
from optimem.memory.reading import Reader
from optimem.memory.store import SessionKeys, Store

log = logging.getLogger("optimem.recall")


def index_page(store: Store, k: SessionKeys, placed: PlacedPage, tier_key: str, decoded: dict | None) -> None:
    """Index what a read of a page gave of each of its turns."""
    if decoded is None:
        return
    frags = fragments_from_decoded(placed.record.turns, decoded, headers_of(store, k, placed.record.page),
                                   placed.record.page, placed.tier.name, placed.age)
    texts: dict[int, str] = {}
    for f in frags:
        texts[f.turn] = (texts.get(f.turn, "") + "\n" + f.decoded).strip()
    store.index_decoded(k, placed.record.page, tier_key, {t: v for t, v in texts.items() if v})


def drop_gone(store: Store, k: SessionKeys, placed: Iterable[PlacedPage],
              indexed: dict[int, str] | None = None) -> None:
    """A page faded out holds nothing: its decoded text leaves the index (``indexed``: the pages
    indexed now, when the caller has read them already)."""
    gone = [p.record.page for p in placed if p.tier.gone]
    if not gone:
        return
    indexed = store.indexed_pages(k) if indexed is None else indexed
    store.unindex_pages(k, [page for page in gone if page in indexed])


def reindex_cached(store: Store, k: SessionKeys, placed: PlacedPage, reader: Reader) -> bool:
    """Index the page's read at its tier now, if that read is cached; False when it is not."""
    if placed.tier.gone:
        return False
    decoded = reader.cached(k, placed.record.page, placed.tier)
    if decoded is None:
        return False
    index_page(store, k, placed, reader.cache_key(placed.tier), decoded)
    return True


def make_searchable(k: SessionKeys, placed: list[PlacedPage], reader: Reader, store: Store,
                    deadline: float) -> tuple[int, int]:
    """Make the session's readable pages searchable (their decoded text indexed), reading the ones
    nobody read yet, newest first, until the deadline; take gone pages out.
    Returns (pages searchable, pages not searchable in time): a page never indexed whose read did
    not come back in time (or failed) is not searchable, and is counted so.

    A page indexed at a sharper tier than it has now is re-indexed from its read at the current
    tier when that is cached; otherwise it stays searchable by its earlier reading (never read
    here: that would spend the recall's budget on pages already searchable)."""
    indexed = store.indexed_pages(k)
    drop_gone(store, k, placed, indexed)
    live = [p for p in placed if not p.tier.gone]
    for p in live:
        if p.record.page in indexed and indexed[p.record.page] != reader.cache_key(p.tier):
            reindex_cached(store, k, p, reader)
    todo = [p for p in sorted(live, key=lambda p: -p.record.page) if p.record.page not in indexed]
    to_read = [p for p in todo if not reindex_cached(store, k, p, reader)]
    unread = _read_and_index(k, to_read, reader, store, deadline)
    return len(live) - unread, unread


def _read_and_index(k: SessionKeys, to_read: list[PlacedPage], reader: Reader, store: Store,
                    deadline: float) -> int:
    """Read the pages (a few ahead of the one waited for) and index each read; returns how many
    did not come back in time or failed."""
    ahead = max(1, getattr(reader, "threads", 1))
    futures: dict[int, Any] = {}
    unread = 0
    for i, p in enumerate(to_read):
        if time.monotonic() >= deadline:
            return unread + len(to_read) - i
        for q in to_read[i:i + ahead]:
            if q.record.page not in futures:
                futures[q.record.page] = reader.fetch(k, q.record.page, q.tier)
        try:
            decoded = reader.wait(futures[p.record.page], deadline)
        except Exception:  # noqa: BLE001  a failed read: the page is not searchable now, say so
            log.warning("reading page %s of %s for its index failed", p.record.page, k.tag, exc_info=True)
            unread += 1
            continue
        if decoded is None:
            return unread + len(to_read) - i
        index_page(store, k, p, reader.cache_key(p.tier), decoded)
    return unread
