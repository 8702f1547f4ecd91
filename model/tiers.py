"""Tiers: the views a page can be kept at, from sharp to faint, and what each costs in visual tokens.

A ladder belongs to a model family, because the family's encoder decides which views exist and
how many tokens each costs (numbers from shared/reference/deepseek-ocr.md). A page's full-resolution
PNG is rendered at ``ladder.page_px``; every tier is a resize of it, never a re-typeset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tier:
    name: str
    px: int                 # side of the square view of one page (for mosaics: one cell)
    canvas_tokens: float    # visual tokens of the whole view (for mosaics: the whole canvas)
    per_canvas: int = 1     # pages sharing one canvas (4 or 16 for mosaics)
    crops: int = 0          # local 768 px crops on top of the global view
    canvas_px: int = 0      # side of the canvas the encoder sees (0: same as px)
    detail: str = ""        # OpenAI image "detail" the view must be sent with for its cost to hold ("": none)

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

    @property
    def faintest_legible(self) -> Tier:
        """The faintest view that still reads (``LEGIBLE_SCALE``): a budget moves text onto pages
        rather than fade pages below it."""
        views = [t for t in self.tiers if not t.gone]
        return [t for t in views if t.px / self.page_px >= LEGIBLE_SCALE - 1e-9][-1] if views else GONE


GONE = Tier("gone", 0, 0)

# The smallest view, as a share of the page's side, that the CPU reader reads back at >= 97% of
# characters at the default font (12 px on a 1024 px page): mosaic4's 512 px cell reads 99.7%,
# mosaic16's 256 px 23% (docs/lab: `optimem lab --budgets`, "Legible tiers").
LEGIBLE_SCALE = 0.5

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



def qwen_vl_tokens(px: int) -> int:
    """Qwen2.5-VL: 14 px ViT patches merged 2x2, so one LLM token per 28x28 px, plus the
    <|vision_start|> and <|vision_end|> tokens around the image."""
    return (px // 28) ** 2 + 2


# Qwen2.5-VL takes any size that is a multiple of 28 (its processor rounds to one), so the views are
# single pages at shrinking multiples of 28. Cost grows with area, so a mosaic saves nothing over a
# single small view: no mosaic tiers.
QWEN25_VL = Ladder("qwen2.5-vl", 1008, tuple(
    Tier(f"q{px}", px, qwen_vl_tokens(px)) for px in (1008, 784, 560, 392)) + (GONE,))


def openai_tile_tokens(px: int, detail: str = "high") -> int:
    """OpenAI's hosted vision models (GPT-4o, GPT-4.1 family): "low" detail costs 85 tokens at 512 px
    whatever the size; "high" scales the image to fit 2048 px, then its short side down to 768 px,
    and costs 85 + 170 per 512 px tile covering it."""
    if detail == "low":
        return 85
    side = min(px, 2048, 768)  # a square page: both rules leave one side, at most 768
    tiles = math.ceil(side / 512) ** 2
    return 85 + 170 * tiles


# Pages at 768 px (a larger page costs the same: it is scaled to 768 first). High detail: 2x2 tiles,
# then one tile at 512; low detail: 85 flat, so four pages sharing one low-detail canvas cost 21 each.
OPENAI_TILES = Ladder("openai-tiles", 768, (
    Tier("tiles4", 768, openai_tile_tokens(768), detail="high"),
    Tier("tile1", 512, openai_tile_tokens(512), detail="high"),
    Tier("low", 512, openai_tile_tokens(512, "low"), detail="low"),
    Tier("low4", 256, openai_tile_tokens(512, "low"), per_canvas=4, canvas_px=512, detail="low"),
    GONE,
))

LADDERS = {ladder.family: ladder for ladder in (DEEPSEEK_OCR2, DEEPSEEK_OCR, QWEN25_VL, OPENAI_TILES)}


def ladder(family: str) -> Ladder:
    try:
        return LADDERS[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(LADDERS)}") from None
