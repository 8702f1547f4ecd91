"""A page at a tier, as the model sees it, and its decoded text (cached per page, tier and reader)."""
from __future__ import annotations

import io
from dataclasses import asdict

from PIL import Image

import renderer
from model.base import Backend, Decoded, DecodedLine, LineBox, PageView
from model.tiers import Ladder, Tier
from memory.store import SessionKeys, Store


def line_boxes(raw: list[list]) -> list[LineBox]:
    return [LineBox(turn, tuple(box), text, kind) for turn, box, text, kind in raw]


def page_view(png: bytes, lines: list[LineBox], tier: Tier, page_px: int) -> PageView:
    """The page shrunk to the tier's view, with its line boxes scaled alike (for mosaics: one cell)."""
    return PageView(renderer.view(png, tier.px), tier, renderer.scale_lines(lines, page_px, tier.px))


def tier_png(png: bytes, tier: Tier) -> bytes:
    out = io.BytesIO()
    renderer.view(png, tier.px).save(out, format="PNG")
    return out.getvalue()


def canvas(pngs: list[bytes], tier: Tier) -> Image.Image:
    """A mosaic canvas: the pages of one group shrunk into the cells of one encoder view."""
    return renderer.mosaic([renderer.view(png, tier.px) for png in pngs], tier.per_canvas, tier.canvas_px)


def reader_id(backend: Backend) -> str:
    return f"{backend.name}@{backend.revision}"


def decode_page(store: Store, k: SessionKeys, page: int, tier: Tier, backend: Backend, ladder: Ladder,
                cached_only: bool = False) -> dict | None:
    """Decoded text of a page at a tier: from the cache, or read now and cached.

    Returns a dict {text, lines: [{text, score, turn}], seconds}; None for a gone page, or when
    ``cached_only`` and nothing is cached yet.
    """
    if tier.gone:
        return None
    reader = reader_id(backend)
    hit = store.cached_decoded(k, page, tier.name, reader)
    if hit is not None or cached_only:
        return hit
    view = page_view(store.png(k, page), line_boxes(store.lines(k, page)), tier, ladder.page_px)
    decoded: Decoded = backend.decode([view])[0]
    result = {"text": decoded.text, "seconds": decoded.seconds,
              "lines": [asdict(line) for line in decoded.lines]}
    store.cache_decoded(k, page, tier.name, reader, result)
    return store.cached_decoded(k, page, tier.name, reader)  # whoever cached first wins


def lines_of(decoded: dict) -> list[DecodedLine]:
    return [DecodedLine(**line) for line in decoded.get("lines", [])]
