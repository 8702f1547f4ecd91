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


def group_pngs(store: Store, k: SessionKeys, group: int, tier: Tier) -> list[bytes]:
    """The PNGs of the pages that share mosaic canvas ``group`` at a mosaic tier, in order."""
    members = range(group * tier.per_canvas, (group + 1) * tier.per_canvas)
    return [png for png in store.r.hmget(k.png, list(members)) if png]


def canvas(pngs: list[bytes], tier: Tier) -> Image.Image:
    """A mosaic canvas: the pages of one group shrunk into the cells of one encoder view."""
    return renderer.mosaic([renderer.view(png, tier.px) for png in pngs], tier.per_canvas, tier.canvas_px)


def encodes(backend: Backend) -> bool:
    """Whether the backend makes visual tokens (the CPU reader only reads)."""
    return hasattr(backend, "decode_tokens")


def token_unit(page: int, tier: Tier) -> str:
    """What one cache entry covers: a page, or the mosaic canvas its group shares."""
    return f"m{page // tier.per_canvas}" if tier.per_canvas > 1 else str(page)


def visual_tokens(store: Store, k: SessionKeys, page: int, tier: Tier, backend: Backend, ladder: Ladder,
                  ttl_s: int):
    """Visual tokens of a page (or its mosaic canvas) at a tier: cached, or encoded now and cached.

    A cache entry that fails its checksum, or was made by another model revision, is dropped and
    recomputed from the page PNGs: never served.
    """
    from model.visual_tokens import CorruptTokens, VisualTokens

    unit = token_unit(page, tier)
    raw = store.cached_tokens(k, unit, tier.name, backend.revision)
    if raw is not None:
        try:
            cached = VisualTokens.from_bytes(raw)
            if cached.revision == backend.revision and cached.tier == tier.name:
                return cached
        except CorruptTokens:
            pass
        store.drop_tokens(k, unit, tier.name, backend.revision)
    if tier.per_canvas > 1:
        view = PageView(canvas(group_pngs(store, k, page // tier.per_canvas, tier), tier), tier)
    else:
        view = page_view(store.png(k, page), line_boxes(store.lines(k, page)), tier, ladder.page_px)
    tokens = backend.encode([view])[0]
    store.cache_tokens(k, unit, tier.name, backend.revision, tokens.to_bytes(), ttl_s)
    return tokens


def cache_key(tier: Tier, backend: Backend) -> str:
    """What decoded text depends on: for a reader only the image size (crops and g1024 are the same
    1024 px image to it), for a visual-token model the tier itself (crops add local views)."""
    return tier.name if encodes(backend) else f"px{tier.px}"


def reader_id(backend: Backend) -> str:
    return f"{backend.name}@{backend.revision}"


def decode_page(store: Store, k: SessionKeys, page: int, tier: Tier, backend: Backend, ladder: Ladder,
                cached_only: bool = False, ttl_s: int = 0) -> dict | None:
    """Decoded text of a page at a tier: from the cache, or read now and cached.

    Returns a dict {text, lines: [{text, score, turn}], seconds}; None for a gone page, or when
    ``cached_only`` and nothing is cached yet.
    """
    if tier.gone:
        return None
    reader, key = reader_id(backend), cache_key(tier, backend)
    hit = store.cached_decoded(k, page, key, reader)
    if hit is not None or cached_only:
        return hit
    view = page_view(store.png(k, page), line_boxes(store.lines(k, page)), tier, ladder.page_px)
    if encodes(backend) and tier.per_canvas == 1:
        # Read from the cached visual tokens: the encoder runs once per page and tier.
        tokens = visual_tokens(store, k, page, tier, backend, ladder, ttl_s)
        decoded: Decoded = backend.decode_tokens([tokens], [view.lines])[0]
    else:
        decoded = backend.decode([view])[0]
    result = {"text": decoded.text, "seconds": decoded.seconds,
              "lines": [asdict(line) for line in decoded.lines]}
    store.cache_decoded(k, page, key, reader, result)
    return store.cached_decoded(k, page, key, reader)  # whoever cached first wins


def lines_of(decoded: dict) -> list[DecodedLine]:
    return [DecodedLine(**line) for line in decoded.get("lines", [])]
