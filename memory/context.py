"""Context: recent turns as text plus memory pages at the tier their age gives them, with the
accounting a caller needs (text tokens the pages replace, visual tokens they cost), in the caller's
format: raw, OpenAI messages with page images, or cached visual tokens for a DeepSeek-OCR decoder.

Where images and tokens are served is the API's business: it passes ``Links``; without them (in
process) images come inline as data URLs and tokens as base64 safetensors.
"""
from __future__ import annotations

import base64
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from optimem.memory.curves import MAX_AGE, Curve
from optimem.memory.reading import Reader, token_unit, tier_png
from optimem.memory.results import (Accounting, EmbeddingsContext, OpenAIContext, PageInfo, RawContext,
                                    TextTurn, TokenImage)
from optimem.memory.store import PageRecord, SessionKeys, SessionMeta, TurnRecord
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

    @property
    def faded_by_budget(self) -> bool:
        return self.curve_tier is not None and self.curve_tier != self.tier


def parse_time(value: str) -> float:
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def age_of(record: PageRecord, curve: Curve, turn_count: int, now: float | None = None) -> float:
    # Age is the content's age (turns after the page's last turn), not the time since sealing, so a
    # conversation imported in one call fades the same as one that arrived turn by turn.
    if curve.unit == "turns":
        return float(turn_count - 1 - record.last_turn)
    return max(0.0, (now or time.time()) - parse_time(record.last_time))


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


def assemble(turns: list[TurnRecord], placed: list[PlacedPage], budget: int | None = None, *,
             ladder: Ladder | None = None, min_memory_tokens: int = 0, forgotten: int = 0) -> Assembled:
    """Recent turns and memory pages within ``budget`` tokens (None: everything, at the curve's tiers):
    pages fade further to fit and are dropped, oldest first, only when their faintest view can't
    (the rule above). ``ladder``: the tiers to fade along (default: the one the pages' tiers are from).
    ``placed`` may leave gone pages out (``Memory`` passes only what the curve keeps, from the page
    index): ``forgotten`` counts those left out."""
    visible = sorted((p for p in placed if not p.tier.gone), key=lambda p: p.record.page)
    views = readable(ladder) if ladder else (readable(found) if (found := ladder_of(visible)) else [])
    reserve = 0.0
    if budget is not None and visible and min_memory_tokens > 0:
        reserve = min(float(min_memory_tokens), float(budget),
                      memory_tokens([(p.record.page, p.tier) for p in visible]))
    spent, kept_turns, dropped_turns = 0, [], 0
    for turn in reversed(turns):
        if dropped_turns or (budget is not None and spent + turn.tokens > budget - reserve):
            dropped_turns += 1  # the recent text stays contiguous
            continue
        kept_turns.append(turn)
        spent += turn.tokens
    kept_turns.reverse()

    dropped_pages, tiers = 0, [p.tier for p in visible]
    if budget is not None:
        room = budget - spent
        least = min((t.tokens for t in views), default=0.0) or min((p.tier.tokens for p in visible), default=0.0)
        # Fewer pages than this can't fit at any tier (each costs at least the faintest per-page price).
        while dropped_pages < len(visible) and (len(visible) - dropped_pages) * least > room + 1e-9:
            dropped_pages += 1
        while dropped_pages < len(visible):
            fitted = fade_to_fit(visible[dropped_pages:], views, room)
            if fitted is not None:
                tiers = fitted
                break
            dropped_pages += 1
        else:
            tiers = []
    kept = visible[dropped_pages:]
    shares = charges([(p.record.page, t) for p, t in zip(kept, tiers)])
    kept_pages = [PlacedPage(p.record, t, p.age, curve_tier=p.tier, charge=c)
                  for p, t, c in zip(kept, tiers, shares)]
    replaced = sum(p.record.text_tokens for p in kept_pages)
    visual = memory_tokens([(p.record.page, p.tier) for p in kept_pages])
    recent = sum(t.tokens for t in kept_turns)
    return Assembled(kept_turns, kept_pages, Accounting(
        recent_text_tokens=recent, pages=len(kept_pages), pages_forgotten=len(placed) - len(visible) + forgotten,
        text_tokens_replaced=replaced, visual_tokens=round(visual, 2),
        compression=round(replaced / visual, 2) if visual else None, total_tokens=round(recent + visual, 2),
        budget=budget, dropped_turns=dropped_turns, dropped_pages=dropped_pages,
        pages_faded_by_budget=sum(p.faded_by_budget for p in kept_pages),
        min_memory_tokens=min_memory_tokens, memory_tokens_reserved=round(reserve, 2)))


def openai_role(role: str) -> tuple[str, str | None]:
    """OpenAI messages know three roles; other speakers become named users."""
    return (role, None) if role in ("user", "assistant", "system") else ("user", role)


MEMORY_PREAMBLE = ("Earlier conversation, kept as transcript page images, oldest first. Older pages are "
                   "smaller and fainter; a mosaic holds several pages in reading order.")


def openai_messages(turns: list[TurnRecord], images: list[dict]) -> list[dict]:
    """``images`` are OpenAI ``image_url`` objects ({"url", and "detail" where the tier's cost needs it})."""
    messages: list[dict] = []
    if images:
        parts = [{"type": "text", "text": MEMORY_PREAMBLE}]
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
                    image_url=links.page(session, r.page, p.tier.name) if links else None)


def raw(k: SessionKeys, meta: SessionMeta, ladder: Ladder, built: Assembled, links: Links | None) -> RawContext:
    turns = [TextTurn(index=t.index, role=t.role, content=t.content[t.start:], time=t.time, tokens=t.tokens,
                      continued=t.start > 0, forgotten=t.forgotten) for t in built.turns]
    return RawContext(session=k.session, family=ladder.family, curve=json.loads(meta.curve), turns=turns,
                      pages=[page_info(p, k.session, links) for p in built.pages], accounting=built.accounting)


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_parts(k: SessionKeys, pages: list[PlacedPage], reader: Reader, links: Links | None) -> list[dict]:
    """OpenAI ``image_url`` objects, one per page or mosaic canvas, with the detail its tier's cost assumes."""
    images, seen_groups = [], set()
    for p in pages:
        tier = p.tier
        if tier.per_canvas > 1:
            group = p.record.page // tier.per_canvas
            if (tier.name, group) in seen_groups:
                continue
            seen_groups.add((tier.name, group))
            url = links.mosaic(k.session, tier.name, group) if links else _data_url(reader.canvas_png(k, group, tier))
        else:
            url = (links.page(k.session, p.record.page, tier.name) if links
                   else _data_url(tier_png(reader.store.png(k, p.record.page), tier)))
        images.append({"url": url, "detail": tier.detail} if tier.detail else {"url": url})
    return images


def openai(k: SessionKeys, built: Assembled, reader: Reader, links: Links | None) -> OpenAIContext:
    messages = openai_messages(built.turns, image_parts(k, built.pages, reader, links))
    return OpenAIContext(session=k.session, messages=messages, accounting=built.accounting)


def embeddings(k: SessionKeys, built: Assembled, reader: Reader, links: Links | None) -> EmbeddingsContext:
    """Cached visual tokens per page (or mosaic canvas) and the prompt layout that splices them:
    a DeepSeek-OCR-family decoder puts image ``i``'s tokens where its ``n_tokens`` placeholders are."""
    images, seen = [], set()
    for p in built.pages:
        unit = token_unit(p.record.page, p.tier)
        if (unit, p.tier.name) in seen:
            continue
        seen.add((unit, p.tier.name))
        tokens = reader.visual_tokens(k, p.record.page, p.tier)
        members = [q.record.page for q in built.pages if token_unit(q.record.page, q.tier) == unit and q.tier == p.tier]
        image = TokenImage(unit=unit, tier=p.tier.name, n_tokens=tokens.n_tokens, hidden=int(tokens.tensor.shape[1]),
                           dtype=str(tokens.tensor.dtype).removeprefix("torch."), revision=tokens.revision,
                           pages=members)
        if links:
            image.tokens_url = links.tokens(k.session, unit, p.tier.name)
        else:
            image.safetensors_base64 = base64.b64encode(tokens.to_bytes()).decode()
        images.append(image)
    layout = [{"type": "text", "text": MEMORY_PREAMBLE + "\n"}]
    layout += [{"type": "image", "image": i, "n_tokens": image.n_tokens} for i, image in enumerate(images)]
    layout += [{"type": "text", "text": f"\n{t.role}: {t.content[t.start:]}"} for t in built.turns]
    return EmbeddingsContext(session=k.session, placeholder="<image>", images=images, layout=layout,
                             turns=[{"index": t.index, "role": t.role, "content": t.content[t.start:]}
                                    for t in built.turns], accounting=built.accounting)
