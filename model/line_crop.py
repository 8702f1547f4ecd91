"""One turn's lines cut out of a page view, as one small view a DeepSeek-OCR reader reads on its own.

Reading a turn back should cost what the turn holds (tens of tokens), not a whole page (a thousand):
the turn's line boxes (already scaled to the view) are cropped from the page at the page's own tier
and placed, unscaled, at the top left of the smallest view the model has learned queries for that
holds them (768 px: 145 visual tokens, else 1024 px: 257), on white like the page around them.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from optimem.model.base import LineBox, PageView

VIEWS = (768, 1024)     # DeepSeek-OCR 2's views with learned queries, smallest first
MARGIN = 4              # px kept around the lines, so no glyph touches the crop's edge
TOKENS_PER_LINE = 48    # decode budget per line (a full 1024 px line at 12 px is ~35 tokens)


@dataclass
class LineCrop:
    image: Image.Image          # square, ``px`` a side
    px: int
    lines: list[LineBox]        # the lines read, boxes relative to ``image``
    max_new_tokens: int


def line_crop(view: PageView) -> LineCrop | None:
    """The view's lines on the smallest canvas that holds them; None when the view has no lines."""
    if not view.lines:
        return None
    image = view.image.convert("RGB")
    x0 = max(0, min(b.box[0] for b in view.lines) - MARGIN)
    y0 = max(0, min(b.box[1] for b in view.lines) - MARGIN)
    x1 = min(image.width, max(b.box[2] for b in view.lines) + MARGIN)
    y1 = min(image.height, max(b.box[3] for b in view.lines) + MARGIN)
    region = image.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    px = next((v for v in VIEWS if max(region.size) <= v), VIEWS[-1])
    if max(region.size) > px:   # a view larger than any canvas (not one of ours): shrink to fit
        scale = px / max(region.size)
        region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))),
                               Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (px, px), (255, 255, 255))
    canvas.paste(region, (0, 0))
    moved = [LineBox(b.turn, (b.box[0] - x0, b.box[1] - y0, b.box[2] - x0, b.box[3] - y0), b.text, b.kind)
             for b in view.lines]
    return LineCrop(canvas, px, moved, TOKENS_PER_LINE * len(view.lines) + 8)
