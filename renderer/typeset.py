"""The typesetter: turns laid out on square pages, as PNG bytes plus where every line sits.

A page is a grid of ``Layout.rows`` rows. A turn's header is a short prefix in gray ink on the row
of its first line ("user 19:38: hello?"), so a one-line chat turn costs one row; the first line
wraps in the room the prefix leaves. A turn that opens with code (whose indentation must stay
exact), or whose header would take more than half the row, gets the header on a row of its own.
A turn that does not fit the rest of a page goes on on the next, under a header marked as
continued, and each page records the exact character offsets where it begins and ends, so the
pages of a turn chain without gap or overlap. The first turn on a page is always dated. The same
turns and layout give the same bytes (fixed fonts, no raqm, fixed PNG settings, no metadata).

A row with a prefix gives two line boxes, a "header" one around the prefix's ink and a "text" one
around the body's, side by side without overlap, so a reader crops and reads them apart.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

from optimem.model.base import LineBox
from optimem.renderer.faces import IDENT_DEFAULT, IDENT_FACES, Faces, faces
from optimem.renderer.transcript import Record, TurnText, header, records
from optimem.renderer.wrap import ATOM, Line, measure, pieces, wrap

PAD = 2            # pixels around a line's ink in its box: a little room for the reader's crop
HEADER_INK = 96    # gray level of header prefixes: set apart from the black body, still high contrast
PNG_LEVEL = 4      # zlib level: fixed, so bytes are reproducible; 4 is the size/speed knee for text pages


@dataclass(frozen=True)
class Layout:
    """Page geometry. A page is a fixed grid of ``rows`` rows of ``width`` pixels."""
    page_px: int = 1024       # square page side at full resolution
    font_px: int = 12         # body font size in pixels
    line_spacing: float = 1.3
    margin_px: int = 16
    ident: str = IDENT_DEFAULT  # how identifiers in prose are set (faces.IDENT_FACES; "off": as prose)

    def __post_init__(self) -> None:
        if self.font_px < 1 or self.line_spacing <= 0 or self.margin_px < 0 or self.ident not in IDENT_FACES:
            raise ValueError(f"bad layout {self}")
        if self.rows < 2 or not self.fits(2, 2):   # a page must hold a header row and one line of its turn
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
        """Rows a page holds when none of them holds an identifier."""
        return int((self.page_px - 2 * self.margin_px) / self.pitch + 1e-9)

    @property
    def lead(self) -> int:
        """Extra pixels of height on a row that holds an identifier (``faces.Ident.lead``)."""
        entry = IDENT_FACES[self.ident]
        return entry.lead if entry is not None else 0

    def top(self, n: int, tall: int) -> float:
        """Where row ``n`` begins below the top margin, with ``tall`` identifier rows above it."""
        return n * self.pitch + tall * self.lead

    def fits(self, n: int, tall: int) -> bool:
        """Whether ``n`` rows, ``tall`` of them holding identifiers, fit on a page."""
        return n + tall * self.lead / self.pitch <= (self.page_px - 2 * self.margin_px) / self.pitch + 1e-9


@dataclass
class Page:
    """One typeset page and exactly which part of which turns it holds."""
    png: bytes                  # full-resolution page, the truth
    lines: list[LineBox]        # every line with ink: turn, box in page px, exact text, kind;
                                # a row with a header prefix gives a "header" box, then a "text" one
    first_turn: int
    first_offset: int           # offset in first_turn's content where this page begins
    last_turn: int
    end_offset: int             # offset in last_turn's content just past this page's last character
    full: bool                  # True: the page ran out of room and text remained for the next


@dataclass(frozen=True)
class Row:
    """One row of a page: a header prefix at the margin, a line of the turn, or both side by side."""
    head: Line | None
    body: Line | None = None
    indent: int = 0             # pixels from the margin to where ``body`` begins

    @property
    def line(self) -> Line:
        """The row's first line (a row holds a head, a body or both)."""
        line = self.head or self.body
        assert line is not None, "a row holds a line"
        return line

    @property
    def turn(self) -> int:
        return self.line.turn

    @property
    def start(self) -> int:
        return self.line.start

    @property
    def tall(self) -> bool:
        """Whether the row holds an identifier, and so is ``Layout.lead`` pixels taller."""
        return self.body is not None and bool(self.body.marks)


def indent(face: Faces, head: str) -> int:
    """Where a row's body begins after its header prefix: past the prefix, a space and room for
    both boxes' padding, so the header's box and the body's never overlap."""
    return math.ceil(face.width(head, "header") + face.width(" ", "text")) + 2 * PAD


def typeset(turns: list[TurnText], layout: Layout = Layout(), full_only: bool = False) -> list[Page]:
    """Lay the turns out, in order, on as many pages as they need.

    A turn too long for the rest of a page continues on the next; a header is never left alone at
    the foot of a page; the next page's first_offset equals this page's end_offset when a turn
    spans them. The last page has ``full=False``: everything given fit. ``full_only`` leaves that
    last page out, undrawn: a caller that seals only full pages need not pay for its PNG.
    """
    face = faces(layout.font_px, layout.ident)
    width = layout.width
    by_index = {t.index: t for t in turns}
    pages: list[Page] = []
    rows: list[Row] = []
    lead = face.lead > 0        # identifier rows are taller: count them

    def fits(*more: bool) -> bool:
        """Whether rows with these tallnesses still fit below the page's rows so far."""
        tall = sum(r.tall for r in rows) + sum(more) if lead else 0
        return layout.fits(len(rows) + len(more), tall)

    def close(last_turn: int, end_offset: int, full: bool) -> None:
        first = rows[0]
        pages.append(_draw(rows, face, layout, first.turn, first.start, last_turn, end_offset, full))
        rows.clear()

    def head_row(text: str, turn: int, offset: int, record: Record | None) -> tuple[Row, list[Line]]:
        """The header's row, with the record's first line beside it when that is prose, and the
        record's lines left for the rows below."""
        # A header is one line: a speaker name too long for it is cut, not spread over the page.
        head = wrap(Record("header", turn, offset, text), face, width)[0]
        if record is None:
            return Row(head), []
        room = indent(face, head.text)
        if record.kind == "text" and room <= width / 2:
            lines = wrap(record, face, width, width - room)
            if lines[0].text:
                return Row(head, lines[0], room), lines[1:]
            lines = lines[1:]     # the first word needs a full row (or the line is blank)
        else:
            lines = wrap(record, face, width)
        if lines and not lines[0].text:     # a blank line just under a header would be wasted room
            lines = lines[1:]
        return Row(head), lines

    for head, body in _by_turn(records(turns)):
        turn = by_index[head.turn]
        first = body[0] if body else None
        row, lines = head_row(head.text, head.turn, head.offset, first)
        # A header with its own row needs the next one too: never a header alone at a page's foot.
        need = (row.tall, bool(lines and lines[0].marks and lead)) if row.body is None and body else (row.tall,)
        if rows and not fits(*need):
            close(rows[-1].turn, len(by_index[rows[-1].turn].content), True)
        if not rows:      # the first turn on a page says its date, whatever the turn before it said
            dated = header(turn, head.offset > 0)
            if dated != head.text:
                row, lines = head_row(dated, head.turn, head.offset, first)
        rows.append(row)
        for n, record in enumerate(body):
            if n:
                lines = wrap(record, face, width)
            i = 0
            while i < len(lines):
                line = lines[i]
                i += 1
                if not fits(bool(line.marks) and lead):
                    close(line.turn, line.start, True)
                    resumed = header(turn, True)
                    if record.kind == "text":
                        # The rest of this source line goes on beside the continued header, rewrapped.
                        rest = record.text[line.start - record.offset:]
                        row, lines = head_row(resumed, line.turn, line.start,
                                              Record(record.kind, record.turn, line.start, rest))
                        i = 0
                    else:   # code goes on under it, wrapped as it was
                        row = head_row(resumed, line.turn, line.start, None)[0]
                        if line.text:    # (a blank line at the top of a page would be wasted room)
                            i -= 1
                    rows.append(row)
                    continue
                rows.append(Row(None, line))
    if rows and not full_only:
        close(rows[-1].turn, len(by_index[rows[-1].turn].content), False)
    return pages


def _by_turn(stream: list[Record]) -> list[tuple[Record, list[Record]]]:
    """Records grouped by turn: each turn's header record and its body records."""
    out: list[tuple[Record, list[Record]]] = []
    for record in stream:
        if record.kind == "header":
            out.append((record, []))
        else:
            out[-1][1].append(record)
    return out


def _draw(rows: list[Row], face: Faces, layout: Layout, first_turn: int, first_offset: int,
          last_turn: int, end_offset: int, full: bool) -> Page:
    side = layout.page_px
    image = Image.new("L", (side, side), 255)
    ascent, descent = face.fonts[0].getmetrics()
    # Centre the body face's ascent+descent in each row.
    baseline_in_row = (layout.pitch - ascent - descent) / 2 + ascent
    # A taller identifier row shares its extra height above and below the baseline as the
    # identifier face shares its own ascent and descent.
    i_ascent, i_descent = face.fonts[3].getmetrics()
    shift = round(face.lead * i_ascent / (i_ascent + i_descent))
    inked: list[list[tuple[Line, tuple[int, int, int, int]]]] = []
    tall = 0
    for n, row in enumerate(rows):
        if row.tall and face.lead:
            baseline = round(layout.margin_px + layout.top(n, tall) + baseline_in_row + shift)
            tall += 1
        else:
            baseline = round(layout.margin_px + layout.top(n, tall) + baseline_in_row)
        drawn = []
        for line, x, ink in ((row.head, 0, HEADER_INK), (row.body, row.indent, 0)):
            if line is not None and line.text:
                box = _line(image, face, line, layout.margin_px + x, baseline, ink)
                if box is not None:
                    drawn.append((line, box))
        if drawn:
            inked.append(drawn)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_LEVEL)
    return Page(out.getvalue(), _boxes(inked, side), first_turn, first_offset, last_turn, end_offset, full)


def _line(image: Image.Image, face: Faces, line: Line, x: float, baseline: int,
          ink: int) -> tuple[int, int, int, int] | None:
    """Draw one line from pen position ``x`` on ``baseline``; the box of its ink, if any."""
    side = image.width
    x0 = y0 = side
    x1 = y1 = 0
    # Word by word, advancing exactly as wrap() measured, so a line never outgrows its width.
    text = line.text
    for match in ATOM.finditer(text):
        a, b = match.span()
        if text[a] == " ":
            x += measure(face, text, a, b, line.marks, line.kind)
            continue
        for part, kind in pieces(text, a, b, line.marks, line.kind):
            stamp = face.stamp(part, kind)
            if stamp is not None:
                left, top = round(x) + stamp.dx, baseline + stamp.dy
                image.paste(ink, (left, top), stamp.mask)
                x0, y0 = min(x0, left), min(y0, top)
                x1, y1 = max(x1, left + stamp.mask.width), max(y1, top + stamp.mask.height)
            x += face.width(part, kind)
    return (x0, y0, x1, y1) if x1 > x0 else None


def _boxes(inked: list[list[tuple[Line, tuple[int, int, int, int]]]], side: int) -> list[LineBox]:
    """Ink boxes grown by PAD, but never vertically into a neighbouring row's ink, nor sideways
    into the other box on their row: a reader that crops a box sees its line and nothing else."""
    out: list[LineBox] = []
    for n, row in enumerate(inked):
        above = max(box[3] for _, box in inked[n - 1]) if n else 0
        below = min(box[1] for _, box in inked[n + 1]) if n + 1 < len(inked) else side
        grown = [[max(0, x0 - PAD), max(y0 - PAD, min(y0, above)),
                  min(side, x1 + PAD), min(y1 + PAD, max(y1, below))] for _, (x0, y0, x1, y1) in row]
        for k in range(1, len(row)):     # side by side: split any overlap between the two inks
            left, right = grown[k - 1], grown[k]
            if left[2] > right[0]:
                left[2] = right[0] = max(row[k - 1][1][2], min(row[k][1][0], (left[2] + right[0]) // 2))
        out.extend(LineBox(line.turn, (box[0], box[1], box[2], box[3]), line.text, line.kind)
                   for (line, _), box in zip(row, grown))
    return out
