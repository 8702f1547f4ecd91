"""In other words: a question's terms and their nearest neighbours in meaning, for the text index.

People ask weeks later in their own words ("afraid" for "scared", "job" for "work"); BM25 only finds
the words a turn has. Word vectors trained offline on public chitchat conversations
(``bench/train_word_vectors.py``; the question set's conversations left out) and shipped in the
package (``data/word_vectors.npz``, float16, the index's own stems) give each query term its nearest
terms, which the index (``memory/index.py``) adds to the question at a weight scaled by their
similarity, only where the session has them. Query side only: appends cost nothing more. Numpy
alone; the file is read once per process, on the first question.
"""
from __future__ import annotations

import calendar
import logging
import threading
import zipfile
from collections.abc import Set
from pathlib import Path

import numpy as np
import Stemmer

log = logging.getLogger("optimem.recall")
PATH = Path(__file__).parent / "data" / "word_vectors.npz"

NEIGHBOURS = 8      # a query term's nearest terms (present in the session) added to the question
WEIGHT = 0.7        # their weight in BM25 and coverage: WEIGHT * similarity (the term itself weighs 1)
KNOWN_SHARE = 0.5   # share of that weight where the session has the query term itself
FLOOR = 0.4         # cosine below which a term is no neighbour
# A related term is read for at most this many docs, those where it weighs most (the index's
# MAX_POSTINGS, for a related term): up to 8 of them per query term, each read like the question's
# own terms, took index search at 100k turns from 10 to 74 ms p50; at 30 it is 16 ms, and the
# question set ranks the same at 30, 50 or 100 (bench/RESULTS.md).
POSTINGS = 30
LOOK = 24           # nearest terms looked up per query term, then kept where the session has them (the
                    # file holds 24 a term)


# Time words are read as a time window (``memory/question.py``), not as topic: their neighbours
# (other months; "graduat" and "school" for "april") would only pull in other times' talk.
TIME_WORDS = frozenset(Stemmer.Stemmer("english").stemWords(
    [w.lower() for w in (*calendar.month_name[1:], *calendar.day_name)]
    + "day week weekend month year today tonight yesterday tomorrow recent last first ago earlier later "
      "morning evening".split()))


class WordVectors:
    """Stems, their unit vectors (float16) and each stem's nearest others, found when trained."""

    def __init__(self, terms: list[str], vectors: np.ndarray, near: np.ndarray, near_sim: np.ndarray):
        self.terms, self.vectors, self._near, self._near_sim = terms, vectors, near, near_sim
        self.at = {t: i for i, t in enumerate(terms)}

    def nearest(self, term: str, n: int = LOOK, floor: float = 0.0) -> list[tuple[str, float]]:
        """Up to ``n`` (stem, cosine) nearest ``term`` at ``floor`` or above, closest first; none for
        a stem the vectors do not know."""
        i = self.at.get(term)
        if i is None:
            return []
        sims = self._near_sim[i, :n].tolist()
        return [(self.terms[j], s) for j, s in zip(self._near[i, :n].tolist(), sims) if s >= floor]


_lock = threading.Lock()
_loaded: list[WordVectors | None] = []


def vectors() -> WordVectors | None:
    """The shipped vectors, loaded on first use (None, logged once, if the file is missing)."""
    if not _loaded:
        with _lock:
            if not _loaded:
                try:
                    with np.load(PATH) as f:
                        _loaded.append(WordVectors(f["terms"].tolist(), f["vectors"], f["near"], f["near_sim"]))
                except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                    log.warning("word vectors %s unreadable (%s): recall matches the question's own words only",
                                PATH, exc)
                    _loaded.append(None)
    return _loaded[0]


def candidates(terms: list[str]) -> dict[str, list[tuple[str, float]]]:
    """query term -> its nearest stems at FLOOR or above (not themselves query terms), closest
    first: what the index checks the session for (``neighbours``)."""
    wv = vectors() if NEIGHBOURS and WEIGHT else None
    if wv is None:
        return {}
    asked = set(terms)
    return {t: [(s, c) for s, c in wv.nearest(t, LOOK, FLOOR) if s not in asked] for t in terms
            if t not in TIME_WORDS}


def neighbours(found: dict[str, list[tuple[str, float]]], present: Set[str], asked_present: Set[str] = frozenset()
               ) -> dict[str, tuple[float, str]]:
    """Index term -> (weight, the query term it stands for): each query term's NEIGHBOURS closest
    stems the session has, at WEIGHT * similarity (times KNOWN_SHARE for a query term the session has
    itself: its own word is the likelier match); a stem near two query terms keeps the higher."""
    out: dict[str, tuple[float, str]] = {}
    for term, near in found.items():
        share = KNOWN_SHARE if term in asked_present else 1.0
        for stem, sim in [(s, c) for s, c in near if s in present][:NEIGHBOURS]:
            if share and (stem not in out or out[stem][0] < WEIGHT * sim * share):
                out[stem] = (WEIGHT * sim * share, term)
    return out
