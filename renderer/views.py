"""Views of a page: fading by resizing, line boxes that follow, and mosaics of several pages.

Decay is a resize of the full-resolution PNG, never a re-typeset: a faded page shows the same text
in the same places, only smaller, so its line boxes scale with it.
"""
from __future__ import annotations

import io
import math
from dataclasses import replace

from PIL import Image

from optimem.model.base import LineBox


def view(png: bytes, px: int) -> Image.Image:
    """The page resized to ``px`` square (the page itself, decoded, when it is that size already).

    Keeps the page's mode (grayscale "L" for pages from ``typeset``); convert for RGB-only readers.
    """
    if px <= 0:
        raise ValueError(f"a view needs a positive size, not {px}")
    image = Image.open(io.BytesIO(png))
    image.load()
    if image.size == (px, px):
        return image
    # Lanczos keeps strokes crisp when shrinking text; the reading models were trained on such scans.
    return image.resize((px, px), Image.Resampling.LANCZOS)


def scale_lines(lines: list[LineBox], from_px: int, to_px: int) -> list[LineBox]:
    """Line boxes of a ``from_px`` page moved onto its ``to_px`` view, rounded outwards so a box
    still holds all of its line's ink."""
    if from_px == to_px:
        return list(lines)
    f = to_px / from_px

    def scaled(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = box
        return (max(0, math.floor(x0 * f)), max(0, math.floor(y0 * f)),
                min(to_px, math.ceil(x1 * f)), min(to_px, math.ceil(y1 * f)))

    return [replace(line, box=scaled(line.box)) for line in lines]


def mosaic(images: list[Image.Image], per_canvas: int, canvas_px: int) -> Image.Image:
    """Up to ``per_canvas`` page views in a square grid (4: 2x2, 16: 4x4) on one white canvas,
    row by row in the order given; empty cells stay white. A view not of cell size is resized."""
    side = math.isqrt(per_canvas)
    if side * side != per_canvas or not 0 < len(images) <= per_canvas:
        raise ValueError(f"{len(images)} views do not fill a square grid of {per_canvas}")
    cell = canvas_px // side
    mode = "L" if all(image.mode == "L" for image in images) else "RGB"
    canvas = Image.new(mode, (canvas_px, canvas_px), "white")
    for n, image in enumerate(images):
        if image.size != (cell, cell):
            image = image.resize((cell, cell), Image.Resampling.LANCZOS)
        canvas.paste(image.convert(mode), ((n % side) * cell, (n // side) * cell))
    return canvas
