"""Context assembly: recent turns as text plus memory pages at the tier their age gives them,
with the accounting a caller needs (text tokens the pages replace, visual tokens they cost)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from memory.curves import Curve
from memory.store import PageRecord, TurnRecord
from model.tiers import Ladder, Tier


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


def assemble(turns: list[TurnRecord], placed: list[PlacedPage], budget: int | None = None) -> dict:
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
    return {
        "turns": kept_turns,
        "pages": kept_pages,
        "accounting": {
            "recent_text_tokens": recent,
            "pages": len(kept_pages),
            "pages_forgotten": len(placed) - len(visible),
            "text_tokens_replaced": replaced,
            "visual_tokens": round(visual, 2),
            "compression": round(replaced / visual, 2) if visual else None,
            "total_tokens": round(recent + visual, 2),
            "budget": budget,
            "dropped_turns": dropped_turns,
            "dropped_pages": dropped_pages,
        },
    }


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
