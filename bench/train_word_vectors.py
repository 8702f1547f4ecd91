"""Train the word vectors recall expands questions with (``memory/expansion.py``). One command:

    python bench/train_word_vectors.py [--out memory/data/word_vectors.npz] [--window 5] [--dims 128]
                                       [--min-count 5] [--vocab 24000] [--alpha 0.75] [--seed 21]

Trained offline on the chitchat-dataset conversations (7,168 human chats; the package is already a
dependency), EXCEPT the 18 conversations the recall question set's sessions are built from
(``bench/recall_set.py``) and the machine-made one (``corpus.GENERATED``): the vectors never saw the
evidence they are measured on. Tokens are the index's own (``memory/index.py``: lower-case, stop
words out, Snowball stems), so a neighbour is an index term.

The method is PPMI + truncated SVD (Levy, Goldberg and Dagan 2015, "Improving distributional
similarity with lessons learned from word embeddings"): co-occurrence counts within 5 tokens of
each other in one turn (weighted 1/distance), positive pointwise mutual information with the context
distribution smoothed (alpha 0.75), a rank-128 SVD, rows U * sqrt(S), unit length. On a corpus
this small (~1 M index tokens) that paper finds it on par with word2vec, and it is exactly
reproducible (a second run writes a byte-identical file): the only randomness is ARPACK's start vector, fixed by the seed. Needs scipy (training only; the package
reads the result with numpy alone): ``pip install "optimem[train]"``.

The file: ``terms`` (the most frequent stems seen >= 5 times), ``vectors`` (float16,
one unit row per term), each term's NEAREST closest others (``near``: int16 rows into ``terms``,
``near_sim``: their cosines, float16; so a question costs a lookup, not a product with every row)
and the settings it was made with.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimem.memory import index as ix  # noqa: E402
from optimem.memory.lab.corpus import chitchat, chitchat_turns, conversations  # noqa: E402
from recall_set import PER_SESSION, sessions as set_sessions  # noqa: E402

OUT = ROOT / "memory" / "data" / "word_vectors.npz"
NEAREST = 24        # neighbours kept per term (memory/expansion.py's LOOK reads at most these)


@dataclass(frozen=True)
class Recipe:
    """How the vectors are made (the defaults are the shipped file's)."""
    vocab: int = 24_000      # most frequent stems kept
    min_count: int = 5       # ... seen at least this often
    window: int = 5          # tokens either side that count as context (within one turn)
    dims: int = 128
    alpha: float = 0.75      # context distribution smoothing
    seed: int = 21

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in asdict(self).items())


def question_set_keys() -> set[str]:
    """The chitchat keys ``recall_set.sessions`` builds its six sessions from (its own selection,
    checked against the sessions' text so a change there cannot slip past)."""
    picked = [(key, turns) for key, turns in conversations(min_turns=80) if len(turns) <= 140][:6 * PER_SESSION]
    built = [t["content"] for name, turns in set_sessions().items() if name != "zh" for t in turns]
    assert built == [t["content"] for _, turns in picked for t in turns], "recall_set's selection changed"
    return {key for key, _ in picked}


def corpus(excluded: set[str]) -> list[list[str]]:
    """Every kept conversation's turns as index tokens, one list per turn."""
    data = chitchat()
    out = []
    for _key, turns in ((k, chitchat_turns(data[k])) for k in sorted(set(data) - excluded)):
        out += [toks for t in turns if (toks := ix.tokens(t["content"]))]
    return out


def cooccurrence(turns: list[list[str]], vocab: dict[str, int], window: int):
    """Symmetric counts of two terms within ``window`` tokens in one turn, weighted 1/distance."""
    from scipy import sparse

    ids = [[vocab[t] for t in toks if t in vocab] for toks in turns]
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
    which = np.repeat(np.arange(len(ids)), [len(row) for row in ids])     # the turn of each token
    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        same = (which[d:] == which[:-d]) & (flat[d:] != flat[:-d])
        a, b = flat[:-d][same], flat[d:][same]
        rows += [a, b]
        cols += [b, a]
        vals.append(np.full(2 * len(a), 1.0 / d))
    n = len(vocab)
    return sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n, n)).tocsr()


def ppmi(counts, alpha: float):
    from scipy import sparse

    total = counts.sum()
    word = np.asarray(counts.sum(axis=1)).ravel()
    ctx = np.asarray(counts.sum(axis=0)).ravel() ** alpha
    ctx /= ctx.sum()
    c = counts.tocoo()
    pmi = np.log(c.data * 1.0 / total) - np.log(word[c.row] / total) - np.log(ctx[c.col])
    keep = pmi > 0
    return sparse.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=counts.shape)


def train(excluded: set[str], recipe: Recipe) -> tuple[list[str], np.ndarray, dict]:
    from scipy.sparse.linalg import svds

    turns = corpus(excluded)
    freq = Counter(t for toks in turns for t in toks)
    terms = sorted((t for t, c in freq.items() if c >= recipe.min_count), key=lambda t: (-freq[t], t))[:recipe.vocab]
    vocab = {t: i for i, t in enumerate(terms)}
    m = ppmi(cooccurrence(turns, vocab, recipe.window), recipe.alpha)
    v0 = np.random.default_rng(recipe.seed).standard_normal(min(m.shape))
    u, s, _ = svds(m, k=recipe.dims, v0=v0)
    order = np.argsort(-s)
    vec = u[:, order] * np.sqrt(s[order])
    norms = np.linalg.norm(vec, axis=1)
    kept = norms > 1e-6          # a stem only ever said alone ("hullo") has no context: no vector
    vec = np.ascontiguousarray(vec[kept] / norms[kept, None])
    terms = [t for t, k in zip(terms, kept.tolist()) if k]
    stats = {"turns": len(turns), "tokens": sum(freq.values()), "stems": len(freq)}
    return terms, vec.astype(np.float16), stats


def nearest(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's NEAREST other rows by cosine, closest first: (indices, cosines)."""
    f = vec.astype(np.float32)
    idx = np.zeros((len(f), NEAREST), dtype=np.int16)
    sim = np.zeros((len(f), NEAREST), dtype=np.float16)
    for start in range(0, len(f), 1024):
        block = f[start:start + 1024] @ f.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -1.0     # not itself
        top = np.argpartition(-block, NEAREST, axis=1)[:, :NEAREST]
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        idx[start:start + len(block)] = top
        sim[start:start + len(block)] = np.take_along_axis(block, top, axis=1)
    return idx, sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    for f in fields(Recipe):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    ap.add_argument("--show", nargs="*", default=["adopt", "scare", "job", "guitar", "pup", "vacat"],
                    help="stems whose nearest neighbours to print")
    args = ap.parse_args()
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    started = time.perf_counter()
    excluded = question_set_keys()
    terms, vec, stats = train(excluded, recipe)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    near, near_sim = nearest(vec)
    np.savez_compressed(args.out, terms=np.array(terms), vectors=vec, near=near, near_sim=near_sim,
                        settings=np.array([f"ppmi-svd {recipe.label()} excluded={len(excluded)}"]))
    print(f"{stats['turns']:,} turns, {stats['tokens']:,} tokens, {stats['stems']:,} stems; kept {len(terms):,} "
          f"x {vec.shape[1]} -> {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in "
          f"{time.perf_counter() - started:.0f} s; {len(excluded)} question-set conversations left out")
    at = {t: i for i, t in enumerate(terms)}
    for word in args.show:
        if word in at:
            row = at[word]
            print(f"  {word}: " + ", ".join(f"{terms[j]} {near_sim[row, n]:.2f}" for n, j in enumerate(near[row, :8])))


if __name__ == "__main__":
    main()
