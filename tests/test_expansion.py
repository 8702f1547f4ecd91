"""Recall in other words (issue 21): a question's terms also match their nearest terms in meaning,
from word vectors trained offline on chitchat (bench/train_word_vectors.py) and shipped in the
package. Through the HTTP API on short sessions; the shipped file on its own."""
from __future__ import annotations

import numpy as np

from optimem.memory import expansion, index as ix, vectors
from optimem.memory.store import SessionKeys
from tests.test_recall_question import make, recall

WORK = [
    {"role": "user", "content": "I work nights at the hospital as a nurse.", "time": "2024-03-05T19:00:00Z"},
    {"role": "assistant", "content": "We watched a film about sharks last night.", "time": "2024-03-05T19:01:00Z"},
    {"role": "user", "content": "The weather was lovely for a walk.", "time": "2024-03-05T19:02:00Z"},
]


def test_the_shipped_word_vectors_load_with_the_shape_they_were_trained_to():
    wv = expansion.vectors()
    assert wv is not None and expansion.PATH.stat().st_size < 5_000_000       # a few MB in the wheel
    n = len(wv.terms)
    assert 5_000 <= n <= 40_000 and len(set(wv.terms)) == n
    assert wv.vectors.shape == (n, 128) and wv.vectors.dtype == np.float16
    norms = np.linalg.norm(wv.vectors.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=0.01)
    # The index's own terms: stems, stop words out ("working" is indexed as "work").
    assert "work" in wv.at and ix.tokens("working") == ["work"] and "working" not in wv.at
    near = wv.nearest("job", 8, expansion.FLOOR)
    assert "work" in dict(near) and all(a >= b >= expansion.FLOOR for (_, a), (_, b) in zip(near, near[1:]))
    assert wv.nearest("no-such-stem") == [] and expansion.vectors() is wv        # loaded once


def test_a_question_in_other_words_finds_the_turn_by_its_trained_neighbour(api, memory, tenant, monkeypatch):
    make(api, "jobs", WORK)
    assert "job" not in ix.tokens(WORK[0]["content"])        # the question's word is not in the turn
    hits = recall(api, "jobs", query="What is my job?", limit=1)
    assert hits[0]["turn"] == 0 and 0 < hits[0]["match"] < 1   # found by "work", which weighs less
    films = recall(api, "jobs", query="Which movie did we see?", limit=1)
    assert films[0]["turn"] == 1                                # "film" for "movie"
    # Without the neighbours (and words alone) the same question finds nothing: no turn has "job".
    monkeypatch.setattr(expansion, "NEIGHBOURS", 0)
    monkeypatch.setattr(memory.settings, "embed_model", "words")
    assert recall(api, "jobs", query="What is my job?", limit=1) == []
    assert vectors.expands("")                                  # words alone: on by default
    k = SessionKeys(tenant, "jobs")
    assert ix.search(memory.store.r, k.tag, "job", expand=False) == []


def test_the_words_asked_still_come_first(api):
    turns = WORK + [{"role": "user", "content": "My job is boring but the pay is fine.",
                     "time": "2024-03-05T19:03:00Z"}]
    make(api, "jobs-too", turns)
    assert [h["turn"] for h in recall(api, "jobs-too", query="What is my job?", limit=2)] == [3, 0]
