"""Pages made for a context: recent turns typeset onto pages when a budget needs their room.

Under a tight budget an old turn costs ~30 tokens as text and ~2 on a legible page, so text older
than the recent-text floor yields to pages (``context.assemble``). Those turns are not sealed yet
(sealing is the session's, once, for every caller; a budget is one caller's), so the pages are
typeset here, for the context, and never stored: the session's turns and pages stay as they are.

Typesetting costs ~20 ms a page, so pages are cached per session and starting point (turn,
offset) with what they hold: a full page stays valid while its turns are unchanged (a full page
never depends on the turns after it), so an append typesets only the last, partial page again,
and a context call on a session where nothing moved typesets nothing.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any
from dataclasses import dataclass

from optimem import renderer
from optimem.memory import tokens
from optimem.memory.store import PageRecord, TurnRecord

CACHED_PAGES = 512   # pages kept in the process-wide cache (~100 kB each at 1024 px)


@dataclass(frozen=True)
class MadePage:
    """A page typeset for a context: its record (as a sealed page's, numbered after them) and PNG."""
    record: PageRecord
    png: bytes


def _signature(turns: list[TurnRecord]) -> tuple:
    return tuple((t.index, t.start, t.role, t.time, hash(t.content)) for t in turns)


class _Cache:
    def __init__(self, size: int) -> None:
        self.size, self.lock = size, threading.Lock()
        self.items: OrderedDict[tuple, Any] = OrderedDict()
        self.typeset_pages = 0      # pages drawn so far (tests and benchmarks watch it)

    def get(self, key: tuple):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: tuple, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


CACHE = _Cache(CACHED_PAGES)


@dataclass(frozen=True)
class _Drawn:
    """A typeset page as the cache keeps it: with its turn spans and text tokens, counted once."""
    page: renderer.Page
    spans: tuple
    text_tokens: int


def _drawn(page: renderer.Page, by_index: dict[int, TurnRecord], tokenizer: str) -> _Drawn:
    spans, text_tokens = [], 0
    for index in range(page.first_turn, page.last_turn + 1):
        turn = by_index[index]
        start = page.first_offset if index == page.first_turn else turn.start
        end = page.end_offset if index == page.last_turn else len(turn.content)
        spans.append({"index": index, "role": turn.role, "time": turn.time, "start": start, "end": end})
        text_tokens += tokens.turn_tokens(turn.role, turn.content[start:end], tokenizer)
    return _Drawn(page, tuple(spans), text_tokens)


def _made(d: _Drawn, number: int, by_index: dict[int, TurnRecord], turn_count: int) -> MadePage:
    page = d.page
    record = PageRecord(page=number, first_turn=page.first_turn, first_offset=page.first_offset,
                        last_turn=page.last_turn, end_offset=page.end_offset, sealed_at_turn=turn_count,
                        sealed_time=0.0, first_time=by_index[page.first_turn].time,
                        last_time=by_index[page.last_turn].time, text_tokens=d.text_tokens,
                        turns=[dict(s) for s in d.spans])
    return MadePage(record, page.png)


def make(session: str, turns: list[TurnRecord], layout: renderer.Layout, first_page: int, turn_count: int,
         tokenizer: str = "cl100k_base", cache: _Cache = CACHE) -> list[MadePage]:
    """``turns`` (oldest first, contiguous, the first may start mid-turn) typeset onto pages numbered
    from ``first_page``; cached pages are reused where their turns are unchanged."""
    by_index = {t.index: t for t in turns}
    turns = list(turns)   # _next moves a split turn's start along: on our copy
    out: list[MadePage] = []
    i = 0
    while i < len(turns):
        where = (session, layout, tokenizer, turns[i].index, turns[i].start)
        # A full page holds while its own turns are unchanged; the last, partial one only for the
        # same turns to the end (kept apart: callers may end their turns at different places).
        full = cache.get(("full",) + where)
        if full is not None:
            d, sig = full
            if sig == _signature([t for t in turns[i:] if t.index <= d.page.last_turn]):
                out.append(_made(d, first_page + len(out), by_index, turn_count))
                i = _next(turns, i, d.page)
                continue
        last = cache.get(("last",) + where + (_signature(turns[i:]),))
        if last is not None:
            out.append(_made(last, first_page + len(out), by_index, turn_count))
            break
        drawn = renderer.typeset([renderer.TurnText(t.index, t.role, t.content, t.time, t.start)
                                  for t in turns[i:]], layout)
        cache.typeset_pages += len(drawn)
        for page in drawn:
            where = (session, layout, tokenizer, turns[i].index, turns[i].start)
            d = _drawn(page, {t.index: t for t in turns[i:]}, tokenizer)
            if page.full:
                cache.put(("full",) + where, (d, _signature([t for t in turns[i:] if t.index <= page.last_turn])))
            else:
                cache.put(("last",) + where + (_signature(turns[i:]),), d)
            out.append(_made(d, first_page + len(out), by_index, turn_count))
            i = _next(turns, i, page)
        break
    return out


def _next(turns: list[TurnRecord], i: int, page: renderer.Page) -> int:
    """Index in ``turns`` where the page after ``page`` begins (the split turn again, if split)."""
    while i < len(turns) and turns[i].index < page.last_turn:
        i += 1
    if i < len(turns) and page.end_offset < len(turns[i].content):
        # the turn goes on onto the next page: the same record, from where this page ended
        turns[i] = TurnRecord(turns[i].index, turns[i].role, turns[i].content, turns[i].time, page.end_offset,
                              turns[i].tokens)
        return i
    return i + 1
