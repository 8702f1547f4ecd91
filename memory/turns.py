"""Turns as callers send them -> validated TurnRecords (times normalised to UTC, tokens counted)."""
from __future__ import annotations

import re
from typing import Any

from optimem.errors import BadRequest
from optimem.memory import times, tokens
from optimem.memory.store import TurnRecord
# The old names, until memory/recall.py imports ``times.normalise`` and ``times.now`` itself.

MAX_TURNS_PER_CALL = 1000
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
    time_ = times.normalise(raw.get("time"))
    counted = tokens.turn_tokens(role, content, tokenizer) if count else 0
    return TurnRecord(index=-1, role=role.strip(), content=content, time=time_, tokens=counted)


def parse_turns(turns: Any, max_chars: int, tokenizer: str) -> list[TurnRecord]:
    if not isinstance(turns, list) or not turns:
        raise BadRequest("'turns' must be a non-empty list")
    if len(turns) > MAX_TURNS_PER_CALL:
        raise BadRequest(f"at most {MAX_TURNS_PER_CALL} turns per call, got {len(turns)}")
    return [parse_turn(raw, i, max_chars, tokenizer) for i, raw in enumerate(turns)]
