"""The dotted zero's probability, gathered before the recogniser's CTC decode picks a character.

In a small view (the 512 px mosaic cell) the identifier face's dotted zero (``renderer.faces``) is
one shape the recogniser has no single name for: its probability at a frame is spread over ``0``,
``@``, ``θ``, ``®``, ``©``, so a blank or a round ``O`` with less probability than all of them
together wins the frame, and the zero is dropped ("1lVO01bz" read "1lVO1bz") or read ``O``. Here
those characters count as one class: where their summed probability, weighed at ``MARGIN``, beats
the frame's best character, the frame goes to the most probable of them. What it then
reads as (an ``@`` between letters, say) goes back to ``0`` only inside identifiers, by
``renderer.identifiers.restore``, as before. Frames where one character is clearly best are
untouched, so prose reads as it did, and so are lines with Greek in them, where a theta is a letter.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from optimem.renderer.identifiers import GREEK, ZERO_MISREADS

ZERO_LIKE = "0" + ZERO_MISREADS
# The class's summed probability is weighed at twice its value against the frame's best
# character, so a round O or a blank that wins by less than that loses the frame. Chosen on the
# identifier probe (bench/identifiers_unseen.py, every part but held7, mosaic4): exact 749 of 784
# without gathering, 754 at 1x, 757 at 1.5x, 758 at 2x, 757 at 3x, where prose precision first
# moved (0.9887 -> 0.9884 on tune's first pages; at 2x and below it does not move).
MARGIN = 2.0


def gather_zeros(preds: np.ndarray, zero_ids: np.ndarray, margin: float = MARGIN,
                 skip_ids: np.ndarray | None = None) -> np.ndarray:
    """``preds`` (batch, frames, characters) with frames won by the zero-like class given to its
    best member, except in lines whose plain decode has any of ``skip_ids`` (Greek letters: there
    a theta is a letter). Returns ``preds`` itself when no frame changes."""
    zeros = preds[..., zero_ids]
    mass = zeros.sum(-1)
    best = preds.max(-1)
    won = preds.argmax(-1)
    take = (mass * margin > best) & ~np.isin(won, zero_ids)
    if skip_ids is not None and skip_ids.size:
        take &= ~np.isin(won, skip_ids).any(-1, keepdims=True)
    if not take.any():
        return preds
    out = np.array(preds, dtype=np.float32, copy=True)
    member = zero_ids[zeros.argmax(-1)]
    b, f = np.nonzero(take)
    out[b, f, member[b, f]] = mass[b, f] * margin + 1e-6     # the frame's best now, by construction
    return out


class ZeroAwareDecode:
    """rapidocr's CTC decoder with ``gather_zeros`` applied to the recogniser's output first."""

    def __init__(self, decoder: Any, margin: float = MARGIN) -> None:
        self.decoder = decoder
        self.margin = margin
        self.active = True      # the reader turns it off for views large enough to show the dot
        chars = list(decoder.character)
        self.zero_ids = np.array([chars.index(c) for c in ZERO_LIKE if c in chars], dtype=np.int64)
        # Greek letters but the thetas (``identifiers.restore_zeros`` leaves Greek lines alone too)
        self.greek_ids = np.array([i for i, c in enumerate(chars) if GREEK.match(c) and c not in "θΘ"],
                                  dtype=np.int64)

    def __call__(self, preds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if self.active:
            preds = gather_zeros(np.asarray(preds), self.zero_ids, self.margin, self.greek_ids)
        return self.decoder(preds, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)
