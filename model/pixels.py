"""DeepSeek-OCR 2's encoder input made on the model's device with plain torch ops, batched.

transformers' PIL image processor does this on one CPU core (25 pages/s on an H200 machine, the
ceiling of every encode); its torchvision processor needs a torchvision build that matches torch,
which CPU installs lack. Here a page's pixels are uploaded once as uint8 and resized (bicubic, with
antialias, like PIL), padded with (127, 127, 127) and normalized (mean = std = 0.5) on the device.

Same pixels as the PIL processor: exactly where no resize happens (a 1024 view at g1024 or a mosaic
canvas, a 768 view at v768); where one does (a 1024 page shown at 768, the 2x2 crops' 1536 px
upsample), both round the resize to uint8 but PIL filters in fixed point and torch in float, so a
few edge pixels differ by up to 0.11 after normalization (14 grey levels) and the mean difference
stays under 1e-3: the bound ``tests/test_device_pixels.py`` holds on typeset pages.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PAD = 127          # the processor's background colour, all three channels


@dataclass(frozen=True)
class Shown:
    """How one tier is shown to the encoder: a square global view of ``global_px`` and, when
    ``crops``, that many local ``tile_px`` tiles of the page (the processor's crop_to_patches)."""
    global_px: int
    crops: int = 0
    tile_px: int = 768


def upload(images: list[Image.Image], device: torch.device) -> torch.Tensor:
    """Images of one size as a uint8 ``[B, 3, H, W]`` batch on ``device`` (one copy each way)."""
    arrays = np.stack([np.asarray(im if im.mode == "RGB" else im.convert("RGB")) for im in images])  # [B, H, W, 3]
    return torch.from_numpy(arrays).to(device).permute(0, 3, 1, 2)


def resize(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` resized like PIL's bicubic (antialiased when shrinking), rounded
    back to uint8 as PIL does; unchanged when already that size."""
    if batch.shape[-2:] == (height, width):
        return batch
    out = F.interpolate(batch.float(), size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def normalize(batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 -> ``(x / 255 - 0.5) / 0.5`` in float32, then ``dtype``. The processor rescales in
    float64 before casting to float32; for the 256 levels a uint8 holds, float32's correctly rounded
    division gives the same bits (checked for every level in tests/test_deepseek_ocr2.py)."""
    return ((batch.to(torch.float32) / 255 - 0.5) / 0.5).to(dtype).contiguous()


def pad_square(batch: torch.Tensor) -> torch.Tensor:
    """Pad to a square, centred, with the processor's grey (a square batch is returned as is)."""
    h, w = batch.shape[-2:]
    if h == w:
        return batch
    side = max(h, w)
    out = torch.full((*batch.shape[:-2], side, side), PAD, dtype=batch.dtype, device=batch.device)
    top, left = (side - h) // 2, (side - w) // 2
    out[..., top:top + h, left:left + w] = batch
    return out


def global_view(batch: torch.Tensor, px: int) -> torch.Tensor:
    """The global view: longest side scaled to ``px`` (rounded like the processor), padded square."""
    h, w = batch.shape[-2:]
    scale = px / max(h, w)
    return pad_square(resize(batch, round(h * scale), round(w * scale)))


def local_tiles(batch: torch.Tensor, crops: int, tile_px: int) -> torch.Tensor:
    """The processor's local crops, ``[B * n, 3, tile, tile]`` (each image's tiles in row order):
    the page resized to the tile grid that best fits its aspect ratio, then cut."""
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

    h, w = batch.shape[-2:]
    columns, rows = get_optimal_tiled_canvas((h, w), (tile_px, tile_px), crops, crops)
    grid = resize(batch, rows * tile_px, columns * tile_px)
    b = grid.shape[0]
    tiles = grid.reshape(b, 3, rows, tile_px, columns, tile_px).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(b * rows * columns, 3, tile_px, tile_px)


def encoder_input(images: list[Image.Image], shown: Shown, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """``(pixel_values, pixel_values_local, num_local_patches)`` for images of one size, as the
    processor would give them, made on ``device``."""
    return encoder_input_of(upload(images, device), shown, dtype)


def encoder_input_of(batch: torch.Tensor, shown: Shown,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """The same from a uint8 ``[B, 3, H, W]`` batch already on the device (``model/device_views.py``)."""
    local = None
    if shown.crops and max(batch.shape[-2:]) > shown.tile_px:
        local = normalize(local_tiles(batch, shown.crops, shown.tile_px), dtype)
    n_local = [local.shape[0] // batch.shape[0] if local is not None else 0] * batch.shape[0]
    return normalize(global_view(batch, shown.global_px), dtype), local, n_local
