"""Context: recent turns as text plus memory pages at the tier their age gives them, with the
accounting a caller needs (text tokens the pages replace, visual tokens they cost), in the caller's
format: raw, OpenAI messages with page images, or cached visual tokens for a DeepSeek-OCR decoder.

Where images and tokens are served is the API's business: it passes ``Links``; without them (in
process) images come inline as data URLs and tokens as base64 safetensors.
"""
from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from PIL import Image

from optimem import renderer
from optimem.memory import context_pages, times
from optimem.memory.curves import MAX_AGE, Curve
from optimem.memory.reading import PageImages, Reader, canvas, token_unit, tier_png
from optimem.memory.results import (Accounting, EmbeddingsContext, OpenAIContext, PageInfo, RawContext,
                                    TextTurn, TokenImage)
from optimem.memory.store import PageRecord, SessionKeys, SessionMeta, TurnRecord
from optimem.model.base import PageView
from optimem.model.tiers import LADDERS, Ladder, Tier

FORMATS = ("raw", "openai", "embeddings")


class Links(Protocol):
    """Where a caller can fetch a session's images and visual tokens (the API serves them)."""

    def page(self, session: str, page: int, tier: str) -> str: ...

    def mosaic(self, session: str, tier: str, group: int) -> str: ...

    def tokens(self, session: str, unit: str, tier: str) -> str: ...


@dataclass
class PlacedPage:
    record: PageRecord
    tier: Tier
    age: float
    curve_tier: Tier | None = None   # the tier the curve gives it, when a budget faded it further
    charge: float | None = None      # tokens it is charged in a context (its share of a mosaic canvas)
    png: bytes | None = None         # a page made for this context (not sealed): its image

    @property
    def faded_by_budget(self) -> bool:
        return self.curve_tier is not None and self.curve_tier != self.tier


def age_of(record: PageRecord, curve: Curve, turn_count: int, now: float | None = None) -> float:
    # Age is the content's age (turns after the page's last turn), not the time since sealing, so a
    # conversation imported in one call fades the same as one that arrived turn by turn.
    if curve.unit == "turns":
        return float(turn_count - 1 - record.last_turn)
    return max(0.0, (now or time.time()) - times.parse(record.last_time))


_BOUNDARIES: dict[tuple[str, int], list[tuple[float, Tier]]] = {}


def boundaries(curve: Curve, ladder: Ladder) -> list[tuple[float, Tier]]:
    """(age from which, tier) for each tier the curve passes through, youngest first: a page's tier
    changes only when its age crosses one of these ages. Exact for whole ages (turn curves): each
    age is the first whole age at which the tier changes (binary search on ``curve.tier``, which
    only fades with age). Cached per curve and ladder."""
    key = (curve.to_json(), id(ladder))
    if key in _BOUNDARIES:
        return _BOUNDARIES[key]

    def at(age: float) -> int:
        return ladder.index(curve.tier(age, ladder).name)

    out = [(0.0, curve.tier(0, ladder))]
    last = at(MAX_AGE)
    while at(out[-1][0]) < last:
        here, lo, hi = at(out[-1][0]), out[-1][0], MAX_AGE
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if at(mid) > here:
                hi = mid
            else:
                lo = mid
        out.append((hi, curve.tier(hi, ladder)))
    if len(_BOUNDARIES) > 1024:
        _BOUNDARIES.clear()
    _BOUNDARIES[key] = out
    return out


def gone_age(curve: Curve, ladder: Ladder) -> float | None:
    """The age from which the curve says gone (None: it never does)."""
    return next((age for age, tier in boundaries(curve, ladder) if tier.gone), None)


def place(pages: list[PageRecord], curve: Curve, ladder: Ladder, turn_count: int,
          now: float | None = None) -> list[PlacedPage]:
    out = []
    for record in pages:
        age = age_of(record, curve, turn_count, now)
        out.append(PlacedPage(record, curve.tier(age, ladder), age))
    return out


@dataclass
class Assembled:
    turns: list[TurnRecord]
    pages: list[PlacedPage]
    accounting: Accounting


# -- the budget rule ---------------------------------------------------------------------------
#
# 1. Recent text first, newest turn first and contiguous, in ``budget - reserve`` tokens, where
#    ``reserve = min(min_memory_tokens, budget, what the memory costs at its curve tiers)``: by default
#    (0) recent text has full priority, as before; a caller whose recent text would fill the budget
#    asks for room for the memory with ``min_memory_tokens``. Memory then gets whatever is left.
# 2. Every page the curve keeps (not gone) starts at the tier the curve gives it: its sharpest allowed.
# 3. If they don't fit, they fade: a cap walks down the ladder one tier at a time, and at each step the
#    pages sharper than the cap come down to it, oldest first, one page (into a mosaic tier: one canvas
#    group) at a time; it stops as soon as the memory fits. So an older page is never sharper than a
#    newer one, and every page is at a readable tier before any goes to the faintest.
# 4. Only if nothing fits even then (every page at the ladder's faintest non-gone tier) is the oldest
#    page dropped, and the rule starts again from 2 for the rest; again until the memory fits.
# With a floor (``Making``, what ``Memory.context`` passes; issue 22): an old turn costs ~30 tokens as
# text and ~2 on a legible page, so beyond the newest ``floor_turns`` turns text yields to pages:
# 0. if the text of rule 1 leaves turns out, or the memory can't be kept at legible tiers (each page
#    at its curve tier or the ladder's ``faintest_legible``, whichever is fainter) in what it leaves, the turns older
#    than the floor are typeset onto pages made for this context (``context_pages``: cached, never
#    stored), and the text keeps the newest turns that leave room for the memory and the fewest of
#    those pages to stay legible (whole pages move, oldest first; the floor always stays text).
#    Rules 2-4 then place sealed and made pages alike. Without a budget nothing moves.
# Mosaics: a canvas costs its ``canvas_tokens`` once, however many of its pages (1 to per_canvas) the
# context holds at that tier (the canvas image is sent whole), so a partly filled group is charged the
# whole canvas; each page in it is charged an equal share (``PlacedPage.charge``).

def readable(ladder: Ladder) -> list[Tier]:
    """The ladder's views a page can be sent at, sharpest first (gone left out)."""
    return [t for t in ladder.tiers if not t.gone]


def ladder_of(placed: list[PlacedPage]) -> Ladder | None:
    """The ladder the pages' tiers come from (for callers that don't pass one)."""
    tiers = {p.tier for p in placed}
    return next((ladder for ladder in LADDERS.values() if tiers <= set(ladder.tiers)), None)


def _unit(page: int, tier: Tier) -> tuple:
    return (tier.name, page // tier.per_canvas) if tier.per_canvas > 1 else (tier.name, "p", page)


class _Cost:
    """Visual tokens of a set of (page, tier), kept as pages move between tiers (canvases once each)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.units: Counter = Counter()

    def add(self, page: int, tier: Tier) -> None:
        unit = _unit(page, tier)
        if tier.per_canvas == 1 or not self.units[unit]:
            self.total += tier.canvas_tokens if tier.per_canvas > 1 else tier.tokens
        self.units[unit] += 1

    def remove(self, page: int, tier: Tier) -> None:
        unit = _unit(page, tier)
        self.units[unit] -= 1
        if tier.per_canvas == 1 or not self.units[unit]:
            self.total -= tier.canvas_tokens if tier.per_canvas > 1 else tier.tokens


def memory_tokens(pages: list[tuple[int, Tier]]) -> float:
    """What pages (page number, tier) cost as sent: single views their tokens, each mosaic canvas once."""
    cost = _Cost()
    for page, tier in pages:
        if not tier.gone:
            cost.add(page, tier)
    return cost.total


def charges(pages: list[tuple[int, Tier]]) -> list[float]:
    """Each page's share of ``memory_tokens(pages)``: its tier's tokens, or its canvas split evenly
    among the pages of the canvas that are in the context."""
    counts = Counter(_unit(page, tier) for page, tier in pages if tier.per_canvas > 1)
    return [tier.canvas_tokens / counts[_unit(page, tier)] if tier.per_canvas > 1 else tier.tokens
            for page, tier in pages]


def fade_to_fit(pages: list[PlacedPage], views: list[Tier], room: float) -> list[Tier] | None:
    """Tiers for ``pages`` (oldest first, at their curve tiers) that fit ``room`` tokens with the least
    fading (rule 3 above), or None when even the faintest view of every page doesn't fit."""
    index = {t: i for i, t in enumerate(views)}
    if any(p.tier not in index for p in pages):  # a tier not on this ladder: nothing to fade along
        views, index = [], {}
    at = [index[p.tier] if index else 0 for p in pages]
    tiers = [p.tier for p in pages]
    cost = _Cost()
    for p in pages:
        cost.add(p.record.page, p.tier)
    if cost.total <= room + 1e-9:
        return tiers
    for cap in range(1, len(views)):
        target, i = views[cap], 0
        while i < len(pages):
            if at[i] >= cap:
                i += 1
                continue
            batch, i = [i], i + 1
            if target.per_canvas > 1:  # into a mosaic: the canvas group's pages together
                group = pages[batch[0]].record.page // target.per_canvas
                while i < len(pages) and pages[i].record.page // target.per_canvas == group:
                    if at[i] < cap:
                        batch.append(i)
                    i += 1
            for b in batch:
                cost.remove(pages[b].record.page, tiers[b])
                cost.add(pages[b].record.page, target)
                at[b], tiers[b] = cap, target
            if cost.total <= room + 1e-9:
                return tiers
    return None


@dataclass(frozen=True)
class Making:
    """How a context moves text older than the floor onto pages made for it (rule 0): the newest
    ``floor_turns`` turns always stay text; ``pages(turns, first_page)`` typesets the older ones
    and places them (``made_pages``)."""
    floor_turns: int
    pages: Callable[[list[TurnRecord], int], list[PlacedPage]]
    reach_tokens: int = 0   # text older than the floor that may move: the recent-text window (0: all)


def made_pages(session: str, layout: renderer.Layout, tokenizer: str, curve: Curve, ladder: Ladder,
               turn_count: int, now: float | None = None) -> Callable[[list[TurnRecord], int], list[PlacedPage]]:
    """``Making.pages`` for a session: turns typeset (cached per session) and placed by the curve."""
    def pages(turns: list[TurnRecord], first_page: int) -> list[PlacedPage]:
        made = context_pages.make(session, turns, layout, first_page, turn_count, tokenizer)
        placed = place([m.record for m in made], curve, ladder, turn_count, now)
        for p, m in zip(placed, made):
            p.png = m.png
        return placed
    return pages


def legible_cost(pages: list[PlacedPage], views: list[Tier], legible: Tier) -> float:
    """What ``pages`` cost with none faded below ``legible`` by the budget: each at its curve tier
    or ``legible``, whichever is fainter (a page the curve already faded further stays there)."""
    floor = views.index(legible) if legible in views else len(views) - 1
    index = {t: i for i, t in enumerate(views)}
    return memory_tokens([(p.record.page, p.tier if index.get(p.tier, floor) >= floor else views[floor])
                          for p in pages])


PAGE_TOKENS = 2000   # text tokens a page holds, at most, when no sealed page says (12 px body, 1024 px page)


def _within_reach(older: list[TurnRecord], visible: list[PlacedPage], legible: Tier, budget: int,
                  reach_tokens: int) -> list[TurnRecord]:
    """The newest of ``older`` that pages made for this context may hold: at most the recent-text
    window's worth (``reach_tokens``), and never more than the budget could show at the faintest
    legible tier. Normally all of it: unsealed text is at most the window plus a page. After a bulk
    import thousands of turns wait for the sealer; typesetting them all (~50 ms a page) on a context
    call took 23 s for 134 pages, of which a 4k budget shows a few. Those wait for their seal."""
    per_page = max((p.record.text_tokens for p in visible), default=0) or PAGE_TOKENS
    reach = (int(budget // max(legible.tokens, 1.0)) + 1) * per_page
    if reach_tokens:
        reach = min(reach, reach_tokens)
    spent = 0
    for n, turn in enumerate(reversed(older)):
        spent += turn.tokens
        if spent > reach:
            return older[len(older) - n:]
    return older


def _text(turns: list[TurnRecord], room: float) -> tuple[list[TurnRecord], int]:
    """The newest turns (contiguous) within ``room`` tokens, and how many older ones are left out."""
    spent, kept = 0, list[TurnRecord]()
    for n, turn in enumerate(reversed(turns)):
        if spent + turn.tokens > room:
            return kept[::-1], len(turns) - n
        kept.append(turn)
        spent += turn.tokens
    return kept[::-1], 0


def _move_text(turns: list[TurnRecord], visible: list[PlacedPage], views: list[Tier], legible: Tier,
               budget: int, making: Making) -> tuple[list[TurnRecord], list[PlacedPage]] | None:
    """Rule 0: the text and the made pages (oldest first) that keep the memory legible with the
    most text; when nothing does, the choice (all text, down to only the floor) that shows the most
    turns legibly after fading. None: nothing moves."""
    floor, _ = _text(turns[len(turns) - min(making.floor_turns, len(turns)):], budget)
    older = _within_reach(turns[:len(turns) - len(floor)], visible, legible, budget, making.reach_tokens)
    if not older:
        return None
    first = visible[-1].record.page + 1 if visible else 0
    made = making.pages(older, first)
    if any(p.tier.gone for p in made):   # a curve that forgets at once: pages would hold nothing
        return None
    for j in range(1, len(made) + 1):
        if j < len(made):   # text from the turn the next page starts with (a split turn: all of it)
            start = made[j].record.first_turn
            text = [t for t in older if t.index >= start] + floor
        else:
            text = floor
        room = budget - sum(t.tokens for t in text)
        cost = legible_cost(visible + made[:j], views, legible)
        if room < 0 or cost > room + 1e-9:
            continue
        # Whole pages moved; what they leave of the room goes back to text: the last made page then
        # ends where the text begins (typeset again, once: it is cached like the others).
        more, _ = _text([t for t in older if t.index > made[j - 1].record.first_turn] + floor, budget - cost)
        if len(more) > len(text):
            cut = more[0].index
            fewer = making.pages([t for t in older if t.index < cut], first)
            if legible_cost(visible + fewer, views, legible) <= budget - sum(t.tokens for t in more) + 1e-9:
                return more, fewer
        return text, made[:j]
    # Not every page can stay legible: keep what shows the most turns legibly, from all text (no page
    # made) to only the floor as text.
    options: list[tuple[list[TurnRecord], list[PlacedPage]]] = [(_text(turns, budget)[0], [])]
    for j in range(1, len(made) + 1):
        options.append(([t for t in older if t.index >= made[j].record.first_turn] + floor if j < len(made) else floor,
                        made[:j]))
    options = [o for o in options if sum(t.tokens for t in o[0]) <= budget]
    return max(options, key=lambda o: _legible_turns(o[0], visible + o[1], views, legible,
                                                     budget - sum(t.tokens for t in o[0])))


def _fit(visible: list[PlacedPage], views: list[Tier], room: float) -> tuple[int, list[Tier]]:
    """Rules 2-4: how many of the oldest pages are dropped, and the tiers of the rest, in ``room``."""
    dropped = 0
    least = min((t.tokens for t in views), default=0.0) or min((p.tier.tokens for p in visible), default=0.0)
    # Fewer pages than this can't fit at any tier (each costs at least the faintest per-page price).
    while dropped < len(visible) and (len(visible) - dropped) * least > room + 1e-9:
        dropped += 1
    while dropped < len(visible):
        fitted = fade_to_fit(visible[dropped:], views, room)
        if fitted is not None:
            return dropped, fitted
        dropped += 1
    return dropped, []


def _legible_turns(text: list[TurnRecord], pages: list[PlacedPage], views: list[Tier], legible: Tier,
                   room: float) -> int:
    """Turns a candidate shows legibly once its pages are fitted in ``room`` (as text, or on a page
    at ``legible`` or sharper; a page counts the turns it spans)."""
    dropped, tiers = _fit(pages, views, room)
    limit = views.index(legible) if legible in views else len(views) - 1
    return len(text) + sum(p.record.last_turn - p.record.first_turn + 1
                           for p, t in zip(pages[dropped:], tiers) if t in views and views.index(t) <= limit)


def assemble(turns: list[TurnRecord], placed: list[PlacedPage], budget: int | None = None, *,
             ladder: Ladder | None = None, min_memory_tokens: int = 0, forgotten: int = 0,
             making: Making | None = None, unread_turns: int = 0) -> Assembled:
    """Recent turns and memory pages within ``budget`` tokens (None: everything, at the curve's tiers):
    pages fade further to fit and are dropped, oldest first, only when their faintest view can't
    (the rule above). ``ladder``: the tiers to fade along (default: the one the pages' tiers are from).
    ``placed`` may leave gone pages out (``Memory`` passes only what the curve keeps, from the page
    index): ``forgotten`` counts those left out. ``making``: text beyond a floor of recent turns
    moves onto pages made for the context when the memory would otherwise fade below legible
    (rule 0; None: recent text first, as before). ``unread_turns``: text turns older than ``turns``
    left unread because the budget could not show them (``Store.text_tail``): counted as dropped."""
    visible = sorted((p for p in placed if not p.tier.gone), key=lambda p: p.record.page)
    gone = len(placed) - len(visible) + forgotten
    found = ladder or ladder_of(visible)
    views = readable(found) if found else []
    reserve = 0.0
    if budget is not None and visible and min_memory_tokens > 0:
        reserve = min(float(min_memory_tokens), float(budget),
                      memory_tokens([(p.record.page, p.tier) for p in visible]))
    kept_turns, dropped_turns = _text(turns, float("inf") if budget is None else budget - reserve)
    dropped_turns += unread_turns
    spent = sum(t.tokens for t in kept_turns)
    made: list[PlacedPage] = []
    if budget is not None and making is not None and found is not None and views:
        legible = found.faintest_legible
        # Text cut short, or pages that would fade below legible: older text is worth more on pages.
        if dropped_turns or legible_cost(visible, views, legible) > budget - spent + 1e-9:
            chosen = _move_text(turns, visible, views, legible, budget, making)
            if chosen is not None:
                kept_turns, made = chosen
                held = {t.index for t in kept_turns} | {s["index"] for p in made for s in p.record.turns}
                spent = sum(t.tokens for t in kept_turns)
                dropped_turns = sum(t.index not in held for t in turns) + unread_turns
                visible = visible + made

    dropped_pages, tiers = 0, [p.tier for p in visible]
    if budget is not None:
        dropped_pages, tiers = _fit(visible, views, budget - spent)
    kept = visible[dropped_pages:]
    shares = charges([(p.record.page, t) for p, t in zip(kept, tiers)])
    kept_pages = [PlacedPage(p.record, t, p.age, curve_tier=p.tier, charge=c, png=p.png)
                  for p, t, c in zip(kept, tiers, shares)]
    replaced = sum(p.record.text_tokens for p in kept_pages)
    visual = memory_tokens([(p.record.page, p.tier) for p in kept_pages])
    recent = sum(t.tokens for t in kept_turns)
    shown = [p for p in kept_pages if p.png is not None]
    moved = {s["index"] for p in shown for s in p.record.turns}
    return Assembled(kept_turns, kept_pages, Accounting(
        recent_text_tokens=recent, pages=len(kept_pages), pages_forgotten=gone,
        text_tokens_replaced=replaced, visual_tokens=round(visual, 2),
        compression=round(replaced / visual, 2) if visual else None, total_tokens=round(recent + visual, 2),
        budget=budget, dropped_turns=dropped_turns, dropped_pages=dropped_pages,
        pages_faded_by_budget=sum(p.faded_by_budget for p in kept_pages),
        min_memory_tokens=min_memory_tokens, memory_tokens_reserved=round(reserve, 2),
        recent_floor_turns=making.floor_turns if making else None, pages_made=len(shown),
        turns_moved_to_pages=len(moved), text_tokens_moved=sum(p.record.text_tokens for p in shown)))


def openai_role(role: str) -> tuple[str, str | None]:
    """OpenAI messages know three roles; other speakers become named users."""
    return (role, None) if role in ("user", "assistant", "system") else ("user", role)


MEMORY_PREAMBLE = ("Earlier conversation, kept as transcript page images, oldest first. Older pages are "
                   "smaller and fainter; a mosaic holds several pages in reading order.")


def openai_messages(turns: list[TurnRecord], images: list[dict]) -> list[dict]:
    """``images`` are OpenAI ``image_url`` objects ({"url", and "detail" where the tier's cost needs it})."""
    messages: list[dict] = []
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": MEMORY_PREAMBLE}]
        parts += [{"type": "image_url", "image_url": image} for image in images]
        # A user message: OpenAI's API takes image parts only from users (vLLM takes them anywhere).
        messages.append({"role": "user", "content": parts})
    for turn in turns:
        role, name = openai_role(turn.role)
        message = {"role": role, "content": turn.content[turn.start:]}
        if name:
            message["name"] = name
        messages.append(message)
    return messages


def page_info(p: PlacedPage, session: str, links: Links | None) -> PageInfo:
    r = p.record
    return PageInfo(page=r.page, first_turn=r.first_turn, last_turn=r.last_turn, first_time=r.first_time,
                    last_time=r.last_time, tier=p.tier.name, px=p.tier.px, age=p.age,
                    visual_tokens=round(p.tier.tokens if p.charge is None else p.charge, 2), text_tokens=r.text_tokens,
                    curve_tier=p.curve_tier.name if p.curve_tier is not None else None,
                    image_url=links.page(session, r.page, p.tier.name) if links and p.png is None else None,
                    made_for_context=p.png is not None)


def raw(k: SessionKeys, meta: SessionMeta, ladder: Ladder, built: Assembled, links: Links | None) -> RawContext:
    turns = [TextTurn(index=t.index, role=t.role, content=t.content[t.start:], time=t.time, tokens=t.tokens,
                      continued=t.start > 0, forgotten=t.forgotten) for t in built.turns]
    return RawContext(session=k.session, family=ladder.family, curve=json.loads(meta.curve), turns=turns,
                      pages=[page_info(p, k.session, links) for p in built.pages], accounting=built.accounting)


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _made_canvas(k: SessionKeys, group: int, tier: Tier, pages: list[PlacedPage],
                 reader: PageImages) -> Image.Image:
    """A mosaic canvas that holds pages made for the context: the sealed pages of its group (as the
    served canvas has them), then the made ones, in page order."""
    made = sorted((p for p in pages if p.png is not None and p.tier == tier
                   and p.record.page // tier.per_canvas == group), key=lambda p: p.record.page)
    sealed = reader.store.pngs(k, range(group * tier.per_canvas, made[0].record.page))
    return canvas(sealed + [p.png for p in made if p.png is not None], tier)



def _canvas(reader: PageImages, k: SessionKeys, group: int, tier: Tier) -> bytes:
    png = reader.canvas_png(k, group, tier)
    if png is None:   # a placed page is in its group: the group has a page to draw
        raise RuntimeError(f"mosaic {tier.name} group {group} of {k.session} has no page")
    return png


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def image_parts(k: SessionKeys, pages: list[PlacedPage], reader: PageImages, links: Links | None) -> list[dict]:
    """OpenAI ``image_url`` objects, one per page or mosaic canvas, with the detail its tier's cost assumes.
    A page made for the context (or a canvas holding one) comes inline: no link serves it."""
    images, seen_groups = [], set()
    made_groups = {(p.tier.name, p.record.page // p.tier.per_canvas) for p in pages if p.png is not None}
    for p in pages:
        tier = p.tier
        if tier.per_canvas > 1:
            group = p.record.page // tier.per_canvas
            if (tier.name, group) in seen_groups:
                continue
            seen_groups.add((tier.name, group))
            if (tier.name, group) in made_groups:
                url = _data_url(_png(_made_canvas(k, group, tier, pages, reader)))
            else:
                url = links.mosaic(k.session, tier.name, group) if links else _data_url(_canvas(reader, k, group, tier))
        elif p.png is not None:
            url = _data_url(tier_png(p.png, tier))
        else:
            url = (links.page(k.session, p.record.page, tier.name) if links
                   else _data_url(tier_png(reader.store.png(k, p.record.page), tier)))
        images.append({"url": url, "detail": tier.detail} if tier.detail else {"url": url})
    return images


def openai(k: SessionKeys, built: Assembled, reader: PageImages, links: Links | None) -> OpenAIContext:
    messages = openai_messages(built.turns, image_parts(k, built.pages, reader, links))
    return OpenAIContext(session=k.session, messages=messages, accounting=built.accounting)


def _made_tokens(k: SessionKeys, p: PlacedPage, pages: list[PlacedPage], reader: Reader):
    """Visual tokens of a page made for the context (or of a canvas holding one), encoded now and
    not cached (the page is not stored); None for a sealed page or canvas."""
    tier = p.tier
    if tier.per_canvas > 1:
        group = p.record.page // tier.per_canvas
        if not any(q.png is not None and q.tier == tier and q.record.page // tier.per_canvas == group for q in pages):
            return None
        view = PageView(_made_canvas(k, group, tier, pages, reader.images), tier)
    elif p.png is not None:
        view = PageView(renderer.view(p.png, tier.px), tier)
    else:
        return None
    return reader.backend.encode([view])[0]


def embeddings(k: SessionKeys, built: Assembled, reader: Reader, links: Links | None) -> EmbeddingsContext:
    """Cached visual tokens per page (or mosaic canvas) and the prompt layout that splices them:
    a DeepSeek-OCR-family decoder puts image ``i``'s tokens where its ``n_tokens`` placeholders are."""
    images, seen = [], set()
    for p in built.pages:
        unit = token_unit(p.record.page, p.tier)
        if (unit, p.tier.name) in seen:
            continue
        seen.add((unit, p.tier.name))
        made = _made_tokens(k, p, built.pages, reader)
        tokens = made or reader.visual_tokens(k, p.record.page, p.tier)
        members = [q.record.page for q in built.pages if token_unit(q.record.page, q.tier) == unit and q.tier == p.tier]
        image = TokenImage(unit=unit, tier=p.tier.name, n_tokens=tokens.n_tokens, hidden=int(tokens.tensor.shape[1]),
                           dtype=str(tokens.tensor.dtype).removeprefix("torch."), revision=tokens.revision,
                           pages=members)
        if links and made is None:   # a unit holding a made page is served by no link: inline
            image.tokens_url = links.tokens(k.session, unit, p.tier.name)
        else:
            image.safetensors_base64 = base64.b64encode(tokens.to_bytes()).decode()
        images.append(image)
    layout: list[dict[str, Any]] = [{"type": "text", "text": MEMORY_PREAMBLE + "\n"}]
    layout += [{"type": "image", "image": i, "n_tokens": image.n_tokens} for i, image in enumerate(images)]
    layout += [{"type": "text", "text": f"\n{t.role}: {t.content[t.start:]}"} for t in built.turns]
    return EmbeddingsContext(session=k.session, placeholder="<image>", images=images, layout=layout,
                             turns=[{"index": t.index, "role": t.role, "content": t.content[t.start:]}
                                    for t in built.turns], accounting=built.accounting)
