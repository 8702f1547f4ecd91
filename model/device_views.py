"""A tier's view made on the model's device from the stored full-resolution pages: bit for bit the
pixels ``renderer.view`` and ``renderer.mosaic`` make with PIL on a CPU core.

A worker encoding pages spends more CPU on making views than the GPU spends encoding them: PIL's
Lanczos shrink of a 1024 px page is ~8 ms on one core here, a mosaic4 canvas (four shrinks) ~50 ms,
a mosaic16 one ~160 ms, against the 200 canvases/s issue 20 asks of the encoder. Here only the PNG
decode (~4 ms a page) stays on the CPU, on the caller's thread; the shrink and the canvas happen on
the device, for a whole batch at once.

Why it is the same pixels: PIL resizes an 8-bit image in two passes (every row, then every column),
each output pixel a sum of source pixels times fixed-point weights (22 fractional bits), rounded
down with a half added and clipped to 0..255 after each pass. Each pass is therefore a matrix of
those integer weights; applied as a float64 matmul every product and sum is an integer below 2^53,
so exact, and the rounding is PIL's (``tests/test_deepseek_ocr2.py`` compares every pixel).
"""
from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from optimem.model.tiers import Tier

PRECISION_BITS = 22          # PIL's fixed point for 8-bit resampling: 32 - 8 - 2
LANCZOS_SUPPORT = 3.0
WHITE = 255                  # an empty mosaic cell (renderer.mosaic's canvas)
CHUNK = 64                   # pages shrunk at once: 64 x 1024 x 1024 float64 is 0.5 GiB


def decoded(png: bytes) -> np.ndarray:
    """A stored page as a uint8 ``[H, W]`` array. Pages are typeset in grayscale ("L"); any other
    mode is refused rather than converted (its PIL view would keep its colours)."""
    image = Image.open(io.BytesIO(png))
    if image.mode != "L":
        raise ValueError(f"device views take grayscale pages, this one is {image.mode!r}")
    return np.asarray(image)


def _lanczos(x: float) -> float:
    if not -LANCZOS_SUPPORT <= x < LANCZOS_SUPPORT:
        return 0.0

    def sinc(v: float) -> float:
        return 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)
    return sinc(x) * sinc(x / 3)


@lru_cache(maxsize=16)
def weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` integer weights of PIL's Lanczos resize along one axis (its precompute_coeffs
    and normalize_coeffs_8bpc, in the same double arithmetic, truncating like C's int cast)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, ss = LANCZOS_SUPPORT * filterscale, 1.0 / filterscale
    out = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = [_lanczos((x + lo - center + 0.5) * ss) for x in range(hi - lo)]
        total = sum(k)
        for x, w in enumerate(k):
            w = w / total if total != 0.0 else w
            out[xx, lo + x] = int(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5))
    return out


def _pass(values: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """One PIL pass along the last axis: integer-weighted sums (a matmul with a banded matrix:
    dense is faster than gathering the taps, on a GPU and in BLAS alike), + half, floor, clipped."""
    w = torch.from_numpy(weights(in_size, out_size)).to(values.device)
    summed = values @ w.T + float(1 << (PRECISION_BITS - 1))
    return torch.floor(summed / float(1 << PRECISION_BITS)).clamp_(0, 255)


def shrink(pages: torch.Tensor, px: int) -> torch.Tensor:
    """uint8 ``[N, H, W]`` pages -> uint8 ``[N, px, px]``, as ``renderer.view`` makes them."""
    n, h, w = pages.shape
    if (h, w) == (px, px):
        return pages
    # float64 keeps PIL's integer arithmetic exact; devices without it (MPS) do this on the CPU.
    device = pages.device if pages.device.type in ("cpu", "cuda") else torch.device("cpu")
    out = torch.empty((n, px, px), dtype=torch.uint8, device=pages.device)
    for at in range(0, n, CHUNK):           # a mosaic16 batch is hundreds of pages: bound the float64 copies
        part = pages[at:at + CHUNK].to(device, torch.float64)
        rows = _pass(part, w, px)                                              # [n, H, px]
        out[at:at + CHUNK] = _pass(rows.transpose(1, 2), h, px).transpose(1, 2).to(torch.uint8).to(pages.device)
    return out


def views(stacks: list[list[np.ndarray]], tier: Tier, device: torch.device) -> torch.Tensor:
    """One view per stack of decoded pages (one page; a mosaic group's pages in cell order), as a
    uint8 ``[B, 3, S, S]`` batch on ``device``: each page shrunk to the tier, a mosaic's cells laid
    row by row on a white canvas; grey copied into three channels like PIL's convert("RGB")."""
    flat = [page for stack in stacks for page in stack]
    shrunk = shrink(torch.from_numpy(np.stack(flat)).to(device), tier.px)
    if tier.per_canvas > 1:
        side, cell = math.isqrt(tier.per_canvas), tier.canvas_px // math.isqrt(tier.per_canvas)
        if cell != tier.px:
            raise ValueError(f"{tier.name}: a {tier.px} px view does not fill a {cell} px cell")
        canvas = torch.full((len(stacks), tier.canvas_px, tier.canvas_px), WHITE, dtype=torch.uint8, device=device)
        at = 0
        for b, stack in enumerate(stacks):
            if not 0 < len(stack) <= tier.per_canvas:
                raise ValueError(f"{len(stack)} pages do not fill a {tier.name} canvas")
            for n in range(len(stack)):
                y, x = (n // side) * cell, (n % side) * cell
                canvas[b, y:y + cell, x:x + cell] = shrunk[at + n]
            at += len(stack)
        shrunk = canvas
    return shrunk.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
