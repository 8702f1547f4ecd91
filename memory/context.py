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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from optimem.memory.curves import Curve
from optimem.memory.reading import Reader, token_unit, tier_png
from optimem.memory.results import (Accounting, EmbeddingsContext, OpenAIContext, PageInfo, RawContext,
                                    TextTurn, TokenImage)
from optimem.memory.store import PageRecord, SessionKeys, SessionMeta, TurnRecord
from optimem.model.tiers import Ladder, Tier

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


def assemble(turns: list[TurnRecord], placed: list[PlacedPage], budget: int | None = None) -> Assembled:
    """Newest first until the budget is spent: recent turns, then pages (a page older than one
    left out is left out too, so the memory never has holes in the middle)."""
    spent, kept_turns, dropped_turns = 0, [], 0
    for turn in reversed(turns):
        if budget is not None and spent + turn.tokens > budget:
            dropped_turns += 1
            continue
        if dropped_turns:  # keep the recent text contiguous as well
            dropped_turns += 1
            continue
        kept_turns.append(turn)
        spent += turn.tokens
    kept_turns.reverse()
    visible = [p for p in placed if not p.tier.gone]
    kept_pages, dropped_pages = [], 0
    for page in reversed(visible):
        if dropped_pages or (budget is not None and spent + page.tier.tokens > budget):
            dropped_pages += 1
            continue
        kept_pages.append(page)
        spent += page.tier.tokens
    kept_pages.reverse()
    replaced = sum(p.record.text_tokens for p in kept_pages)
    visual = sum(p.tier.tokens for p in kept_pages)
    recent = sum(t.tokens for t in kept_turns)
    return Assembled(kept_turns, kept_pages, Accounting(
        recent_text_tokens=recent, pages=len(kept_pages), pages_forgotten=len(placed) - len(visible),
        text_tokens_replaced=replaced, visual_tokens=round(visual, 2),
        compression=round(replaced / visual, 2) if visual else None, total_tokens=round(recent + visual, 2),
        budget=budget, dropped_turns=dropped_turns, dropped_pages=dropped_pages))


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
                    visual_tokens=round(p.tier.tokens, 2), text_tokens=r.text_tokens,
                    image_url=links.page(session, r.page, p.tier.name) if links else None)


def raw(k: SessionKeys, meta: SessionMeta, ladder: Ladder, built: Assembled, links: Links | None) -> RawContext:
    turns = [TextTurn(index=t.index, role=t.role, content=t.content[t.start:], time=t.time, tokens=t.tokens,
                      continued=t.start > 0) for t in built.turns]
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
