"""Typefaces: which shipped font draws each character, and what stands in when none can.

The fonts live in ``renderer/fonts/`` (see its README for where they come from), so a page looks
the same on a fresh machine as on this one. Every character goes through ``Faces.glyph``: it is
drawn by the first face of its chain that has it, a control or format character is dropped, and
anything no face has becomes ``FALLBACK``, a glyph that is always there, so an emoji or a rare
script never crashes the typesetter or prints an invisible "tofu" box.

Drawing goes word by word from cached ``Stamp``s: chat repeats its words, and rendering glyphs
with FreeType is most of what a page costs.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

FONTS = Path(__file__).parent / "fonts"
SANS = FONTS / "DejaVuSans.ttf"
MONO = FONTS / "DejaVuSansMono.ttf"
CJK = FONTS / "NotoSansCJKsc-Regular-subset.otf"

FALLBACK = "\u25a1"     # WHITE SQUARE, in DejaVu Sans: a visible mark where a character was
TAB_STOP = 4
_WIDTH_CACHE = 100_000
_STAMP_CACHE = 20_000     # rendered words at about 1 KB each

# Characters that only modify the one before them (variation selectors, emoji skin tones): the
# base is drawn or replaced by FALLBACK already, so one mark per emoji, not one per code point.
_SILENT = frozenset([*range(0xFE00, 0xFE10), *range(0x1F3FB, 0x1F400), *range(0xE0100, 0xE01F0)])

# Face chains by line kind; indices into Faces.fonts.
_CHAINS = {"text": (0, 2), "header": (0, 2), "code": (1, 0, 2)}


@lru_cache(maxsize=None)
def _coverage(path: Path) -> frozenset[int]:
    return frozenset(TTFont(path, lazy=True).getBestCmap())


@dataclass(frozen=True)
class Stamp:
    """A word's ink, rendered once and pasted wherever the word recurs."""
    mask: Image.Image   # ink coverage, 255 = full ink, cropped to the ink
    dx: int             # where the mask's top-left sits relative to the pen position on the baseline
    dy: int


class Faces:
    """The three faces at one pixel size, with per-character and per-word caches."""

    def __init__(self, px: int) -> None:
        # BASIC layout: no dependence on whether libraqm happens to be installed, and faster.
        self.fonts = tuple(ImageFont.truetype(str(path), px, layout_engine=ImageFont.Layout.BASIC)
                           for path in (SANS, MONO, CJK))
        self._covers = tuple(_coverage(path) for path in (SANS, MONO, CJK))
        self._glyphs: dict[tuple[str, str], tuple[str, int]] = {}
        self._widths: dict[tuple[str, str], float] = {}
        self._stamps: dict[tuple[str, str], Stamp | None] = {}
        self.px = px

    def glyph(self, char: str, kind: str) -> tuple[str, int]:
        """What a source character becomes on the page and which face draws it.

        Returns ("", -1) for a character that takes no room (controls, format characters,
        modifiers); a tab is handled by the caller, which knows the column.
        """
        key = (char, kind)
        hit = self._glyphs.get(key)
        if hit is None:
            hit = self._glyphs[key] = self._lookup(char, kind)
        return hit

    def _lookup(self, char: str, kind: str) -> tuple[str, int]:
        code = ord(char)
        if code in _SILENT or unicodedata.category(char) in ("Cc", "Cf"):
            return "", -1
        for face in _CHAINS[kind]:
            if code in self._covers[face]:
                return char, face
        return FALLBACK, 0

    def runs(self, text: str, kind: str) -> list[tuple[int, str]]:
        """Split already-shaped text into (face, text) runs to draw one after another."""
        out: list[tuple[int, str]] = []
        for char in text:
            face = self.glyph(char, kind)[1]
            if out and out[-1][0] == face:
                out[-1] = (face, out[-1][1] + char)
            else:
                out.append((face, char))
        return out

    def width(self, text: str, kind: str) -> float:
        """Advance width of shaped text in pixels, as the runs will be drawn."""
        key = (text, kind)
        hit = self._widths.get(key)
        if hit is None:
            if len(self._widths) > _WIDTH_CACHE:   # a long-lived server meets unbounded vocabulary
                self._widths.clear()
            hit = self._widths[key] = sum(self.fonts[face].getlength(run) for face, run in self.runs(text, kind))
        return hit

    def stamp(self, text: str, kind: str) -> Stamp | None:
        """The ink of shaped text drawn from a pen at (0, 0) on the baseline; None if it has none."""
        key = (text, kind)
        if key in self._stamps:
            return self._stamps[key]
        if len(self._stamps) > _STAMP_CACHE:
            self._stamps.clear()
        # Room around the advance box for overhangs, accents above and descenders below.
        left, baseline = self.px, 2 * self.px
        canvas = Image.new("L", (int(self.width(text, kind)) + 2 * self.px + 1, 3 * self.px), 0)
        draw = ImageDraw.Draw(canvas)
        x = float(left)
        for face, run in self.runs(text, kind):
            draw.text((round(x), baseline), run, fill=255, font=self.fonts[face], anchor="ls")
            x += self.fonts[face].getlength(run)
        box = canvas.getbbox()
        stamp = None if box is None else Stamp(canvas.crop(box), box[0] - left, box[1] - baseline)
        self._stamps[key] = stamp
        return stamp


@lru_cache(maxsize=16)
def faces(px: int) -> Faces:
    return Faces(px)
