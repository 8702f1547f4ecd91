"""Turns as callers send them -> validated TurnRecords (times normalised to UTC, tokens counted)."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from optimem.errors import BadRequest
from optimem.memory import tokens
from optimem.memory.store import TurnRecord

MAX_TURNS_PER_CALL = 1000
MAX_TIME_CHARS = 64
SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a UTF-16 surrogate on its own (not valid Unicode: it cannot be stored or sent
    as UTF-8), or None. JSON's escaped pairs (\\ud83d\\ude00) arrive joined, so any surrogate left is lone."""
    found = SURROGATE.search(text)
    return found.start() if found else None


def check_unicode(text: str, where: str) -> None:
    at = lone_surrogate(text)
    if at is not None:
        raise BadRequest(f"{where} has a lone surrogate at character {at}: send valid Unicode "
                         "(a UTF-16 surrogate pair cut in half is not a character)")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def normalise_time(value: Any) -> str:
    """An ISO 8601 time (naive means UTC) as ``YYYY-MM-DDTHH:MM:SSZ``; empty means now."""
    if value is None or value == "":
        return now_iso()
    if not isinstance(value, str):
        raise BadRequest(f"turn time must be an ISO 8601 string, got {str(value)[:40]!r}")
    if len(value) > MAX_TIME_CHARS:
        raise BadRequest(f"turn time is not ISO 8601: {len(value)} characters (e.g. 2024-05-01T12:30:00Z)")
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"turn time {value!r} is not ISO 8601 (e.g. 2024-05-01T12:30:00Z)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    try:
        utc = stamp.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is in year 10000 in UTC
        raise BadRequest(f"turn time {value!r} is outside years 1-9999 in UTC") from None
    return utc.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_turn(raw: Any, position: int, max_chars: int, tokenizer: str, count: bool = True) -> TurnRecord:
    """A turn checked as ``append`` checks it; ``count=False``: its tokens left at 0 (a check only)."""
    if not isinstance(raw, dict):
        raise BadRequest(f"turns[{position}] must be an object with 'role' and 'content'")
    role, content = raw.get("role"), raw.get("content")
    if not isinstance(role, str) or not role.strip() or len(role) > 64:
        raise BadRequest(f"turns[{position}].role must be a non-empty string of at most 64 characters")
    check_unicode(role, f"turns[{position}].role")
    if not isinstance(content, str) or not content.strip():
        raise BadRequest(f"turns[{position}].content must be a non-empty string")
    check_unicode(content, f"turns[{position}].content")
    if len(content) > max_chars:
        raise BadRequest(f"turns[{position}].content has {len(content)} characters; the limit is "
                         f"{max_chars} (OPTIMEM_MAX_TURN_CHARS)")
    time_ = normalise_time(raw.get("time"))
    counted = tokens.turn_tokens(role, content, tokenizer) if count else 0
    return TurnRecord(index=-1, role=role.strip(), content=content, time=time_, tokens=counted)


def parse_turns(turns: Any, max_chars: int, tokenizer: str) -> list[TurnRecord]:
    if not isinstance(turns, list) or not turns:
        raise BadRequest("'turns' must be a non-empty list")
    if len(turns) > MAX_TURNS_PER_CALL:
        raise BadRequest(f"at most {MAX_TURNS_PER_CALL} turns per call, got {len(turns)}")
    return [parse_turn(raw, i, max_chars, tokenizer) for i, raw in enumerate(turns)]
