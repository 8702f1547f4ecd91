"""Read pages back through a vLLM server running DeepSeek-OCR (2): decode only.

vLLM takes images, not precomputed visual tokens, so this reader sends each view as a PNG data URL
to the server's OpenAI-compatible ``/v1/chat/completions`` with the prompt "Free OCR.", greedy
(temperature 0). The repetition guard is vLLM's own ``NGramPerReqLogitsProcessor``, steered per
request through ``vllm_xargs`` as in vLLM's DeepSeek-OCR recipe; it only acts if the server was
started with it, e.g.::

    vllm serve deepseek-ai/DeepSeek-OCR-2 --logits_processors \\
        vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor \\
        --no-enable-prefix-caching --mm-processor-cache-gb 0

The recipe also sends ``skip_special_tokens: false`` to keep grounding tags (``<|ref|>``...); plain
"Free OCR." text has none to keep, so this reader lets the server strip special tokens.

Settings (``model.backends.load`` passes them from ``optimem.settings.Settings``; this module never
reads the environment): ``url`` (OPTIMEM_VLLM_URL, the server, e.g. http://127.0.0.1:8000), ``model``
(OPTIMEM_VLLM_MODEL, the served model name; when empty, the server's first model from /v1/models) and
``api_key`` (OPTIMEM_VLLM_API_KEY, sent as a Bearer token when set).
"""
from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from optimem.model.base import Decoded, DecodedLine, ModelUnavailable, PageView, attribute_turns
from optimem.model.line_crop import line_crop
from optimem.model.tiers import DEEPSEEK_OCR2, Ladder, Tier
from optimem.model.visual_tokens import VisualTokens

PROMPT = "Free OCR."
TABLE_CELL_TOKENS = (128821, 128822)   # <td>, </td>: may repeat (the recipe's whitelist)


class VllmReader:
    """A decode-only backend over a vLLM server. ``encode`` raises NotImplementedError."""

    name = "vllm"
    reads_line_subsets = True   # decode_lines sends just a turn's lines (memory/reading.py)

    def __init__(self, url: str | None = None, model: str | None = None, *, ladder: Ladder = DEEPSEEK_OCR2,
                 max_tokens: int = 4096, ngram_size: int = 30, window_size: int = 90,
                 whitelist_token_ids: Sequence[int] = TABLE_CELL_TOKENS, concurrency: int = 8,
                 timeout: float = 600.0, api_key: str | None = None):
        if not url:
            raise ModelUnavailable("OPTIMEM_VLLM_URL is not set: point it at a vLLM server serving "
                                   "DeepSeek-OCR 2, e.g. http://127.0.0.1:8000")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.ladder = ladder
        self.max_tokens, self.concurrency = max_tokens, max(1, concurrency)
        self.xargs = {"ngram_size": ngram_size, "window_size": window_size,
                      "whitelist_token_ids": list(whitelist_token_ids)}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)
        try:
            self.model = model or self._served_model()
        except ModelUnavailable:
            self._client.close()
            raise
        # The server gives no weights hash; its model name is what tells one reader's cache from another's.
        self.revision = self.model

    def _served_model(self) -> str:
        try:
            r = self._client.get("/v1/models")
            r.raise_for_status()
            return r.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise ModelUnavailable(f"OPTIMEM_VLLM_URL={self.url}: could not list its models ({e}); "
                                   "is the server up? (or set OPTIMEM_VLLM_MODEL)") from None

    def encode(self, views: list[PageView]) -> list[VisualTokens]:
        raise NotImplementedError("vLLM takes page images, not visual tokens; encode with the "
                                  "deepseek-ocr2 backend")

    def decode(self, views: list[PageView]) -> list[Decoded]:
        for v in views:
            if v.tier.gone:
                raise ValueError("a gone page has no view to read")
        if len(views) <= 1 or self.concurrency == 1:
            return [self._read(v) for v in views]
        with ThreadPoolExecutor(min(self.concurrency, len(views))) as pool:
            return list(pool.map(self._read, views))

    def decode_lines(self, views: list[PageView]) -> list[Decoded]:
        """Read only the lines of each view's line boxes (one turn's): the server gets the lines
        cropped from the view onto one small image (``model.line_crop``) and a token budget for
        that many lines, not the whole page. A view without lines reads as empty."""
        def read(view: PageView) -> Decoded:
            crop = line_crop(view)
            if crop is None:
                return Decoded("", [], 0.0)
            decoded = self._read(view, crop.image, crop.max_new_tokens, crop.lines)
            turns = {b.turn for b in crop.lines}
            if len(turns) == 1:
                for line in decoded.lines:
                    line.turn = next(iter(turns))
            return decoded

        if len(views) <= 1 or self.concurrency == 1:
            return [read(v) for v in views]
        with ThreadPoolExecutor(min(self.concurrency, len(views))) as pool:
            return list(pool.map(read, views))

    def request_body(self, view: PageView, image: Image.Image | None = None, max_tokens: int | None = None) -> dict:
        """The chat completion request for one view (or ``image``, a crop of it), as sent."""
        shown = image if image is not None else _shown(view.image, view.tier)
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _data_url(shown)}},
                {"type": "text", "text": PROMPT},
            ]}],
            "temperature": 0.0,
            "max_tokens": min(self.max_tokens, max_tokens or self.max_tokens),
            "skip_special_tokens": True,
            "logprobs": True,
            "vllm_xargs": self.xargs,
        }

    def _read(self, view: PageView, image: Image.Image | None = None, max_tokens: int | None = None,
              boxes: list | None = None) -> Decoded:
        start = time.perf_counter()
        try:
            r = self._client.post("/v1/chat/completions", json=self.request_body(view, image, max_tokens))
        except httpx.HTTPError as e:
            raise RuntimeError(f"vLLM server at {self.url} did not answer: {e}") from e
        if r.status_code != 200:
            raise RuntimeError(f"vLLM server at {self.url} answered {r.status_code}: {r.text[:500]}")
        try:
            choice = r.json()["choices"][0]
        except (ValueError, KeyError, IndexError):
            raise RuntimeError(f"vLLM server at {self.url} sent no completion: {r.text[:500]}") from None
        text = choice["message"].get("content") or ""
        lines = _lines(text, (choice.get("logprobs") or {}).get("content") or [])
        attribute_turns(lines, view.lines if boxes is None else boxes)
        return Decoded(text.strip(), lines, time.perf_counter() - start)

    def close(self) -> None:
        self._client.close()


def _lines(text: str, logprobs: list[dict]) -> list[DecodedLine]:
    """Lines of the text, each scored by the mean probability of its tokens (from the server's
    logprobs; 1.0 when the server sent none)."""
    raw = text.split("\n")
    per_line: list[list[float]] = [[] for _ in raw]
    line = 0
    for item in logprobs:
        piece = item.get("token") or ""
        if piece and line < len(per_line):
            per_line[line].append(math.exp(item.get("logprob", 0.0)))
        line += piece.count("\n")
    probs = [p for ps in per_line for p in ps]
    page = sum(probs) / len(probs) if probs else 1.0
    if logprobs and line != len(raw) - 1:   # token pieces and text disagree: the page score for all
        per_line = [[page] for _ in raw]
    return [DecodedLine(t.strip(), sum(s) / len(s) if s else page) for t, s in zip(raw, per_line) if t.strip()]


def _shown(image: Image.Image, tier: Tier) -> Image.Image:
    """A single mosaic cell goes on a blank canvas, so the server sees it at the mosaic's scale."""
    image = image.convert("RGB")
    if tier.per_canvas > 1 and tier.canvas_px and max(image.size) < tier.canvas_px:
        canvas = Image.new("RGB", (tier.canvas_px, tier.canvas_px), (255, 255, 255))
        canvas.paste(image, (0, 0))
        return canvas
    return image


def _data_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
