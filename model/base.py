"""The interface every backend meets. Each backend module stands alone behind it.

A backend reads page views back to text (``decode``) and, if it is a visual-token model, encodes
them (``encode``). Pages come in as PIL images already resized to the tier's view, together with
where the renderer put every line (scaled to the view), so a reader may skip text detection. A
backend on a GPU may instead take the stored pages and make a view itself (``encode_pages``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeGuard, runtime_checkable

from PIL import Image

from optimem.errors import ModelUnavailable  # noqa: F401  (backends raise it from here)
from optimem.model.tiers import Ladder, Tier
from optimem.model.visual_tokens import VisualTokens


@dataclass(frozen=True)
class LineBox:
    """One typeset line: which turn it belongs to and where it sits on the full-resolution page."""
    turn: int
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in page pixels
    text: str = ""                   # exactly what was typeset on this line
    kind: str = "text"               # "header" (speaker and time), "text" or "code"


@dataclass
class DecodedLine:
    text: str
    score: float                    # the reader's own confidence, 0..1
    turn: int | None = None         # from the line box it was read from, when known


@dataclass
class Decoded:
    text: str
    lines: list[DecodedLine] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class PageView:
    """A page at one tier: the image the model sees and the renderer's line boxes scaled to it."""
    image: Image.Image
    tier: Tier
    lines: list[LineBox] = field(default_factory=list)


@dataclass
class PageStack:
    """The stored full-resolution pages behind one view at ``tier`` (one page; a mosaic group's
    pages in cell order), as PNG bytes: for a backend that makes its views itself, on its device
    (``shrinks_pages``; ``encode_pages``)."""
    pngs: list[bytes]
    tier: Tier


@runtime_checkable
class Backend(Protocol):
    name: str        # e.g. "rapidocr", "deepseek-ocr2"
    revision: str    # goes into cache keys: a different model revision never reads another's cache
    ladder: Ladder   # the tiers this backend's family can encode, with their token costs

    def decode(self, views: list[PageView]) -> list[Decoded]: ...

    def encode(self, views: list[PageView]) -> list[VisualTokens]:
        """Visual tokens per view; a reader-only backend raises NotImplementedError."""
        ...


@runtime_checkable
class TokenReader(Backend, Protocol):
    """A backend that makes visual tokens and reads them back (DeepSeek-OCR 2): a page's tokens
    are cached, so a second read skips the vision encoder."""

    def decode_tokens(self, tokens: list[VisualTokens],
                      lines: list[list[LineBox]] | None = None) -> list[Decoded]: ...


class PageShrinker(TokenReader, Protocol):
    """A visual-token backend that makes the tier's views itself, from the stored pages."""

    def encode_pages(self, stacks: list[PageStack]) -> list[VisualTokens]:
        """``encode``'s tokens for the views ``renderer.view`` / ``renderer.mosaic`` would make."""
        ...


def shrinks_pages(backend: Backend) -> TypeGuard[PageShrinker]:
    """Whether the backend takes stored pages and makes the tier's views itself (``encode_pages``,
    now: its ``shrinks_pages``): the caller then skips making them with PIL on a CPU core."""
    return bool(getattr(backend, "shrinks_pages", False)) and hasattr(backend, "encode_pages")


def attribute_turns(lines: list[DecodedLine], boxes: list[LineBox]) -> None:
    """For readers of whole pages: tell which turn each decoded line came from, by its best fuzzy
    match among the typeset lines (a line that matches none well continues the turn before it)."""
    typeset = [(b.text, b.turn) for b in boxes if b.text]
    if not typeset:
        return
    from rapidfuzz import fuzz, process

    texts = [t for t, _ in typeset]
    previous = None
    for line in lines:
        best = process.extractOne(line.text, texts, scorer=fuzz.ratio)
        if best is not None and best[1] >= 60:
            previous = typeset[best[2]][1]
        line.turn = previous
