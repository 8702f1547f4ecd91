"""Turns -> page images. Pure functions: the same turns, layout and fonts give the same PNG bytes.

``typeset`` lays turns out on full-resolution pages (PNG plus a box for every line); ``view``
fades a page by resizing it; ``scale_lines`` moves its line boxes onto a view; ``mosaic`` packs
several views onto one canvas.
"""
from optimem.renderer.transcript import TurnText
from optimem.renderer.typeset import Layout, Page, typeset
from optimem.renderer.views import mosaic, scale_lines, view

__all__ = ["Layout", "Page", "TurnText", "mosaic", "scale_lines", "typeset", "view"]
