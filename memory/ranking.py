"""Rerank what the text index found with what the question says (``memory/question.py``).

The index ranks turns by the question's words (BM25). People ask about a person, a time, or a fact
that was the answer to a question asked just before it ("how long have you played?" / "flute since
5th grade"), or that runs over a message sent in parts. So each candidate turn's score is

    (bm25 + ANSWER * bm25 of the turn before, when another role asked it there
           + GOES_ON * bm25 of the turn before, when the same role said it
           + LATER[i] * bm25 of the turn 2 or 3 before, when it asks)
        * (1 + WHO * how much the question is about the turn's role)
        * (1 + WHEN if the turn's time is in the window the question's time words point at)

where bm25 is, with a dense model on (``memory/vectors.py``), BM25 mixed with the similarity in
meaning as z-scores (``mix``). Never a filter: a turn of another role or time still comes first
when its words say so. The weights were set on the question set's ``tune`` half
(``bench/recall.py``) and checked on its held-back half; diverse hits (a turn next to one taken
weighing less) and rank fusion were measured there and lost (bench/RESULTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from optimem.memory import times
from optimem.memory.question import Window

ANSWER = 0.6        # share of the turn before's score an answering turn inherits (another role said it)
GOES_ON = 0.5       # share a turn inherits from the one before by the same role (a message sent in parts)
WHO = 1.0           # boost of the role the question is about
WHEN = 1.0          # boost of a turn inside the question's time window
DENSE_TOP = 50      # turns nearest in meaning added to the index's hits
RERANK = 40         # candidates (after mixing) reranked: each needs its own and its neighbours' role and time
# Shares of an asking turn's score passed to the turns two and three after it: answers that come a
# little later ("what's the most beautiful place you've been?" / a remark / "the Uinta forests").
LATER = (0.6, 0.4)


@dataclass(frozen=True)
class Said:
    """What ranking needs of a turn: who said it, when, and whether it asks (None: its text is not
    at hand, e.g. a forget-for-real session; counted as asking)."""
    role: str
    time: str
    asks: bool | None = None


@dataclass
class Candidate:
    doc: str
    turn: int
    page: int | None
    score: float
    coverage: float
    time_match: str | None = None
    asked_by: int | None = None      # the turn that asks what this answers: just before (another role), or 2-3 before


def mix(found: list[tuple[str, float, float]], dense: dict[int, float], weight: float) -> list[tuple[str, float, float]]:
    """BM25 and a dense similarity (turn -> cosine, every source turn) mixed as z-scores, the
    similarity's at ``weight`` (the model's: ``vectors.Embedder.weight``), over the index's hits
    and the DENSE_TOP turns nearest in meaning; shifted so the lowest is 0. Mixing by rank
    (reciprocal rank fusion) was measured and lost to this."""
    if not dense:
        return found
    import numpy as np

    turns = np.fromiter(dense.keys(), dtype=np.int64)
    cos = np.fromiter(dense.values(), dtype=np.float64)
    z = (cos - cos.mean()) / (cos.std() or 1.0)
    zd = dict(zip(turns.tolist(), z.tolist()))
    bm = np.array([s for _, s, _ in found] or [0.0])
    mean, std = bm.mean(), bm.std() or 1.0
    rows: dict[str, tuple[float, float]] = {doc: (s, c) for doc, s, c in found}
    for i in np.argsort(-z)[:DENSE_TOP].tolist():
        rows.setdefault(f"t{turns[i]}", (0.0, 0.0))
    mixed = []
    for doc, (s, c) in rows.items():
        turn = int(doc[1:]) if doc.startswith("t") else int(doc.split(":")[1])
        mixed.append((doc, (s - mean) / std + weight * zd.get(turn, 0.0), c))
    if not mixed:
        return []
    low = min(m for _, m, _ in mixed)
    return sorted(((d, m - low + 1e-6, c) for d, m, c in mixed), key=lambda r: -r[1])


def rerank(found: list[tuple[str, float, float]], doc_turn: Callable[[str], tuple[int, int | None]],
           said: Callable[[int], Said | None], roles: dict[str, float],
           window: Window | None) -> list[Candidate]:
    """The index's (doc, score, coverage) (after ``mix``) rescored and ordered as the module says.
    ``said`` gives a turn's role, time and whether it asks (None for a turn the session no longer has)."""
    by_turn: dict[tuple[int | None, int], Candidate] = {}
    for doc, score, coverage in found:
        turn, page = doc_turn(doc)
        by_turn.setdefault((page, turn), Candidate(doc, turn, page, score, coverage))
    base = {key: c.score for key, c in by_turn.items()}
    # An answer inherits from the question before it: also a turn the index did not find itself.
    for (page, turn), c in list(by_turn.items()):
        after = (page, turn + 1)
        if after not in by_turn:
            doc = f"t{turn + 1}" if page is None else f"p{page}:{turn + 1}"
            by_turn[after] = Candidate(doc, turn + 1, page, 0.0, c.coverage * ANSWER)
    # A turn that asks passes a share of its score on to the turns a little after it (LATER).
    later: dict[tuple[int | None, int], float] = {}
    asked_at: dict[tuple[int | None, int], int] = {}     # the asking turn each share came from
    for (page, turn), score in base.items():
        asker = said(turn)
        if asker is None or not asker.asks:
            continue
        for step, share in enumerate(LATER, start=2):
            key = (page, turn + step)
            if share * score > later.get(key, 0.0):
                later[key], asked_at[key] = share * score, turn
            if key not in by_turn:
                doc = f"t{turn + step}" if page is None else f"p{page}:{turn + step}"
                by_turn[key] = Candidate(doc, turn + step, page, 0.0, by_turn[(page, turn)].coverage * share)
    out = []
    for (page, turn), c in by_turn.items():
        c.score += later.get((page, turn), 0.0)
        me = said(turn)
        if me is None:
            continue
        before = base.get((page, turn - 1))
        if before:
            prev = said(turn - 1)
            if prev is not None and prev.role == me.role:
                c.score += GOES_ON * before
            elif prev is not None and prev.asks is not False:
                c.score += ANSWER * before
        if turn and (prev := said(turn - 1)) is not None and prev.role != me.role and prev.asks:
            c.asked_by = turn - 1
        elif later.get((page, turn), 0.0) > base.get((page, turn), 0.0):    # found as the answer to it
            c.asked_by = asked_at[(page, turn)]
        if c.score <= 0:
            continue
        c.score *= 1 + WHO * roles.get(me.role, 0.0)
        if window is not None and window.holds(times.parse(me.time)):
            c.score *= 1 + WHEN
            c.time_match = window.label()
        out.append(c)
    return sorted(out, key=lambda c: (-c.score, c.turn))

