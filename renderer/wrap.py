"""Line breaking by pixel width: a transcript record becomes the lines that fit the page.

Breaks go between words (at spaces) and between any two wide characters (CJK ideographs, kana,
hangul, fullwidth forms), never before closing punctuation or after opening punctuation. A word
wider than the line is cut between characters. Widths come from the faces that will draw the
text, so a line of "W" holds fewer characters than a line of "i" and nothing overruns the margin.

Every line keeps the offset in its turn's content where it starts: the spaces a break swallows
belong to the line before, so consecutive lines (and pages) chain without gap or overlap.

The first line may be given less room than the rest (it shares its row with the turn's header);
a first word that does not fit there, but would on a full line, leaves the first line empty.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from optimem.renderer import identifiers
from optimem.renderer.faces import TAB_STOP, Faces
from optimem.renderer.transcript import Record


@dataclass(frozen=True)
class Line:
    kind: str     # "header", "text" or "code"
    turn: int
    start: int    # offset in the turn's content where this line begins
    text: str     # exactly what is drawn; "" for a blank line
    marks: tuple[tuple[int, int], ...] = ()   # spans of ``text`` set in the identifier face


_WIDE = ("\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf"
         "\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff01-\uff60\uffe0-\uffe6"
         "\U0001f300-\U0001faff\U00020000-\U0003fffd")
WIDE = re.compile(f"[{_WIDE}]")   # one wide character (a full em: CJK, kana, hangul, fullwidth)
_CLOSE = "、。，．：；！？）］｝〉》」』】〕〗〙〛”’…‥・ー々ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ,.:;!?)\\]}%"
_OPEN = "（［｛〈《「『【〔〖〘〚“‘(\\[{"
# An atom is what a break cannot split: a run of spaces, one wide character, or a run of other
# characters (a word), each with the punctuation that must stay on its side.
ATOM = re.compile(f" +|[{_OPEN}]*(?:[{_WIDE}]|[^ {_WIDE}]+)[{_CLOSE}]*")


def shape(text: str, kind: str, faces: Faces) -> tuple[str, list[int]]:
    """Source text as drawn (tabs expanded, controls dropped, unknown characters replaced), with
    the index in ``text`` of every drawn character."""
    drawn: list[str] = []
    where: list[int] = []
    for i, char in enumerate(text):
        if char == "\t":
            n = TAB_STOP - len(drawn) % TAB_STOP
            drawn.extend(" " * n)
            where.extend([i] * n)
            continue
        glyph = faces.glyph(char, kind)[0]
        if glyph:
            drawn.append(glyph)
            where.append(i)
    return "".join(drawn), where


def pieces(text: str, a: int, b: int, marks: tuple[tuple[int, int], ...] | list[tuple[int, int]],
           kind: str) -> list[tuple[str, str]]:
    """``text[a:b]`` as (text, kind) pieces to measure and draw one after another: the parts inside
    ``marks`` in the identifier face ("ident"), the rest in ``kind``."""
    out: list[tuple[str, str]] = []
    for s, e in marks:
        if e <= a or s >= b:
            continue
        s, e = max(s, a), min(e, b)
        if s > a:
            out.append((text[a:s], kind))
        out.append((text[s:e], "ident"))
        a = e
    if a < b:
        out.append((text[a:b], kind))
    return out


def measure(faces: Faces, text: str, a: int, b: int, marks, kind: str) -> float:
    """Advance width of ``text[a:b]`` as drawn with its identifier marks."""
    if not marks:
        return faces.width(text[a:b], kind)
    return sum(faces.width(t, k) for t, k in pieces(text, a, b, marks, kind))


def _shifted(marks: list[tuple[int, int]], i: int, j: int) -> tuple[tuple[int, int], ...]:
    """The marks that fall in ``[i, j)``, cut to it and counted from ``i``."""
    return tuple((max(s, i) - i, min(e, j) - i) for s, e in marks if s < j and e > i)


def wrap(record: Record, faces: Faces, width: float, first_width: float | None = None) -> list[Line]:
    """The record broken into lines no wider than ``width`` pixels, the first no wider than
    ``first_width`` (default ``width``); indentation is kept on the first line.

    With a narrower first line, a first word that does not fit it but fits a full line moves to
    the second line and the first comes back empty (``text == ""``, at the record's offset).
    """
    kind = record.kind
    text, where = shape(record.text, kind, faces)
    if not text.strip():
        return [Line(kind, record.turn, record.offset, "")]
    marks = identifiers.find(text) if kind == "text" and faces.marks else []
    spans: list[tuple[int, int]] = []
    begin = end = 0          # the current line is text[begin:end], end just past its last ink
    x = 0.0
    room = width if first_width is None else min(width, first_width)   # for the line being filled
    for match in ATOM.finditer(text):
        a, b = match.span()
        if text[a] == " ":   # spaces never force a break; at a break they end the line before
            x += measure(faces, text, a, b, marks, kind)
            continue
        w = measure(faces, text, a, b, marks, kind)
        if x + w <= room:
            x, end = x + w, b
            continue
        if end > begin or (room < width and w <= width):
            spans.append((begin, end))      # (empty only for a first line too short for the first word)
            begin, end, x, room = a, a, 0.0, width
            if w <= width:
                x, end = w, b
                continue
        for k in range(a, b):            # a word longer than the line: cut between characters
            cw = measure(faces, text, k, k + 1, marks, kind)
            if x + cw > room:
                if end > begin or room < width:   # (a first line with no room even for a character stays empty)
                    spans.append((begin, end))
                begin, end, x, room = k, k, 0.0, width   # (indentation that leaves no room is dropped)
            x, end = x + cw, k + 1
    spans.append((begin, end))
    return [Line(kind, record.turn, record.offset if n == 0 else record.offset + where[i], text[i:j],
                 _shifted(marks, i, j))
            for n, (i, j) in enumerate(spans)]
