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
from typing import NamedTuple

from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

FONTS = Path(__file__).parent / "fonts"
SANS = FONTS / "DejaVuSans.ttf"
MONO = FONTS / "DejaVuSansMono.ttf"
CJK = FONTS / "NotoSansCJKsc-Regular-subset.otf"
SERIF = FONTS / "DejaVuSerif.ttf"


class Ident(NamedTuple):
    """How identifiers are set: a face, a size step over the body's, and how many pixels taller a
    row that holds one is than the layout's pitch (so a larger face's ink stays off its neighbours)."""
    path: Path
    step: int = 0
    lead: int = 0
    alts: tuple[tuple[Path, str], ...] = ()    # (face, characters): other faces, same size, for those characters


# How identifiers in prose (``identifiers.find``) are set: "name": Ident(face, size step, row lead,
# other faces for some characters). Chosen by ``bench/identifiers.py`` (CPU reader, the lab's layout:
# 12 px, 1.15 line spacing; exact read-back at g1024 / v768 / mosaic4 of 288 identifiers planted in
# a real chat, seeds 20-23; seeds 14-17 were kept back to confirm the choice, docs/lab):
#   off (as prose)                        85.1 / 85.1 / 66.3 %
#   serif+4_r5  (the previous default)    92.0 / 91.3 / 86.5 %
#   serif+6_r8                            93.4 / 92.4 / 87.2 %
#   serif+6_r8+mono_l0  (the default)     99.3 / 99.0 / 95.8 %
# DejaVu Serif tells I from 1 (serifs, a flag) and sets a round O; six pixels larger it survives the
# 512 px mosaic cell, where pages live under the default curve. What it cannot do is an l among
# digits: its l has serifs like its 1 and the reader, primed by the digits, reads 1 (or I). So l
# and 0 come from DejaVu Sans Mono, whose l has a tail to the right and whose 0 has a dot: random
# O0Il1rnmB8S5 strings went from 27 to 46 of 48 at g1024. Faces tried for those two glyphs
# (not shipped): Hack's l reads a shade better (99.7 / 99.7 / 96.5 %: one or two more of 288),
# Go's l reads "lI" as "U" and its slashed 0 as a theta in the cell, JetBrains Mono's l is read as 1
# after a 0, Noto Sans Mono's l fails outright. A face larger than the body needs a taller row
# (``lead``): at 1.15 line spacing its ink would reach the rows above and below. One such row fits
# the slack a 1024 px page's grid leaves, so real chitchat, with an identifier row every few pages,
# loses 0.01% of its tokens a page.
# "off" sets identifiers as the prose around them: the pages before issue 14, byte for byte.
IDENT_FACES: dict[str, Ident | None] = {
    "off": None,
    "mono": Ident(MONO),
    "serif": Ident(SERIF),
    "serif+1": Ident(SERIF, 1),
    "serif+2_r3": Ident(SERIF, 2, 3),
    "serif+2_r4": Ident(SERIF, 2, 4),
    "serif+3_r4": Ident(SERIF, 3, 4),
    "serif+4_r5": Ident(SERIF, 4, 5),
    "serif+6_r8": Ident(SERIF, 6, 8),
    "serif+6_r8+mono_l0": Ident(SERIF, 6, 8, ((MONO, "l0"),)),     # with the monospace's tailed l and dotted 0
    "sans+2_r3": Ident(SANS, 2, 3),
    "sans+3_r4": Ident(SANS, 3, 4),
    "sans+4_r5": Ident(SANS, 4, 5),
    "mixed+3_r4": Ident(SANS, 3, 4, ((SERIF, "Il"),)),    # the body face, with serif I and l
}
IDENT_DEFAULT = "serif+6_r8+mono_l0"


def dotted_zero(ident: str) -> bool:
    """Whether identifiers set by ``ident`` draw 0 as DejaVu Sans Mono's, with a dot inside: the
    glyph a reader of a small view takes for a theta or an at sign (``identifiers.restore_zeros``)."""
    entry = IDENT_FACES.get(ident)
    if entry is None:
        return False
    return next((alt for alt, chars in entry.alts if "0" in chars), entry.path) == MONO


FALLBACK = "\u25a1"     # WHITE SQUARE, in DejaVu Sans: a visible mark where a character was
TAB_STOP = 4
_WIDTH_CACHE = 100_000
_STAMP_CACHE = 20_000     # rendered words at about 1 KB each

# Characters that only modify the one before them (variation selectors, emoji skin tones): the
# base is drawn or replaced by FALLBACK already, so one mark per emoji, not one per code point.
_SILENT = frozenset([*range(0xFE00, 0xFE10), *range(0x1F3FB, 0x1F400), *range(0xE0100, 0xE01F0)])

# Face chains by line kind; indices into Faces.fonts.
_CHAINS = {"text": (0, 2), "header": (0, 2), "code": (1, 0, 2), "ident": (3, 0, 2)}
_ALTS = 4   # the identifier's other faces (``Ident.alts``) follow the four above


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
    """The faces at one pixel size (body, code, CJK, identifier), with per-character and per-word
    caches. ``ident`` names the identifier face (``IDENT_FACES``); with "off" there is none and
    ``marks`` is False: identifiers are set as prose."""

    def __init__(self, px: int, ident: str = IDENT_DEFAULT) -> None:
        if ident not in IDENT_FACES:
            raise ValueError(f"unknown identifier face {ident!r}; choose one of {sorted(IDENT_FACES)}")
        path, step, lead, alts = IDENT_FACES[ident] or Ident(MONO)
        self.marks = IDENT_FACES[ident] is not None
        self.lead = lead        # extra pixels of height on a row that holds an identifier
        self.ident = ident
        # BASIC layout: no dependence on whether libraqm happens to be installed, and faster.
        self.fonts = tuple(ImageFont.truetype(str(p), size, layout_engine=ImageFont.Layout.BASIC)
                           for p, size in ((SANS, px), (MONO, px), (CJK, px), (path, px + step),
                                           *((alt, px + step) for alt, _ in alts)))
        self._covers = tuple(_coverage(p) for p in (SANS, MONO, CJK, path))
        # which other face draws a character of an identifier
        self._alt = {c: _ALTS + i for i, (alt, chars) in enumerate(alts) for c in chars if ord(c) in _coverage(alt)}
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
        if kind == "ident" and char in self._alt:
            return char, self._alt[char]
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
            x = ink = 0.0
            for face, run in self.runs(text, kind):
                x += self.fonts[face].getlength(run)
            if kind == "ident":     # its ink may overhang its advance (serifs, bold): count it, so no line overruns
                left, ink = self._overhang(text)
                x = max(x, ink) + left
            hit = self._widths[key] = x
        return hit

    def _overhang(self, text: str) -> tuple[float, float]:
        """Identifier text's ink left of its pen (as a positive width) and its ink's right edge."""
        x = left = ink = 0.0
        for face, run in self.runs(text, "ident"):
            box = self.fonts[face].getbbox(run, anchor="ls")
            left, ink = max(left, -(x + box[0])), max(ink, x + box[2])
            x += self.fonts[face].getlength(run)
        return left, ink

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
        x = float(left) + (self._overhang(text)[0] if kind == "ident" else 0)
        for face, run in self.runs(text, kind):
            draw.text((round(x), baseline), run, fill=255, font=self.fonts[face], anchor="ls")
            x += self.fonts[face].getlength(run)
        box = canvas.getbbox()
        stamp = None if box is None else Stamp(canvas.crop(box), box[0] - left, box[1] - baseline)
        self._stamps[key] = stamp
        return stamp


@lru_cache(maxsize=16)
def faces(px: int, ident: str = IDENT_DEFAULT) -> Faces:
    return Faces(px, ident)
