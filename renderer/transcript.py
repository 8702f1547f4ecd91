"""The transcript: a span of turns as the lines a reader will see, before any wrapping.

``templates/transcript.j2`` decides what the page says about each turn (its header: speaker, time,
the date where it changes, and whether it continues from an earlier page) and in what order; this
module cuts each turn's content into source lines (a code fence opens or closes a code block) and
keeps, for every line, the character offset in the content where it starts. Those offsets are what
let a page say exactly where it begins and ends.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2


@dataclass(frozen=True)
class TurnText:
    index: int              # turn number in the session (0-based)
    role: str               # "user", "assistant", "system", or any speaker name
    content: str
    time: str | None = None  # ISO 8601 or None
    start: int = 0          # offset in content where typesetting begins; before it is on a sealed page


@dataclass(frozen=True)
class Record:
    """One transcript line, not yet wrapped to the page width."""
    kind: str     # "header", "text" or "code"
    turn: int
    offset: int   # where the line starts in the turn's content (a header: where the turn resumes)
    text: str     # the source line without its line break; for a header, the header itself
                  # (a prefix such as "user 19:38:" that the typesetter sets before the first line)


_BREAK = re.compile(r"\r\n|[\n\r\x0b\x0c\x85\u2028\u2029]")
_FENCE = re.compile(r"[ \t]*(```|~~~)")
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _oneline(value: object) -> str:
    """A speaker name or time must not break the one-record-per-line transcript."""
    return _NOT_ONE_LINE.sub(" ", str(value)).strip()


def _moment(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _has_clock(value: str) -> bool:
    return len(value.strip()) > 10


def _when(value: str) -> str:
    """ISO 8601 shown as ``2018-05-02 19:38`` (minutes are enough to place a turn); a date alone
    stays a date; anything unparseable is shown as given."""
    moment = _moment(value)
    if moment is None:
        return _oneline(value)
    return moment.strftime("%Y-%m-%d %H:%M" if _has_clock(value) else "%Y-%m-%d")


def _day(value: str | None) -> str:
    """The date part (``2018-05-02``): a header writes the date only when it changes. An
    unparseable time is its own "date"; no time at all is ""."""
    if not value:
        return ""
    moment = _moment(value)
    return _oneline(value) if moment is None else moment.strftime("%Y-%m-%d")


def _clock(value: str | None) -> str:
    """The time of day (``19:38``); "" for a date alone or an unparseable time."""
    moment = _moment(value) if value else None
    return "" if moment is None or not value or not _has_clock(value) else moment.strftime("%H:%M")


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=False,               # plain text for the typesetter, not HTML
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )
    env.filters["oneline"] = _oneline
    env.filters["when"] = _when
    env.filters["day"] = _day
    env.filters["clock"] = _clock
    return env.get_template("transcript.j2")


def source_lines(content: str, start: int = 0) -> list[tuple[str, int, str]]:
    """The content from ``start`` as (kind, offset, text) source lines.

    Fences are followed from the top of the content, so a turn resumed inside a code block is
    still code. Blank lines at either end are dropped and runs of them kept to one: they would
    spend page room on nothing. Offsets of the lines kept stay exact.
    """
    out: list[tuple[str, int, str]] = []
    code = False
    line_start = 0
    ends = [(m.start(), m.end()) for m in _BREAK.finditer(content)] + [(len(content), len(content))]
    for line_end, next_start in ends:
        text = content[line_start:line_end]
        fence = _FENCE.match(text) is not None
        kind = "code" if code or fence else "text"
        code ^= fence
        if next_start > start:          # lines wholly before start are on a sealed page already
            begin = max(line_start, start)
            piece = content[begin:line_end]
            if piece.strip():
                out.append((kind, begin, piece))
            elif out and out[-1][2]:
                out.append((kind, begin, ""))
        line_start = next_start
    while out and not out[-1][2]:
        out.pop()
    return out


def records(turns: list[TurnText]) -> list[Record]:
    """Render the template over the turns and read its one-record-per-line output back."""
    context = [{"index": t.index, "role": t.role, "time": t.time, "start": t.start,
                "lines": [{"kind": k, "offset": o, "text": s} for k, o, s in source_lines(t.content, t.start)]}
               for t in turns]
    out = []
    for line in _template().render(turns=context).split("\n"):
        if line:
            kind, turn, offset, text = line.split("|", 3)
            out.append(Record(kind, int(turn), int(offset), text))
    return out


def header(turn: TurnText, continued: bool, dated: bool = True) -> str:
    """The header for a turn as the template writes it; the typesetter asks for it when a turn
    opens a page (dated, since a page must place its first turn in time on its own)."""
    return str(_macros().header(turn, continued, dated))


@lru_cache(maxsize=1)
def _macros():
    return _template().make_module({"turns": []})
