"""Pages as the model sees them, and what the model makes of them: visual tokens and decoded text.

``Reader`` holds what reading needs (store, backend, ladder, cache TTL), so callers pass a page and
its tier, nothing more. Results are cached in the store per page (or mosaic canvas), tier and
model revision: a page is read once per tier, whoever asks first.
"""
from __future__ import annotations

import io
from dataclasses import asdict

from PIL import Image

from optimem import renderer
from optimem.memory.store import SessionKeys, Store
from optimem.model.base import Backend, Decoded, LineBox, PageView
from optimem.model.tiers import Ladder, Tier


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


def group_members(group: int, tier: Tier) -> range:
    """The pages that share mosaic canvas ``group`` at a mosaic tier."""
    return range(group * tier.per_canvas, (group + 1) * tier.per_canvas)


def encodes(backend: Backend) -> bool:
    """Whether the backend makes visual tokens (the CPU reader only reads)."""
    return hasattr(backend, "decode_tokens")


def token_unit(page: int, tier: Tier) -> str:
    """What one cache entry covers: a page, or the mosaic canvas its group shares."""
    return f"m{page // tier.per_canvas}" if tier.per_canvas > 1 else str(page)


class Reader:
    """Reads a session's pages with one backend; every answer is cached in the store."""

    def __init__(self, store: Store, backend: Backend, ladder: Ladder, ttl_s: int = 0):
        self.store, self.backend, self.ladder, self.ttl_s = store, backend, ladder, ttl_s
        self.encodes = encodes(backend)
        self.id = f"{backend.name}@{backend.revision}"

    def cache_key(self, tier: Tier) -> str:
        """What decoded text depends on: for a reader only the image size (crops and g1024 are the
        same 1024 px image to it), for a visual-token model the tier itself (crops add local views)."""
        return tier.name if self.encodes else f"px{tier.px}"

    def view(self, k: SessionKeys, page: int, tier: Tier) -> PageView:
        lines = line_boxes(self.store.lines(k, page))
        return page_view(self.store.png(k, page), lines, tier, self.ladder.page_px)

    def canvas_png(self, k: SessionKeys, group: int, tier: Tier) -> bytes | None:
        """PNG of mosaic canvas ``group`` at a mosaic tier; None when the group has no pages."""
        pngs = self.store.pngs(k, group_members(group, tier))
        if not pngs:
            return None
        out = io.BytesIO()
        canvas(pngs, tier).save(out, format="PNG")
        return out.getvalue()

    def visual_tokens(self, k: SessionKeys, page: int, tier: Tier):
        """Visual tokens of a page (or its mosaic canvas) at a tier: cached, or encoded now and cached.

        A cache entry that fails its checksum, or was made by another model revision, is dropped and
        recomputed from the page PNGs: never served.
        """
        from optimem.model.visual_tokens import CorruptTokens, VisualTokens  # GPU backends only

        unit, revision = token_unit(page, tier), self.backend.revision
        raw = self.store.cached_tokens(k, unit, tier.name, revision)
        if raw is not None:
            try:
                cached = VisualTokens.from_bytes(raw)
                if cached.revision == revision and cached.tier == tier.name:
                    return cached
            except CorruptTokens:
                pass
            self.store.drop_tokens(k, unit, tier.name, revision)
        if tier.per_canvas > 1:
            pngs = self.store.pngs(k, group_members(page // tier.per_canvas, tier))
            view = PageView(canvas(pngs, tier), tier)
        else:
            view = self.view(k, page, tier)
        tokens = self.backend.encode([view])[0]
        self.store.cache_tokens(k, unit, tier.name, revision, tokens.to_bytes(), self.ttl_s)
        return tokens

    def cached(self, k: SessionKeys, page: int, tier: Tier) -> dict | None:
        """Decoded text of a page at a tier if it was read before, without reading."""
        return None if tier.gone else self.store.cached_decoded(k, page, self.cache_key(tier), self.id)

    def decoded(self, k: SessionKeys, page: int, tier: Tier) -> dict | None:
        """Decoded text of a page at a tier: from the cache, or read now and cached.

        Returns {text, lines: [{text, score, turn}], seconds}; None for a gone page.
        """
        if tier.gone:
            return None
        hit = self.cached(k, page, tier)
        if hit is not None:
            return hit
        view = self.view(k, page, tier)
        if self.encodes and tier.per_canvas == 1:
            # Read from the cached visual tokens: the encoder runs once per page and tier.
            decoded: Decoded = self.backend.decode_tokens([self.visual_tokens(k, page, tier)], [view.lines])[0]
        else:
            decoded = self.backend.decode([view])[0]
        result = {"text": decoded.text, "seconds": decoded.seconds, "lines": [asdict(line) for line in decoded.lines]}
        key = self.cache_key(tier)
        self.store.cache_decoded(k, page, key, self.id, result)
        return self.store.cached_decoded(k, page, key, self.id)  # whoever cached first wins
