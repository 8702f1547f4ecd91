"""Identifier-like tokens in prose: the strings a reader must give back exactly.

Order numbers, locker codes, emails, URLs, phone numbers and hashes are what people ask a chat
memory to keep, and they are what OCR gets wrong: one misread ``0``/``O`` or ``1``/``l`` and the
string is useless. The typesetter sets the spans found here in the identifier face (DejaVu Serif
with DejaVu Sans Mono's tailed l and dotted 0, glyphs the reader tells apart, six pixels larger on a
row 8 px taller so it survives the mosaic cell; see ``faces.IDENT_FACES``) and everything else in
the body face.

What counts (spans in the text as drawn, never across a line break of the source):

- URLs: ``http(s)://`` or ``www.`` up to a space, quote or wide (CJK) character, trailing
  sentence punctuation left out;
- emails: ``local@domain.tld``;
- numbers with separators (``+1 415-555-0132``, ``2018-05-02``, ``(212) 555-0187``) with at least
  5 digits (6 when a space joins the groups), and runs of 5 or more digits;
- tokens that mix letters and digits (``QX-4817-A2B``, ``9f3a0c7be21d``, ``O0Il1rnmB8S5``), but not
  the ones chat prose is full of: ordinals and decades (``3rd``, ``90s``), times (``5pm``),
  quantities with a unit (``10k``, ``5km``, ``2x``).

Prose (words, short numbers, ``19:38``, ``3.5``) is left alone: it keeps the body face and density.
"""
from __future__ import annotations

import re

_WIDE = "\u1100-\u115f\u2e80-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_URL = re.compile(rf"(?<![A-Za-z0-9@])(?:https?://|www\.)[^\s<>\"'`{_WIDE}]+", re.IGNORECASE)
_URL_TAIL = ".,;:!?)]}'\"*"
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
                    r"(?![A-Za-z0-9])")
# Digit groups joined by one separator each: - . / : or a single space; an optional + and (area code).
_NUMBER = re.compile(r"(?<![A-Za-z0-9.,:/\-])\+?(?:\(\d+\)|\d+)(?:(?:[-./:]| \(?|\) ?)\d+)*(?![A-Za-z0-9])")
_MIXED = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]+(?:[-_.:/#+][A-Za-z0-9]+)*(?![A-Za-z0-9])")
# Letters-with-digits tokens that are ordinary chat prose, not identifiers.
_PROSE = re.compile(
    r"\d{1,2}(?:[:.]\d\d)?(?:am|pm|a|p|h|hrs?)"
    r"|\d+(?:st|nd|rd|th|s|am|pm|a|p|k|m|b|x|ish|yr|yrs|yo|hr|hrs|h|min|mins|sec|secs|lb|lbs|kg|g|mg|km|"
    r"mi|mph|kph|ft|in|cm|mm|ml|l|oz|gb|mb|tb|kb|hz|ghz|mhz|p|d|w|v|c|f|th)"
    r"|(?:mp|ps|xbox|iphone|covid|y|h|f|r|b|w|a|v|s|g|n|t|tv|cd|dvd|u|x|k|e|m|c)\d{1,2}", re.IGNORECASE)


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def find(text: str) -> list[tuple[int, int]]:
    """Identifier spans ``(start, end)`` in ``text``, sorted and non-overlapping."""
    if not any(c.isdigit() or c in "@/." for c in text):     # most chat lines: nothing to look at
        return []
    spans: list[tuple[int, int]] = []

    def add(a: int, b: int) -> None:
        if b > a and all(b <= s or a >= e for s, e in spans):
            spans.append((a, b))

    for m in _URL.finditer(text):
        a, b = m.span()
        while b > a and text[b - 1] in _URL_TAIL:
            b -= 1
        if b - a > len("www.") + 2:
            add(a, b)
    for m in _EMAIL.finditer(text):
        add(*m.span())
    for m in _NUMBER.finditer(text):
        token = m.group()
        need = 6 if " " in token else 5
        if _digits(token) >= need:
            add(*m.span())
    for m in _MIXED.finditer(text):
        token = m.group()
        if (len(token) >= 3 and any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
                and not _PROSE.fullmatch(token)):
            add(*m.span())
    return sorted(spans)
