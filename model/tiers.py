"""Tiers: the views a page can be kept at, from sharp to faint, and what each costs in visual tokens.

A ladder belongs to a model family, because the family's encoder decides which views exist and
how many tokens each costs (numbers from shared/reference/deepseek-ocr.md). A page's full-resolution
PNG is rendered at ``ladder.page_px``; every tier is a resize of it, never a re-typeset.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tier:
    name: str
    px: int                 # side of the square view of one page (for mosaics: one cell)
    canvas_tokens: float    # visual tokens of the whole view (for mosaics: the whole canvas)
    per_canvas: int = 1     # pages sharing one canvas (4 or 16 for mosaics)
    crops: int = 0          # local 768 px crops on top of the global view
    canvas_px: int = 0      # side of the canvas the encoder sees (0: same as px)

    @property
    def tokens(self) -> float:
        """Visual tokens one page costs at this tier."""
        return self.canvas_tokens / self.per_canvas

    @property
    def gone(self) -> bool:
        return self.px == 0


@dataclass(frozen=True)
class Ladder:
    family: str
    page_px: int
    tiers: tuple[Tier, ...]

    def __getitem__(self, name: str) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(f"unknown tier {name!r}; this ladder ({self.family}) has {self.names()}")

    def names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def index(self, name: str) -> int:
        return self.names().index(self[name].name)

    @property
    def sharpest(self) -> Tier:
        return self.tiers[0]


GONE = Tier("gone", 0, 0)

# DeepSeek-OCR 2: learned queries exist for exactly two views, 1024 px (256 tokens) and 768 px (144),
# plus one separator token per image. A square 1024 page in crop mode is tiled 2x2 into 768 crops.
DEEPSEEK_OCR2 = Ladder("deepseek-ocr2", 1024, (
    Tier("crops", 1024, 256 + 4 * 144 + 1, crops=4),
    Tier("g1024", 1024, 257),
    Tier("v768", 768, 145),
    Tier("mosaic4", 512, 257, per_canvas=4, canvas_px=1024),
    Tier("mosaic16", 256, 257, per_canvas=16, canvas_px=1024),
    GONE,
))

# DeepSeek-OCR (v1) native single views, each with one newline token per row and one separator.
DEEPSEEK_OCR = Ladder("deepseek-ocr", 1280, (
    Tier("large", 1280, 421),
    Tier("base", 1024, 273),
    Tier("small", 640, 111),
    Tier("tiny", 512, 73),
    GONE,
))

LADDERS = {ladder.family: ladder for ladder in (DEEPSEEK_OCR2, DEEPSEEK_OCR)}


def ladder(family: str) -> Ladder:
    try:
        return LADDERS[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(LADDERS)}") from None
