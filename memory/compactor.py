"""Compaction: turns past the recent-text budget are typeset and sealed into pages.

Only full pages are sealed; what is left over stays text until the next page fills. So the recent
text holds between ``budget`` and ``budget`` plus one page of tokens, and every page is full
(the best compression a page can give).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

from optimem import renderer
from optimem.errors import NotFound
from optimem.renderer import wrap
from optimem.memory import tokens
from optimem.memory.store import Conflict, PageRecord, SessionKeys, Store, TurnRecord


def overflow(turns: list[TurnRecord], budget: int) -> list[TurnRecord]:
    """The oldest turns that must go for the rest to fit in ``budget`` text tokens."""
    remaining = sum(t.tokens for t in turns)
    out = []
    for turn in turns:
        if remaining <= budget:
            break
        out.append(turn)
        remaining -= turn.tokens
    return out


SURELY_SHORT = 0.85   # estimated rows / page rows under which the overflow cannot fill a page


def estimated_rows(turns: list[TurnRecord], layout: renderer.Layout) -> float:
    """About how many rows the turns take when typeset: each source line's width at half the font
    size per character (a full font size per wide CJK character), plus a header on the first.
    Measured at the point where real chat first fills a page: 0.96-1.01 of the page's rows for
    English chitchat, 1.01-1.03 for the Chinese lab text; so below ``SURELY_SHORT`` no page is
    full and the typesetter need not run (it would, on every append past the budget)."""
    rows = 0
    for t in turns:
        for n, line in enumerate(t.content[t.start:].split("\n")):
            wide = len(wrap.WIDE.findall(line))
            px = layout.font_px * (wide + 0.5 * (len(line) - wide) + (4 if n == 0 else 0))
            rows += max(1, math.ceil(px / layout.width))
    return rows


def _records(pages: list[renderer.Page], turns: dict[int, TurnRecord], first_page: int,
             turn_count: int, tokenizer: str) -> list[tuple[PageRecord, bytes, list]]:
    out = []
    for offset, page in enumerate(pages):
        spans, text_tokens = [], 0
        for index in range(page.first_turn, page.last_turn + 1):
            turn = turns[index]
            start = page.first_offset if index == page.first_turn else turn.start
            end = page.end_offset if index == page.last_turn else len(turn.content)
            spans.append({"index": index, "role": turn.role, "time": turn.time, "start": start, "end": end})
            text_tokens += tokens.turn_tokens(turn.role, turn.content[start:end], tokenizer)
        record = PageRecord(
            page=first_page + offset, first_turn=page.first_turn, first_offset=page.first_offset,
            last_turn=page.last_turn, end_offset=page.end_offset, sealed_at_turn=turn_count,
            sealed_time=time.time(), first_time=turns[page.first_turn].time,
            last_time=turns[page.last_turn].time, text_tokens=text_tokens, turns=spans)
        lines = [[line.turn, list(line.box), line.text, line.kind] for line in page.lines]
        out.append((record, page.png, lines))
    return out


def compact(store: Store, k: SessionKeys, budget: int, layout: renderer.Layout, keep_source: bool,
            tokenizer: str = "cl100k_base", attempts: int = 5,
            typeset: Callable[..., list[renderer.Page]] = renderer.typeset) -> list[PageRecord]:
    """Seal every full page the overflow makes; returns the new page records. ``typeset``: the
    renderer's, or one that runs it elsewhere (``memory.typesetter``).

    Typesetting happens before anything is written; the write is one transaction that fails as a
    whole if another compactor sealed first (then we start over from the new state), and writes
    nothing if the session was deleted meanwhile (then nothing is sealed).
    """
    for _ in range(attempts):
        expect = store.seal_state(k)
        text = store.text_turns(k)
        spill = overflow(text, budget)
        if not spill or estimated_rows(spill, layout) < SURELY_SHORT * layout.rows:
            return []
        full = typeset(
            [renderer.TurnText(t.index, t.role, t.content, t.time, t.start) for t in spill], layout,
            full_only=True)
        if not full:
            return []
        by_index = {t.index: t for t in text}
        try:
            turn_count = store.meta(k).turns
        except NotFound:      # deleted meanwhile
            return []
        records = _records(full, by_index, expect[1], turn_count, tokenizer)
        last = full[-1]
        boundary = by_index[last.last_turn]
        leaving = sum(by_index[i].tokens for i in range(expect[0], last.last_turn + 1))
        if last.end_offset < len(boundary.content):
            rest = boundary.content[last.end_offset:]
            by_index[last.last_turn] = replace(
                boundary, start=last.end_offset, tokens=tokens.turn_tokens(boundary.role, rest, tokenizer))
        try:
            stays = by_index[last.last_turn].tokens if last.end_offset < len(boundary.content) else 0
            store.seal(k, expect, records, by_index, keep_source, sealed_tokens=leaving - stays)
            return [r for r, _, _ in records]
        except Conflict:
            continue
        except NotFound:      # deleted while we typeset: it stays deleted
            return []
    return []
