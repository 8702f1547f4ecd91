"""What a recall question says besides its words: who it is about and when.

People ask weeks later in their own terms: "What is Leo afraid of?", "what did I say about...",
"a month ago", "the first time we talked", "in April", "before the trip". Names and pronouns map to the session's
roles (a role's own name; "I/my" -> ``user``, "you/your" -> ``assistant`` where the session has
those roles); time words become a window relative to the session's own latest turn (a bulk import
carries old times: never the wall clock). Both only weigh the ranking (``memory/ranking.py``);
the request's ``role``, ``since`` and ``until`` stay the hard filters.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

DAY = 86_400.0
WORD = re.compile(r"[^\W_]+", re.UNICODE)
FIRST_PERSON = frozenset("i me my mine myself i'm i've i'd".split())
SECOND_PERSON = frozenset("you your yours yourself you're you've you'd".split())
MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name and name.lower() != "may"})
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
           "eight": 8, "nine": 9, "ten": 10, "few": 3, "couple": 2, "several": 3}
UNITS = {"day": 1, "week": 7, "month": 30, "year": 365}
_N = "|".join(sorted(NUMBERS, key=len, reverse=True))
AGO = re.compile(rf"\b(?:(\d+|{_N})(?: of)? (day|week|month|year)s?|(day|week|month|year)s) (?:ago|back)\b")
LAST = re.compile(r"\b(?:last|past|previous) (day|week|month|year)\b")
MONTH = re.compile(r"\b(?:in|during|back in|early|late|mid|of|since|around) (" + "|".join(MONTHS) + r")\b")
FIRST = re.compile(r"\b(?:(?:the |our |my |your )?(?:very )?first (?:time|chat|conversation|talk|day|week|"
                   r"few chats)|at the (?:start|beginning)|when we (?:first )?met|early on|back at the start)\b")
LATEST = re.compile(r"\b(?:last time|the other day|(?:most )?recent(?:ly)?|lately|latest|our last "
                    r"(?:chat|conversation|talk)|the last (?:chat|conversation|talk)|yesterday|today|this week|"
                    r"just now|last night|tonight|this morning|earlier today)\b")
WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}
WEEKDAY = re.compile(r"\b(?:on|last|this past|that) (" + "|".join(WEEKDAYS) + r")\b")
# "before the trip", "after I moved", "after mental health": a window up to, or from, the time of the
# turn the index finds first for the event's words (``when``'s ``locate``).
EVENT = re.compile(r"\b(before|after) (?:(?:the|my|our|your|his|her|their|that|this|we|i|you|he|she|they) )?"
                   r"([a-z][\w'-]*(?: [a-z][\w'-]*){0,3})")
ZH_FIRST = re.compile("一开始|刚开始|第一次|最早|最初|开头")
ZH_LATEST = re.compile("最后|最近|上次|刚才|前几天")


@dataclass(frozen=True)
class Window:
    """A stretch of the session's time the question points at (seconds since the epoch)."""
    start: float
    end: float
    words: str              # the time words it was read from, e.g. "a month ago"

    def holds(self, stamp: float) -> bool:
        return self.start <= stamp <= self.end

    def label(self) -> str:
        def day(t: float) -> str:
            return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")
        return f"{self.words}: {day(self.start)}..{day(self.end)}"


def who(query: str, roles: list[str]) -> dict[str, float]:
    """role -> weight (0..1] of the roles the question is about: a role named in it (whole word,
    any case) weighs 1; "I/my" and "you/your" point at ``user`` and ``assistant`` where the session
    has them, the first pronoun asked fully and the other, when both appear, half."""
    words = [w.lower() for w in WORD.findall(query)]
    low = {r.lower(): r for r in roles}
    out: dict[str, float] = {}
    for w in words:
        if w in low:
            out[low[w]] = 1.0
    by_pronoun = []
    for w in re.findall(r"[a-z']+", query.lower()):
        if w in FIRST_PERSON and "user" in roles:
            by_pronoun.append("user")
        elif w in SECOND_PERSON and "assistant" in roles:
            by_pronoun.append("assistant")
    if by_pronoun and not out:
        first = by_pronoun[0]
        out[first] = 1.0
        for other in by_pronoun[1:]:
            out.setdefault(other, 0.5)
    return out


def _month_window(month: int, latest: datetime, words: str) -> Window:
    year = latest.year if month <= latest.month else latest.year - 1
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
    return Window(start.timestamp(), end.timestamp() - 1, words)


def when(query: str, first: float, latest: float,
         locate: Callable[[str], float | None] | None = None) -> Window | None:
    """The window the question's time words point at, relative to the session's first and latest
    turn times; None when it names no time. "N units ago" is centred N units before the latest
    turn, half a unit (at least a day) either side; "the first time" and "recently" are the first
    and last tenth of the session (at least a day). "before / after <event>" (with no other time
    words) runs from the session's first turn to the event, or from the event to its latest turn,
    the event's time being ``locate(<event words>)``: the time of the turn the index ranks first
    for them (None: no such turn, no window)."""
    text = query.lower()
    span = max(latest - first, 0.0)
    edge = max(DAY, span / 10)
    if m := AGO.search(text):       # "two weeks ago", "3 months back"; "weeks ago": a few
        n = int(m.group(1)) if m.group(1) and m.group(1).isdigit() else NUMBERS[m.group(1) or "few"]
        unit = UNITS[m.group(2) or m.group(3)] * DAY
        centre = latest - n * unit
        return Window(centre - max(DAY, unit / 2), centre + max(DAY, unit / 2), m.group(0))
    if m := LAST.search(text):
        unit = UNITS[m.group(1)] * DAY
        return Window(latest - 2 * unit, latest, m.group(0))
    if m := MONTH.search(text):
        return _month_window(MONTHS[m.group(1)], datetime.fromtimestamp(latest, timezone.utc), m.group(0))
    if m := WEEKDAY.search(text):   # "on Friday", "last Tuesday": the last such day up to the latest turn's
        day = datetime.fromtimestamp(latest, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        back = (day.weekday() - WEEKDAYS[m.group(1)]) % 7
        start = day.timestamp() - back * DAY
        return Window(start, start + DAY - 1, m.group(0))
    if m := FIRST.search(text) or ZH_FIRST.search(query):
        return Window(first, first + edge, m.group(0))
    if m := LATEST.search(text) or ZH_LATEST.search(query):
        return Window(latest - edge, latest, m.group(0))
    if locate is not None and (m := EVENT.search(text)) and (at := locate(m.group(2))) is not None:
        return Window(first, at, m.group(0)) if m.group(1) == "before" else Window(at, latest, m.group(0))
    return None

