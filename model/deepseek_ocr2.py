"""DeepSeek-OCR 2 through transformers: page views to visual tokens, and visual tokens back to text.

The weights come from a local directory (``OPTIMEM_MODEL_PATH``) in the transformers layout, e.g. a
copy of ``deepseek-community/DeepSeek-OCR-2``; nothing is ever downloaded. A view is encoded once
(``encode``) and the visual tokens are cached by the memory layer; reading a page back
(``decode_tokens``) feeds those cached tokens straight to the decoder (``mm_encoder_outputs``)
without running the vision encoder again.

How each tier is shown to the encoder (token counts from ``model.tiers.DEEPSEEK_OCR2``):
  crops     1024 px global view + 2x2 local 768 px crops: 256 + 4 x 144 + 1 = 833 tokens
  g1024     1024 px global view, no crops: 257
  v768      768 px global view: 145
  mosaic*   one 1024 px canvas holding 4 or 16 pages, no crops: 257 for the whole canvas
Every count is checked against the tier; a mismatch raises instead of caching the wrong thing.

Constructor arguments (``model.backends.load`` passes them from ``optimem.settings.Settings``; this
module never reads OPTIMEM_* variables):
  model_path  the weights directory (required; OPTIMEM_MODEL_PATH)
  device      "" = CUDA, which must be there; "cpu" must be said explicitly (slow; for tests; OPTIMEM_DEVICE)
  dtype       "" = bfloat16 on CUDA, float32 on CPU (OPTIMEM_DTYPE)

Decoding is greedy with the prompt ``<image>\\nFree OCR.`` and a windowed no-repeat n-gram guard
(DeepSeek's own recipe: n=30 in a window of 90), so a faded page that sends the decoder into a loop
ends instead of filling ``max_new_tokens`` with one phrase.

Speed (issue 20; figures in bench/RESULTS.md):
  pixels     made on the model's device from the views' uint8 pixels (``model.pixels``), batched;
             ``pixels="pil"`` keeps transformers' PIL processor (benchmarks compare the two).
             The views themselves too: ``encode_pages`` takes the stored pages and shrinks them
             to the tier and lays mosaics on the device (``model.device_views``, PIL's pixels bit
             for bit), so the worker's CPU only decodes PNGs (memory/reading.py uses it)
  compile    (OPTIMEM_COMPILE; default on for CUDA) the vision tower and projector go through
             ``torch.compile`` once per view size (1024, 768) with the batch dimension dynamic; a
             batch is padded up to a power of two (at least 2), so requests never compile (one
             that did would be logged).
             ``warm()`` compiles at start and logs the seconds; until then, and if compiling
             fails (logged), the eager encoder runs. Cached visual tokens carry no compiled/eager
             tag: both run the same bf16 weights and differ by bf16 rounding only (``bench/gpu.py``
             measures the difference; the decoder reads either the same way).
  static     (on with compile) greedy decoding with a static KV cache of one fixed length, once
             warm() has warmed it (before, the dynamic cache: a request never compiles), so
             transformers compiles the decode step once per batch bucket (1, 8, decode_batch_size),
             warmed in ``warm()``; batches are padded up to a bucket. The n-gram guard and the
             per-token probability run as logits processors either way.
  one turn   ``decode_lines`` reads only the lines of the views' line boxes (``model.line_crop``):
             one small view (145 or 257 tokens), tens of tokens decoded; memory/reading.py reads a
             turn this way (``reads_line_subsets``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TypeVar
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")        # weights are local; never reach for the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import LogitsProcessor  # noqa: E402

from optimem.model import device_views, pixels as device_pixels  # noqa: E402
from optimem.model.batching import Lane  # noqa: E402
from optimem.model.base import (  # noqa: E402
    Decoded, DecodedLine, LineBox, ModelUnavailable, PageStack, PageView, attribute_turns)
from optimem.model.line_crop import LineCrop, line_crop  # noqa: E402
from optimem.model.tiers import DEEPSEEK_OCR2, Tier  # noqa: E402
from optimem.model.visual_tokens import VisualTokens  # noqa: E402

log = logging.getLogger(__name__)
FREE_OCR = "<image>\nFree OCR."
PAD_COLOUR = (255, 255, 255)   # blank page around a single mosaic cell


class NoRepeatNGramWindow(LogitsProcessor):
    """Never complete an n-gram already generated within the last ``window_size`` tokens (the
    prompt, with its hundreds of identical image placeholders, is not looked at). This is the guard
    of DeepSeek's OCR recipe; transformers' own ``no_repeat_ngram_size`` looks at the whole
    sequence, prompt included, with no window. ``whitelist`` tokens may repeat (table cells, say).
    """

    def __init__(self, ngram_size: int, window_size: int, prompt_length: int,
                 whitelist: Iterable[int] = ()):
        if ngram_size < 2 or window_size < ngram_size:
            raise ValueError(f"need 2 <= ngram_size <= window_size, got {ngram_size} and {window_size}")
        self.n, self.window, self.prompt_length = ngram_size, window_size, prompt_length
        self.whitelist = torch.tensor(sorted(set(whitelist)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        gen = input_ids[:, self.prompt_length:]
        length = gen.shape[1]
        if length < self.n:
            return scores
        grams = gen[:, max(0, length - self.window):].unfold(1, self.n, 1)   # [batch, k, n]
        prefix = gen[:, length - self.n + 1:]                                # [batch, n-1]
        hit = (grams[:, :, :-1] == prefix[:, None, :]).all(-1)               # [batch, k]
        # Mark each hit's last token; amax keeps a hit where one token has hits and misses. No host sync.
        banned = torch.zeros(scores.shape, dtype=torch.int8, device=scores.device)
        banned.scatter_reduce_(1, grams[:, :, -1], hit.to(torch.int8), reduce="amax")
        if self.whitelist.numel():
            banned[:, self.whitelist.to(scores.device)] = 0
        return scores.masked_fill(banned.bool(), float("-inf"))


class _ChosenProbability(LogitsProcessor):
    """Records, per step, the probability of the token greedy decoding is about to pick (the last
    processor in the list, so it sees the scores the pick is made from): the decoder's own confidence."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(torch.softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores


class DeepseekOcr2Backend:
    """DeepSeek-OCR 2 (transformers, local weights) behind ``model.base.Backend``.

    ``encode`` returns one ``VisualTokens`` per view (on the CPU, ready to cache); ``decode`` reads
    views to text; ``decode_tokens`` reads cached visual tokens to text without the vision encoder.

    ``model_path``, ``device`` and ``dtype`` are the settings OPTIMEM_MODEL_PATH, OPTIMEM_DEVICE and
    OPTIMEM_DTYPE (empty or None: unset). ``batch_size``: views per encoder call (views are grouped by tier);
    ``decode_batch_size``: pages per generate call; ``max_new_tokens``: text tokens at most per page;
    ``ngram_size``, ``ngram_window``, ``whitelist_token_ids``: the repetition guard; ``prompt``
    holds one ``<image>``, which becomes as many placeholders as the view has visual tokens.
    Construction fails with ``ModelUnavailable`` (naming the setting to fix) rather than half-work.
    """

    name = "deepseek-ocr2"
    ladder = DEEPSEEK_OCR2
    reads_line_subsets = True   # decode_lines reads just a turn's lines (memory/reading.py)

    def __init__(self, model_path: str | os.PathLike | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, *, batch_size: int = 8,
                 decode_batch_size: int = 4, max_new_tokens: int = 2048, ngram_size: int = 30,
                 ngram_window: int = 90, whitelist_token_ids: Sequence[int] = (), prompt: str = FREE_OCR,
                 compile: bool | None = None, static_cache: bool | None = None, pixels: str = "device"):
        path = weights_dir(model_path or "")
        device_ = _pick_device(device or "")
        dtype_ = _pick_dtype("" if dtype is None else dtype, device_)
        self._configure(device_, dtype_, weights_revision(path), batch_size=batch_size,
                        decode_batch_size=decode_batch_size, max_new_tokens=max_new_tokens,
                        ngram_size=ngram_size, ngram_window=ngram_window,
                        whitelist_token_ids=whitelist_token_ids, prompt=prompt, compile=compile,
                        static_cache=static_cache, pixels=pixels)
        self.path: Path | None = path    # None: wrapped from memory (from_loaded)

        try:
            from transformers import DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor
        except ImportError as e:
            raise ModelUnavailable(f"the deepseek-ocr2 backend needs transformers>=5.23 ({e})") from e
        try:
            processor = DeepseekOcr2Processor.from_pretrained(path, local_files_only=True)
            model = self._load(DeepseekOcr2ForConditionalGeneration, path)
        except (OSError, ValueError, KeyError) as e:
            raise ModelUnavailable(f"OPTIMEM_MODEL_PATH={path} could not be loaded as a DeepSeek-OCR 2 "
                                   f"checkpoint (transformers layout): {e}") from e
        self._attach(model, processor)

    @classmethod
    def from_loaded(cls, model, processor, revision: str, **options) -> "DeepseekOcr2Backend":
        """Wrap a model and processor already in memory (benchmarks with random weights), so they
        run through the same encode and decode code as a checkpoint loaded from disk."""
        self = cls.__new__(cls)
        self._configure(model.device, model.dtype, revision, **options)
        self.path = None
        self._attach(model, processor)
        return self

    def _configure(self, device: torch.device, dtype: torch.dtype, revision: str, *, batch_size: int = 8,
                   decode_batch_size: int = 4, max_new_tokens: int = 2048, ngram_size: int = 30,
                   ngram_window: int = 90, whitelist_token_ids: Sequence[int] = (), prompt: str = FREE_OCR,
                   compile: bool | None = None, static_cache: bool | None = None, pixels: str = "device",
                   compile_backend: str = "inductor"):
        NoRepeatNGramWindow(ngram_size, ngram_window, 0)   # validate the guard's settings now
        if pixels not in ("device", "pil"):
            raise ValueError(f"pixels must be 'device' or 'pil', got {pixels!r}")
        on_cuda = torch.device(device).type == "cuda"
        self.compile = on_cuda if compile is None else bool(compile)
        self.static_cache = self.compile if static_cache is None else bool(static_cache)
        self.pixels, self.compile_backend = pixels, compile_backend
        self._compiled: dict[int, tuple] = {}      # view side -> (compiled vision function, fixed batch or 0)
        self.warming = False                       # True while warm() runs (/healthz says so)
        self.min_new_tokens = 0                    # > 0 holds end of sequence off (benchmarks only)
        self.warm_seconds: dict[str, float] = {}
        self._static_ready = False                 # the static-cache decoder runs once warm() warmed it
        self.device, self.dtype, self.revision = device, dtype, revision
        self.batch_size, self.decode_batch_size = max(1, batch_size), max(1, decode_batch_size)
        self.max_new_tokens, self.prompt = max_new_tokens, prompt
        self.ngram_size, self.ngram_window = ngram_size, ngram_window
        self.whitelist_token_ids = tuple(whitelist_token_ids)
        self._prompts: dict[int, torch.Tensor] = {}
        # Callers on many threads (worker jobs, recall reads) are batched per lane; lanes run side by side.
        self.batching = True
        self._lanes = {"encode": Lane("encode", self._encode_run, self.batch_size),
                       "page": Lane("page", lambda key, items: self._page_run(key, items), self.decode_batch_size),
                       "turn": Lane("turn", lambda key, views: self._decode_lines_now(views), self.decode_batch_size)}

    def _attach(self, model, processor) -> None:
        self.model, self.processor = model.eval(), processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = int(model.config.image_token_id)
        if processor.image_token_id != self.image_token_id:
            raise ModelUnavailable(f"the tokenizer's image token ({processor.image_token_id}) is not the "
                                   f"model's ({self.image_token_id})")

    def _load(self, cls, path: Path):
        kwargs = dict(local_files_only=True, dtype=self.dtype)
        if self.device.type == "cuda" and _flash_attn_available():
            # SAM's relative-position bias rules flash attention out for the vision side; the decoder takes it.
            try:
                return cls.from_pretrained(path, attn_implementation={
                    "": "sdpa", "vision_config": "sdpa", "text_config": "flash_attention_2"}, **kwargs
                ).to(self.device)
            except Exception as e:  # a speed preference only: fall back to sdpa, say so
                log.warning("flash_attention_2 for the decoder failed (%s); using sdpa", e)
        return cls.from_pretrained(path, attn_implementation="sdpa", **kwargs).to(self.device)

    # --- encode -------------------------------------------------------------------------------

    def encode(self, views: list[PageView]) -> list[VisualTokens]:
        """Visual tokens per view, each with exactly ``view.tier.canvas_tokens`` rows, on the CPU.
        Views of one tier from callers on other threads within a few ms go in the same batch."""
        for v in views:
            self._tier_of(v)
        return self._through("encode", views, lambda v: v.tier.name, self._encode_now)

    @property
    def shrinks_pages(self) -> bool:
        """Views are made here from the stored pages (``encode_pages``) when pixels are made on the
        device; the "pil" setting (the before of ``bench/gpu.py``) takes PIL's views."""
        return self.pixels == "device"

    def encode_pages(self, stacks: list[PageStack]) -> list[VisualTokens]:
        """Visual tokens of the views of stored pages: ``encode``'s tokens for the views
        ``renderer.view`` / ``renderer.mosaic`` would make, with the views made on the device
        (``model/device_views.py``, the same pixels); only the PNG decode runs here, on the
        caller's thread. Batched with other callers' stacks of the same tier and page size."""
        items = []
        for stack in stacks:
            tier = self.ladder[stack.tier.name]
            if tier.gone or not stack.pngs:
                raise ValueError("a view needs a tier that is not gone and at least one page")
            pages = [device_views.decoded(png) for png in stack.pngs]
            items.append((tier, pages))
        return self._through("encode", items, lambda item: ("pages", item[0].name, item[1][0].shape),
                             self._encode_pages_now)

    def _encode_run(self, key, items: list) -> list[VisualTokens]:
        """The encode lane's batch: stored pages (``encode_pages``) or views (``encode``)."""
        return self._encode_pages_now(items) if isinstance(key, tuple) else self._encode_now(items)

    def _encode_pages_now(self, items: list[tuple[Tier, list[np.ndarray]]]) -> list[VisualTokens]:
        out: list[VisualTokens | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (tier, pages) in enumerate(items):
            groups.setdefault((tier.name, pages[0].shape), []).append(i)
        for idx in groups.values():
            tier = items[idx[0]][0]
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k:k + self.batch_size]
                with torch.inference_mode():
                    batch = device_views.views([items[i][1] for i in chunk], tier, self.device)
                    features = self._encode_batch(batch, device_pixels.Shown(tier.canvas_px or tier.px, tier.crops),
                                                  int(tier.canvas_tokens), tier.name)
                for i, tokens in zip(chunk, self._on_host(features, tier)):
                    out[i] = tokens
        return _filled(out)

    def _on_host(self, features: list[torch.Tensor], tier: Tier) -> list[VisualTokens]:
        """A batch's features as visual tokens on the CPU: one copy to the host for the batch (views
        of one tier have one size), then one tensor each."""
        return [VisualTokens(feats.clone(), tier.name, self.revision)
                for feats in torch.stack(features).to("cpu").unbind(0)]

    def _encode_now(self, views: list[PageView]) -> list[VisualTokens]:
        out: list[VisualTokens | None] = [None] * len(views)
        for tier, chunk in self._batches(views, self.batch_size):
            for i, tokens in zip(chunk, self._on_host(self._features([views[i] for i in chunk], tier), tier)):
                out[i] = tokens
        return _filled(out)

    def _features(self, views: list[PageView], tier: Tier) -> list[torch.Tensor]:
        """The encoder's output for views of one tier, on the model's device."""
        images = [encoder_view(v.image, tier) for v in views]
        if self.pixels == "pil":
            return self._features_pil(images, tier)
        shown = device_pixels.Shown(tier.canvas_px or tier.px, tier.crops)
        return self._encode_images(images, shown, int(tier.canvas_tokens), tier.name)

    def _encode_images(self, images: list[Image.Image], shown: device_pixels.Shown, expected: int,
                       what: str) -> list[torch.Tensor]:
        """Visual tokens of images shown one way, pixels made on the device; images of one size
        go up in one batch (a mixed list is grouped by size, the order kept)."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.size, []).append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for idx in by_size.values():
            with torch.inference_mode():
                batch = device_pixels.upload([images[i] for i in idx], self.device)
                for i, f in zip(idx, self._encode_batch(batch, shown, expected, what)):
                    out[i] = f
        return _filled(out)

    def _encode_batch(self, batch: torch.Tensor, shown: device_pixels.Shown, expected: int,
                      what: str) -> list[torch.Tensor]:
        """Visual tokens of a uint8 ``[B, 3, H, W]`` batch on the device, each checked to be
        ``expected`` long."""
        glob, local, n_local = device_pixels.encoder_input_of(batch, shown, self.dtype)
        features = self._assemble(self._vision(glob), None if local is None else self._vision(local), n_local)
        for f in features:
            if f.shape[0] != expected:
                raise RuntimeError(f"{what} should give {expected:g} visual tokens a view, the encoder gave {f.shape[0]}")
        return features

    def _assemble(self, glob: torch.Tensor, local: torch.Tensor | None, n_local: list[int]) -> list[torch.Tensor]:
        """Per image, as transformers' get_image_features lays them out: its local crops' tokens,
        then the global view's, then the view separator."""
        sep = self.model.model.view_separator.to(glob.dtype).unsqueeze(0)
        out, start = [], 0
        for k, n in enumerate(n_local):
            parts: list[torch.Tensor] = []
            if n:
                if local is None:
                    raise ValueError(f"image {k} has {n} local crops but no local features came with it")
                parts = [local[start:start + n].reshape(-1, glob.shape[-1])]
            start += n
            out.append(torch.cat(parts + [glob[k], sep], dim=0))
        return out

    def _vision_eager(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` pixels -> ``[B, n, hidden]``: SAM, the query encoder, the projector."""
        inner = self.model.model
        return inner.multi_modal_projector(inner.vision_tower(pixels).last_hidden_state)

    def _vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower, compiled where warmed for this view size (the batch padded to its
        bucket, so no request compiles; one that did would be logged)."""
        entry = self._compiled.get(int(pixels.shape[-1]))
        if entry is None:
            return self._vision_eager(pixels)
        compiled, fixed = entry
        n = pixels.shape[0]
        if fixed and n > fixed:   # past the static graph's batch: in pieces
            return torch.cat([self._vision(pixels[k:k + fixed]) for k in range(0, n, fixed)])
        size = fixed or batch_bucket(n)
        padded = pixels if size == n else torch.cat([pixels, pixels[-1:].expand(size - n, -1, -1, -1)])
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        try:
            out = compiled(padded)[:n]
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001  compiled code failing: eager, logged
            log.warning("compiled encoder failed on a batch of %d at %d px (%s); eager for this call",
                        size, pixels.shape[-1], str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            return self._vision_eager(pixels)
        if counters["stats"]["unique_graphs"] != graphs:   # not a setting: a bug in the buckets
            log.warning("the encoder compiled on a request (batch %d at %d px)", size, pixels.shape[-1])
        return out

    def _features_pil(self, images: list[Image.Image], tier: Tier) -> list[torch.Tensor]:
        """The same through transformers' PIL image processor on the CPU (the slow path, kept for
        benchmarks and as the reference the device pixels are tested against)."""
        if tier.crops:
            kwargs = dict(crop_to_patches=True, min_patches=tier.crops, max_patches=tier.crops,
                          size={"height": tier.px, "width": tier.px})
        else:
            # Without crops the processor sizes the one global view by ``tile_size``.
            kwargs = dict(crop_to_patches=False, tile_size=tier.canvas_px or tier.px)
        pixels = self.processor.image_processor(images, return_tensors="pt", **kwargs)
        local = pixels.get("pixel_values_local")
        with torch.inference_mode():
            features = self.model.model.get_image_features(
                pixel_values=pixels["pixel_values"].to(self.device, self.dtype),
                pixel_values_local=None if local is None else local.to(self.device, self.dtype),
                num_local_patches=[int(n) for n in pixels["num_local_patches"]],
            ).pooler_output
        for f in features:
            if f.shape[0] != tier.canvas_tokens:
                raise RuntimeError(f"tier {tier.name} should give {tier.canvas_tokens:g} visual tokens a view, "
                                   f"the encoder gave {f.shape[0]}")
        return list(features)

    # --- decode -------------------------------------------------------------------------------

    def decode(self, views: list[PageView]) -> list[Decoded]:
        """Read views to text: encode, then decode from the fresh visual tokens."""
        for v in views:
            self._tier_of(v)
        return self._through("page", views, lambda v: ("views", v.tier.name), self._decode_now)

    def _through(self, lane_name: str, items: list, key, run) -> list:
        """``run(items)``, through lane ``lane_name`` (batched with other callers' items of the same
        key) when batching, else right here."""
        if not self.batching or not items:
            return run(items)
        lane = self._lanes[lane_name]
        lane.max_batch = self.batch_size if lane_name == "encode" else self.decode_batch_size
        out: list = [None] * len(items)
        groups: dict = {}
        for i, item in enumerate(items):
            groups.setdefault(key(item), []).append(i)
        for k, idx in groups.items():
            for i, result in zip(idx, lane.call(k, [items[i] for i in idx])):
                out[i] = result
        return out

    def _decode_now(self, views: list[PageView]) -> list[Decoded]:
        out: list[Decoded | None] = [None] * len(views)
        for tier, chunk in self._batches(views, self.decode_batch_size):
            start = time.perf_counter()
            feats = self._features([views[i] for i in chunk], tier)
            results = self._generate(feats, [views[i].lines for i in chunk])
            seconds = (time.perf_counter() - start) / len(chunk)
            for i, decoded in zip(chunk, results):
                decoded.seconds = seconds
                out[i] = decoded
        return _filled(out)

    def decode_tokens(self, tokens: list[VisualTokens],
                      lines: list[list[LineBox]] | None = None) -> list[Decoded]:
        """Read cached visual tokens to text without running the vision encoder.

        ``lines`` (the renderer's line boxes, per item) only serve to tell which turn each decoded
        line came from; without them ``DecodedLine.turn`` stays None.
        """
        for t in tokens:
            if t.revision != self.revision:
                raise ValueError(f"visual tokens from model revision {t.revision!r} cannot be read by "
                                 f"{self.revision!r}; encode the page again")
        pairs = [(t, lines[i] if lines else []) for i, t in enumerate(tokens)]
        return self._through("page", pairs, lambda p: ("tokens", p[0].n_tokens),
                             lambda ps: self._decode_tokens_now([p[0] for p in ps], [p[1] for p in ps]))

    def _decode_tokens_now(self, tokens: list[VisualTokens], lines: list[list[LineBox]]) -> list[Decoded]:
        out: list[Decoded | None] = [None] * len(tokens)
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(tokens):
            groups.setdefault(t.n_tokens, []).append(i)
        for idx in groups.values():
            for k in range(0, len(idx), self.decode_batch_size):
                chunk = idx[k:k + self.decode_batch_size]
                start = time.perf_counter()
                results = self._generate([tokens[i].tensor for i in chunk],
                                         [lines[i] if lines else [] for i in chunk])
                seconds = (time.perf_counter() - start) / len(chunk)
                for i, decoded in zip(chunk, results):
                    decoded.seconds = seconds
                    out[i] = decoded
        return _filled(out)

    def prompt_ids(self, n_tokens: int) -> torch.Tensor:
        """The prompt with ``n_tokens`` image placeholders, as the processor would build it."""
        if n_tokens not in self._prompts:
            text = self.prompt.replace(self.processor.image_token, self.processor.image_token * n_tokens, 1)
            ids = self.tokenizer(text, return_tensors="pt").input_ids[0]
            placeholders = int((ids == self.image_token_id).sum())
            if placeholders != n_tokens:
                raise RuntimeError(f"prompt has {placeholders} image placeholders, the view {n_tokens} tokens")
            self._prompts[n_tokens] = ids
        return self._prompts[n_tokens]

    def max_cache_len(self) -> int:
        """The static KV cache's one length: the longest prompt (the largest view and the prompt
        text) plus ``max_new_tokens``, rounded up to 256, so every decode reuses one compiled step."""
        longest = int(max(t.canvas_tokens for t in self.ladder.tiers)) + 64
        return -(-(longest + self.max_new_tokens) // 256) * 256

    def decode_buckets(self) -> tuple[int, ...]:
        """Batch sizes a static-cache decode runs at (a batch is padded up to the next one)."""
        return tuple(sorted({1, min(8, self.decode_batch_size), self.decode_batch_size}))

    def generate_ids(self, features: list[torch.Tensor], min_new_tokens: int | None = None,
                     max_new_tokens: int | None = None,
                     static_cache: bool | None = None) -> tuple[list[list[int]], list[list[float]]]:
        """Greedy decode of same-sized visual tokens: the new token ids per view (up to, not
        including, end of sequence) and the decoder's probability of each. ``min_new_tokens``
        holds end of sequence off (benchmarks); ``max_new_tokens`` caps this call below the
        backend's; ``static_cache`` overrides the backend's choice (benchmarks, tests)."""
        from transformers import GenerationConfig, LogitsProcessorList
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        n = features[0].shape[0]
        if any(f.shape[0] != n for f in features):
            raise ValueError("one generate call takes visual tokens of one size")
        # Until warm() has compiled it, the static-cache decoder is not used: a request never compiles.
        static = (self.static_cache and self._static_ready) if static_cache is None else static_cache
        wanted = len(features)
        if static:   # pad up to a warmed batch size: the compiled decode step never sees a new shape
            size = next((b for b in self.decode_buckets() if b >= wanted), wanted)
            features = list(features) + [features[-1]] * (size - wanted)
        limit = self.max_new_tokens if max_new_tokens is None else min(max_new_tokens, self.max_new_tokens)
        min_new_tokens = self.min_new_tokens if min_new_tokens is None else min_new_tokens
        prompt = self.prompt_ids(n)
        input_ids = prompt.unsqueeze(0).expand(len(features), -1).to(self.device)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos])}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos_ids)
        cache = dict(cache_implementation="static", max_cache_len=self.max_cache_len(),
                     disable_compile=not self.compile) if static else {}
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=limit,
                                  min_new_tokens=min(min_new_tokens, limit), eos_token_id=sorted(eos_ids),
                                  pad_token_id=pad, **cache)
        probability = _ChosenProbability()
        guard = NoRepeatNGramWindow(self.ngram_size, self.ngram_window, prompt.shape[0], self.whitelist_token_ids)
        # One tensor per image (their token counts differ), as the model's own get_image_features
        # gives them; the output dataclass annotates pooler_output as one tensor.
        image = BaseModelOutputWithPooling(
            pooler_output=[f.to(self.device, self.dtype) for f in features])  # type: ignore[arg-type]
        with torch.inference_mode():
            sequences = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), mm_encoder_outputs={"image": image},
                generation_config=config, logits_processor=LogitsProcessorList([guard, probability]))
        new = sequences[:wanted, prompt.shape[0]:].tolist()
        probs = torch.stack(probability.steps, dim=1)[:wanted].tolist() if probability.steps else [[] for _ in new]
        ids_out, probs_out = [], []
        for row, p in zip(new, probs):
            end = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
            ids_out.append(row[:end])
            probs_out.append(p[:end])
        return ids_out, probs_out

    def _generate(self, features: list[torch.Tensor], boxes: list[list[LineBox]],
                  max_new_tokens: int | None = None) -> list[Decoded]:
        ids, probs = self.generate_ids(features, max_new_tokens=max_new_tokens)
        return [self._decoded(i, p, b) for i, p, b in zip(ids, probs, boxes)]

    # --- one turn -----------------------------------------------------------------------------

    def decode_lines(self, views: list[PageView]) -> list[Decoded]:
        """Read only the lines of each view's line boxes (one turn's, say): the lines cropped from
        the view as it is (the page's tier), shown as one small view, decoded with a budget of
        tokens for that many lines. Same ``Decoded`` as ``decode``; a view without lines reads as
        empty. Views sharing a canvas size are encoded, then decoded, together, on a lane of their
        own: a whole page being read never holds a turn up."""
        return self._through("turn", views, lambda v: "lines", self._decode_lines_now)

    def _decode_lines_now(self, views: list[PageView]) -> list[Decoded]:
        out: list[Decoded | None] = [Decoded("", [], 0.0) if not v.lines else None for v in views]
        crops: dict[int, LineCrop] = {}
        for i, v in enumerate(views):
            crop = line_crop(v)
            if crop is not None:    # None: a view without lines, read as empty above
                crops[i] = crop
        by_px: dict[int, list[int]] = {}
        for i, c in crops.items():
            by_px.setdefault(c.px, []).append(i)
        for px, idx in by_px.items():
            expected = 257 if px == 1024 else 145
            for k in range(0, len(idx), self.decode_batch_size):
                chunk = idx[k:k + self.decode_batch_size]
                start = time.perf_counter()
                if self.pixels == "pil":
                    tier = self.ladder["g1024" if px == 1024 else "v768"]
                    feats = self._features_pil([crops[i].image for i in chunk], tier)
                else:
                    feats = self._encode_images([crops[i].image for i in chunk], device_pixels.Shown(px),
                                                expected, f"a {px} px line crop")
                budget = max(crops[i].max_new_tokens for i in chunk)
                results = self._generate(feats, [crops[i].lines for i in chunk], max_new_tokens=budget)
                seconds = (time.perf_counter() - start) / len(chunk)
                for i, decoded in zip(chunk, results):
                    turns = {b.turn for b in crops[i].lines}
                    if len(turns) == 1:   # one turn's lines: every line read is that turn's
                        for line in decoded.lines:
                            line.turn = next(iter(turns))
                    decoded.seconds = seconds
                    out[i] = decoded
        return _filled(out)

    # --- start-up -----------------------------------------------------------------------------

    def warm(self) -> dict[str, float]:
        """Compile the encoder (when ``compile``) and run the static-cache decoder at every batch
        bucket (when ``static_cache``), now, so no request compiles; the seconds each took are
        logged and returned. ``warming`` is True meanwhile. A compile that fails is logged and the
        eager encoder kept."""
        self.warming = True
        try:
            if self.compile and not self._compiled:
                for px in (1024, 768):
                    start = time.perf_counter()
                    try:
                        self._compile_vision(px)
                    except Exception as e:  # noqa: BLE001  speed only: eager still reads
                        log.warning("compiling the %d px encoder failed (%s: %s); the eager encoder runs",
                                    px, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
                        self._compiled.clear()
                        break
                    self.warm_seconds[f"compile_{px}"] = time.perf_counter() - start
                    log.info("encoder at %d px compiled and warmed in %.1f s", px, self.warm_seconds[f"compile_{px}"])
            if self.static_cache:
                feats = torch.zeros(145, self.model.config.text_config.hidden_size, dtype=self.dtype, device=self.device)
                # CUDA graphs are recorded per thread: warm each decode lane on its own thread.
                for lane in ("page", "turn") if self.batching else ("here",):
                    for b in self.decode_buckets():
                        start = time.perf_counter()
                        step = lambda b=b: self.generate_ids([feats] * b, min_new_tokens=4,  # noqa: E731
                                                             max_new_tokens=4, static_cache=True)
                        step() if lane == "here" else self._lanes[lane].run_here(step)
                        self.warm_seconds[f"decode_{lane}_batch_{b}"] = time.perf_counter() - start
                        log.info("static-cache decoder (%s lane) at batch %d warmed in %.1f s", lane, b,
                                 self.warm_seconds[f"decode_{lane}_batch_{b}"])
                self._static_ready = True
        finally:
            self.warming = False
        log.info("deepseek-ocr2 warm-up: %.1f s in all", sum(self.warm_seconds.values()))
        return dict(self.warm_seconds)

    def _compile_vision(self, px: int) -> None:
        """Compile the vision tower for ``px`` views with a dynamic batch dimension, run it at the
        smallest and largest buckets, and only then let requests use it. Where the batch cannot
        be dynamic (the compiler specialises on it), one static graph at the largest bucket, every
        batch padded up to it."""
        largest = batch_bucket(self.batch_size)

        def run(compiled, size: int, first: bool, dynamic: bool) -> None:
            pixels = torch.zeros(size, 3, px, px, dtype=self.dtype, device=self.device)
            if first:
                if dynamic:
                    torch._dynamo.mark_dynamic(pixels, 0, min=2, max=4096)
                # Each view size gets its own graph with static sides (a second size would otherwise
                # make the compiler turn the sides dynamic too).
                with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
                    compiled(pixels)
            else:
                with torch.compiler.set_stance("fail_on_recompile"):
                    compiled(pixels)

        with torch.inference_mode():
            try:
                compiled = torch.compile(self._vision_eager, backend=self.compile_backend, dynamic=None)
                for k, size in enumerate(dict.fromkeys((2, largest))):
                    run(compiled, size, k == 0, True)
                fixed = 0
            except Exception as e:  # noqa: BLE001  try the static graph before giving up
                log.warning("a dynamic-batch compile of the %d px encoder failed (%s: %s); compiling one static "
                            "graph for batches of %d", px, type(e).__name__, str(e)[:300], largest, exc_info=log.isEnabledFor(logging.DEBUG))
                compiled = torch.compile(self._vision_eager, backend=self.compile_backend, dynamic=False)
                run(compiled, largest, True, False)
                run(compiled, largest, False, False)
                fixed = largest
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._compiled[px] = (compiled, fixed)

    def _decoded(self, ids: list[int], probs: list[float], boxes: list[LineBox]) -> Decoded:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        raw_lines = text.split("\n")
        # Which line each token ends up on, by the newlines its own text holds.
        per_line: list[list[float]] = [[] for _ in raw_lines]
        line = 0
        for piece, p in zip(self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True), probs):
            if piece and line < len(per_line):
                per_line[line].append(p)
            line += piece.count("\n")
        page = sum(probs) / len(probs) if probs else 0.0
        if line != len(raw_lines) - 1:   # token pieces and the whole text disagree: page score for all
            per_line = [[page] for _ in raw_lines]
        lines = [DecodedLine(t.strip(), sum(s) / len(s) if s else page)
                 for t, s in zip(raw_lines, per_line) if t.strip()]
        attribute_turns(lines, boxes)
        return Decoded(text.strip(), lines)

    def _page_run(self, key, items: list) -> list[Decoded]:
        if key[0] == "views":
            return self._decode_now(items)
        return self._decode_tokens_now([t for t, _ in items], [b for _, b in items])

    # --- helpers ------------------------------------------------------------------------------

    def _tier_of(self, view: PageView) -> Tier:
        """The view's tier, checked: a gone page or another family's tier fails here, in the caller."""
        if view.tier.gone:
            raise ValueError("a gone page has no view to encode or read")
        return self.ladder[view.tier.name]

    def _batches(self, views: list[PageView], size: int) -> Iterable[tuple[Tier, list[int]]]:
        """Indices of ``views`` grouped by tier (first-seen order), cut into batches of ``size``."""
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(views):
            if v.tier.gone:
                raise ValueError("a gone page has no view to encode or read")
            self.ladder[v.tier.name]   # a tier of another family fails here, by name
            groups.setdefault(v.tier.name, []).append(i)
        for idx in groups.values():
            tier = views[idx[0]].tier
            for k in range(0, len(idx), size):
                yield tier, idx[k:k + size]


T = TypeVar("T")


def _filled(out: list[T | None]) -> list[T]:
    """A list of results filled slot by slot (batches in their own order), checked to be full."""
    missing = [i for i, item in enumerate(out) if item is None]
    if missing:
        raise RuntimeError(f"no result for items {missing} of {len(out)}")
    return [item for item in out if item is not None]


def batch_bucket(n: int) -> int:
    """The batch size a compiled encoder call runs at: the next power of two, at least 2 (a batch
    of 1 would make the compiler specialise on it)."""
    return max(2, 1 << (max(1, n) - 1).bit_length())


def encoder_view(image: Image.Image, tier: Tier) -> Image.Image:
    """The image the encoder sees for a view. A mosaic tier is a canvas of ``canvas_px`` holding
    ``per_canvas`` pages; given a single page cell instead (to read one page), the cell is placed
    on a blank canvas so the encoder sees it at the scale the mosaic keeps it at."""
    image = image.convert("RGB")
    if tier.per_canvas > 1 and tier.canvas_px and max(image.size) < tier.canvas_px:
        canvas = Image.new("RGB", (tier.canvas_px, tier.canvas_px), PAD_COLOUR)
        canvas.paste(image, (0, 0))
        return canvas
    return image


def weights_dir(path: str | os.PathLike) -> Path:
    """The weights directory, checked: a missing setting or file names OPTIMEM_MODEL_PATH."""
    if not str(path):
        raise ModelUnavailable("OPTIMEM_MODEL_PATH is not set: point it at a local DeepSeek-OCR 2 checkpoint "
                               "in the transformers layout (a copy of deepseek-community/DeepSeek-OCR-2); "
                               "optimem never downloads weights")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelUnavailable(f"OPTIMEM_MODEL_PATH={p} is not a directory")
    missing = [f for f in ("config.json", "tokenizer_config.json") if not (p / f).is_file()]
    if not any(p.glob("*.safetensors")):
        missing.append("*.safetensors")
    if not ((p / "processor_config.json").is_file() or (p / "preprocessor_config.json").is_file()):
        missing.append("processor_config.json")
    if missing:
        raise ModelUnavailable(f"OPTIMEM_MODEL_PATH={p} lacks {', '.join(missing)}")
    model_type = json.loads((p / "config.json").read_text()).get("model_type")
    if model_type != "deepseek_ocr2":
        raise ModelUnavailable(f"OPTIMEM_MODEL_PATH={p} holds a {model_type!r} model, not deepseek_ocr2 "
                               "(the original deepseek-ai/DeepSeek-OCR-2 remote-code layout is not this one; "
                               "use the transformers conversion deepseek-community/DeepSeek-OCR-2)")
    return p


def weights_revision(path: Path) -> str:
    """A short hash naming these weights, the same across restarts and copies: config.json, each
    safetensors file's name, size and header, and 1 MiB samples of its start, middle and end."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        if (path / name).is_file():
            h.update(name.encode() + b"\0" + (path / name).read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(min(header, size)))
            for offset in (0, size // 2, max(0, size - (1 << 20))):
                fh.seek(offset)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _pick_device(requested: str) -> torch.device:
    hint = ("Set OPTIMEM_DEVICE=cpu to run it on the CPU anyway (very slow; meant for tests), or use "
            "the CPU backend: OPTIMEM_BACKEND=rapidocr.")
    if not requested:
        if torch.cuda.is_available():
            return torch.device("cuda")
        raise ModelUnavailable(f"the deepseek-ocr2 backend needs a CUDA GPU and none is visible. {hint}")
    try:
        device = torch.device(requested)
    except RuntimeError as e:
        raise ModelUnavailable(f"OPTIMEM_DEVICE={requested!r} is not a torch device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"OPTIMEM_DEVICE={requested} but no CUDA GPU is visible. {hint}")
    return device


def _pick_dtype(requested: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(requested, torch.dtype):
        return requested
    if not requested:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, requested.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelUnavailable(f"OPTIMEM_DTYPE={requested!r} is not a torch floating-point dtype")
    return dtype


def _flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True
