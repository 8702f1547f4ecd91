"""The typesetter: turns laid out on square pages, as PNG bytes plus where every line sits.

A page is a grid of ``Layout.rows`` lines; a turn that does not fit the rest of a page goes on on
the next, under a header marked as continued, and each page records the exact character offsets
where it begins and ends, so the pages of a turn chain without gap or overlap. The same turns and
layout give the same bytes (fixed fonts, no raqm, fixed PNG settings, no metadata).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from model.base import LineBox
from renderer.faces import Faces, faces
from renderer.transcript import Record, TurnText, header, records
from renderer.wrap import ATOM, Line, wrap

PAD = 2            # pixels around a line's ink in its box: a little room for the reader's crop
PNG_LEVEL = 4      # zlib level: fixed, so bytes are reproducible; 4 is the size/speed knee for text pages


@dataclass(frozen=True)
class Layout:
    """Page geometry. A page is a fixed grid of ``rows`` lines of ``width`` pixels."""
    page_px: int = 1024       # square page side at full resolution
    font_px: int = 12         # body font size in pixels
    line_spacing: float = 1.3
    margin_px: int = 16

    def __post_init__(self) -> None:
        if self.font_px < 1 or self.line_spacing <= 0 or self.margin_px < 0:
            raise ValueError(f"bad layout {self}")
        if self.rows < 2:     # a page must hold a header and one line of its turn
            raise ValueError(f"layout {self} leaves room for {self.rows} lines a page; need 2")

    @property
    def pitch(self) -> float:
        """Distance between the tops of two lines, in pixels."""
        return self.font_px * self.line_spacing

    @property
    def width(self) -> int:
        return self.page_px - 2 * self.margin_px

    @property
    def rows(self) -> int:
        return int((self.page_px - 2 * self.margin_px) / self.pitch + 1e-9)


@dataclass
class Page:
    """One typeset page and exactly which part of which turns it holds."""
    png: bytes                  # full-resolution page, the truth
    lines: list[LineBox]        # every line with ink: turn, box in page px, exact text, kind
    first_turn: int
    first_offset: int           # offset in first_turn's content where this page begins
    last_turn: int
    end_offset: int             # offset in last_turn's content just past this page's last character
    full: bool                  # True: the page ran out of room and text remained for the next


def typeset(turns: list[TurnText], layout: Layout = Layout()) -> list[Page]:
    """Lay the turns out, in order, on as many pages as they need.

    A turn too long for the rest of a page continues on the next; a header is never left alone at
    the foot of a page; the next page's first_offset equals this page's end_offset when a turn
    spans them. The last page has ``full=False``: everything given fit.
    """
    face = faces(layout.font_px)
    by_index = {t.index: t for t in turns}
    lines: list[Line] = []
    for record in records(turns):
        wrapped = wrap(record, face, layout.width)
        # A header is one line: a speaker name too long for it is cut, not spread over the page.
        lines.extend(wrapped[:1] if record.kind == "header" else wrapped)
    pages: list[Page] = []
    rows: list[Line] = []

    def close(last_turn: int, end_offset: int, full: bool) -> None:
        first = rows[0]
        pages.append(_draw(rows, face, layout, first.turn, first.start, last_turn, end_offset, full))

    for i, line in enumerate(lines):
        if line.kind == "header":
            has_body = i + 1 < len(lines) and lines[i + 1].kind != "header"
            if rows and len(rows) + 1 + has_body > layout.rows:
                close(rows[-1].turn, len(by_index[rows[-1].turn].content), True)
                rows = []
            rows.append(line)
            continue
        if len(rows) == layout.rows:
            close(line.turn, line.start, True)
            resumed = Record("header", line.turn, line.start, header(by_index[line.turn], True))
            rows = [wrap(resumed, face, layout.width)[0]]
            if not line.text:     # a blank line at the top of a page would be wasted room
                continue
        rows.append(line)
    if rows:
        close(rows[-1].turn, len(by_index[rows[-1].turn].content), False)
    return pages


def _draw(rows: list[Line], face: Faces, layout: Layout, first_turn: int, first_offset: int,
          last_turn: int, end_offset: int, full: bool) -> Page:
    side = layout.page_px
    image = Image.new("L", (side, side), 255)
    ascent, descent = face.fonts[0].getmetrics()
    # Centre the body face's ascent+descent in each row.
    baseline_in_row = (layout.pitch - ascent - descent) / 2 + ascent
    inked: list[tuple[Line, tuple[int, int, int, int]]] = []
    for row, line in enumerate(rows):
        if not line.text:
            continue
        baseline = round(layout.margin_px + row * layout.pitch + baseline_in_row)
        x = float(layout.margin_px)
        x0 = y0 = side
        x1 = y1 = 0
        # Word by word, advancing exactly as wrap() measured, so a line never outgrows its width.
        for match in ATOM.finditer(line.text):
            atom = match.group()
            stamp = face.stamp(atom, line.kind) if atom[0] != " " else None
            if stamp is not None:
                left, top = round(x) + stamp.dx, baseline + stamp.dy
                image.paste(0, (left, top), stamp.mask)
                x0, y0 = min(x0, left), min(y0, top)
                x1, y1 = max(x1, left + stamp.mask.width), max(y1, top + stamp.mask.height)
            x += face.width(atom, line.kind)
        if x1 > x0:
            inked.append((line, (x0, y0, x1, y1)))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_LEVEL)
    return Page(out.getvalue(), _boxes(inked, side), first_turn, first_offset, last_turn, end_offset, full)


def _boxes(inked: list[tuple[Line, tuple[int, int, int, int]]], side: int) -> list[LineBox]:
    """Ink boxes grown by PAD, but never vertically into a neighbouring line's ink: a reader that
    crops a box sees its line and nothing of the lines above and below."""
    out = []
    for n, (line, (x0, y0, x1, y1)) in enumerate(inked):
        above = inked[n - 1][1][3] if n else 0
        below = inked[n + 1][1][1] if n + 1 < len(inked) else side
        out.append(LineBox(line.turn, (max(0, x0 - PAD), max(y0 - PAD, min(y0, above)),
                                       min(side, x1 + PAD), min(y1 + PAD, max(y1, below))),
                           line.text, line.kind))
    return out
