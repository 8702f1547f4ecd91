"""Times as optimem stores them: ISO 8601 in UTC to the second, ``YYYY-MM-DDTHH:MM:SSZ``.

One form everywhere (turns, page records, recall's time range), so stored times compare as text in
the order they happen (``Store.pages_in_time``). ``normalise`` takes what callers send, ``parse``
reads a stored (or any ISO 8601) time as seconds, ``iso`` writes one.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from optimem.errors import BadRequest

MAX_CHARS = 64    # longer is not a time (and not worth parsing)


def iso(stamp: float | datetime) -> str:
    """Seconds since the epoch, or an aware datetime, in the stored form."""
    when = datetime.fromtimestamp(stamp, timezone.utc) if isinstance(stamp, (int, float)) else stamp
    return when.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def now() -> str:
    return iso(datetime.now(timezone.utc))


def _datetime(value: str) -> datetime:
    """ISO 8601 with ``Z`` or an offset; naive means UTC. ValueError if it is not ISO 8601."""
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=timezone.utc)


def parse(value: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (a stored one, or any: naive means UTC)."""
    return _datetime(value).timestamp()


def normalise(value: Any) -> str:
    """A caller's time in the stored form; None or empty means now. BadRequest says what is wrong."""
    if value is None or value == "":
        return now()
    if not isinstance(value, str):
        raise BadRequest(f"turn time must be an ISO 8601 string, got {str(value)[:40]!r}")
    if len(value) > MAX_CHARS:
        raise BadRequest(f"turn time is not ISO 8601: {len(value)} characters (e.g. 2024-05-01T12:30:00Z)")
    try:
        stamp = _datetime(value)
    except ValueError:
        raise BadRequest(f"turn time {value!r} is not ISO 8601 (e.g. 2024-05-01T12:30:00Z)") from None
    try:
        return iso(stamp)
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is in year 10000 in UTC
        raise BadRequest(f"turn time {value!r} is outside years 1-9999 in UTC") from None
