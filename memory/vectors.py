"""Meaning beside words: how close each turn of a session is to a question, for recall's ranking.

Off by default (the CPU default stays weight-free: recall ranks by words, who and when). On with
``OPTIMEM_EMBED_MODEL``:

- ``wordllama``: the small static embedding shipped inside the ``wordllama`` wheel (256 dims, 16
  MB, numpy; ``pip install "optimem[meaning]"``). A turn embeds in ~0.07 ms.
- a local folder: that sentence-transformers model, loaded with ``local_files_only`` (never a
  download), on the CPU.

Vectors are made when a session is first asked (nothing on the append path) and kept in Redis under
the session's hash tag, so every API process and cluster slot sees them:

- ``vec`` HASH  "<model>:<dims>:<block>" -> float16 rows of turns block*256 .. block*256+255 (unit
  length); a block short of 256 rows is the session's newest and is grown as turns come. Expires
  VEC_TTL_S after it was last written (a deleted session's vectors go then: the store's delete
  does not know this key).

and in this process for the session's latest turn count, so a warm question costs one matrix
product. Only sessions that keep source (every turn's exact text is there to embed) and have at
most MAX_TURNS turns are embedded; others rank by words alone.
"""
from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from optimem.memory.store import SessionKeys, Store

log = logging.getLogger("optimem.recall")
BLOCK = 256
MAX_TURNS = 20_000
VEC_TTL_S = 7 * 86_400
_cache: dict[tuple[str, str], tuple[int, np.ndarray]] = {}     # (session tag, model) -> (turns, rows)
_lock = threading.Lock()


class Embedder:
    """Texts -> unit-length float32 rows."""

    def __init__(self, name: str, encode: Any):
        self.name, self._encode = name, encode

    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = np.asarray(self._encode(texts), dtype=np.float32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


@lru_cache(maxsize=1)
def embedder() -> Embedder | None:
    """The model recall ranks with (``OPTIMEM_EMBED_MODEL``), or None: words alone."""
    name = os.environ.get("OPTIMEM_EMBED_MODEL", "").strip()
    if not name:
        return None
    if name == "wordllama":
        try:
            import wordllama
        except ImportError:
            log.error('OPTIMEM_EMBED_MODEL=wordllama needs pip install "optimem[meaning]"; recall ranks by words alone')
            return None
        # The wheel carries its weights and tokenizer (under tokenizers/, where the loader looks for
        # tokenizer/ and then would download): load from the package folder, downloads off.
        wl = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
        return Embedder("wl256", wl.embed)
    if not Path(name).is_dir():
        log.error("OPTIMEM_EMBED_MODEL=%r is neither 'wordllama' nor a folder (a local model: nothing is "
                  "downloaded); recall ranks by words alone", name)
        return None
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(name, device="cpu", local_files_only=True)
    return Embedder(f"st-{Path(name).name}", lambda texts: model.encode(texts, batch_size=64))


def key(k: SessionKeys) -> str:
    return f"{k.tag}:vec"


def similarities(store: Store, k: SessionKeys, turns: int, keep_source: bool, text: str) -> dict[int, float] | None:
    """turn -> cosine similarity of its source text to ``text``, for every turn of the session;
    None where the session is not embedded (no model, no source kept, or over MAX_TURNS)."""
    model = embedder()
    if model is None or not keep_source or not 0 < turns <= MAX_TURNS:
        return None
    matrix = _matrix(store, k, turns, model)
    query = model([text])[0]
    return dict(enumerate((matrix @ query).tolist()))


def _matrix(store: Store, k: SessionKeys, turns: int, model: Embedder) -> np.ndarray:
    with _lock:
        hit = _cache.get((k.tag, model.name))
    if hit is not None and hit[0] == turns:
        return hit[1]
    blocks = _load(store, k, model.name)
    rows: list[np.ndarray] = []
    for b in range((turns + BLOCK - 1) // BLOCK):
        want = min(BLOCK, turns - b * BLOCK)
        have = blocks.get(b)
        if have is None or len(have) < want:
            have = _embed_block(store, k, model, b, have, want)
        rows.append(have[:want])
    matrix = np.concatenate(rows).astype(np.float32)
    with _lock:
        if len(_cache) > 64:
            _cache.clear()
        _cache[(k.tag, model.name)] = (turns, matrix)
    return matrix


def _load(store: Store, k: SessionKeys, name: str) -> dict[int, np.ndarray]:
    out = {}
    for field, raw in store.r.hgetall(key(k)).items():
        model, dims, block = (field.decode() if isinstance(field, bytes) else field).rsplit(":", 2)
        if model == name:
            out[int(block)] = np.frombuffer(raw, dtype=np.float16).reshape(-1, int(dims))
    return out


def _embed_block(store: Store, k: SessionKeys, model: Embedder, block: int, have: np.ndarray | None,
                 want: int) -> np.ndarray:
    """Embed the block's turns not embedded yet (their source text) and store the block."""
    start = block * BLOCK + (0 if have is None else len(have))
    end = block * BLOCK + want
    sources = store.sources(k, range(start, end))
    texts = [sources.get(t, {}).get("content", "") or " " for t in range(start, end)]
    new = model(texts).astype(np.float16)
    rows = new if have is None else np.concatenate([have, new])
    with store.r.pipeline(transaction=False) as p:
        p.hset(key(k), f"{model.name}:{rows.shape[1]}:{block}", rows.tobytes())
        p.expire(key(k), VEC_TTL_S)
        p.execute()
    return rows
