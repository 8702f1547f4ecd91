"""Recall by meaning by default (issue 21, sixth pass): the static turn-meaning model shipped in the
package (``memory/data/turn_meaning.npz``, ``bench/train_turn_meaning.py``), its vectors per session
in Redis, and what forgetting and deleting do to them. Through the HTTP API on short sessions."""
from __future__ import annotations

import numpy as np

from optimem.memory import index as ix, vectors
from optimem.memory.store import SessionKeys
from optimem.settings import Settings
from tests.test_recall_question import make, recall

MARRIED = [
    {"role": "Priya", "content": "I've talked it over a lot with my spouse too.", "time": "2024-03-05T19:00:00Z"},
    {"role": "Tom", "content": "We watched a film about sharks last night.", "time": "2024-03-05T19:01:00Z"},
    {"role": "Priya", "content": "The weather was lovely for a walk by the river.", "time": "2024-03-05T19:02:00Z"},
    {"role": "Tom", "content": "My laptop keeps crashing when I open spreadsheets.", "time": "2024-03-05T19:03:00Z"},
]
QUESTION = "Is Priya married?"


def test_the_shipped_model_is_small_numpy_and_speaks_in_index_stems():
    with np.load(vectors.STEMS_PATH) as f:
        terms, idf, rows, made = list(f["terms"]), f["idf"], f["vectors"], str(f["settings"][0])
    assert vectors.STEMS_PATH.stat().st_size < 5_000_000 and rows.shape == (len(terms), 128)
    assert 5_000 <= len(terms) <= 40_000 and len(set(terms)) == len(terms) and idf.shape == (len(terms),)
    assert "work" in terms and "working" not in terms          # the index's stems
    assert "excluded=18" in made                                # the question set's conversations left out
    model = vectors.embedder("stems")
    assert model is not None and model.name == "stems" and model.expand and model.floor == vectors.STEMS_FLOOR
    married, spouse, weather = model(["is she married", "my spouse and I", "the weather was lovely"])
    assert married @ spouse > 0.5 > married @ weather          # near in meaning, no word shared
    assert not model(["qwxz zzkq"]).any()                       # no known stem: a zero row


def test_by_default_recall_finds_a_turn_by_meaning_where_words_find_another(api, memory, tenant, monkeypatch):
    assert Settings.embed_model == "stems" and memory.settings.embed_model == "stems"
    assert not set(ix.query_terms(QUESTION)) & set(ix.tokens(MARRIED[0]["content"]))
    make(api, "married", MARRIED)
    hits = recall(api, "married", query=QUESTION, limit=2)
    assert hits[0]["turn"] == 0 and hits[0]["match"] == 0.0      # found by meaning: no word of the question
    k = SessionKeys(tenant, "married")
    fields = [f.decode() for f in memory.store.r.hkeys(k.vectors)]
    assert sorted(fields) == sorted([vectors.GENERATION, "stems:128:0"])    # the rows and their generation
    assert k.vectors.startswith(k.tag)                                   # one cluster slot
    # Words alone (OPTIMEM_EMBED_MODEL=words) do not find it first.
    monkeypatch.setattr(memory.settings, "embed_model", "words")
    assert [h["turn"] for h in recall(api, "married", query=QUESTION, limit=2)][:1] != [0]


def test_a_question_with_no_known_word_or_far_from_every_turn_finds_nothing_by_meaning(api, memory, tenant):
    make(api, "far", MARRIED)
    assert recall(api, "far", query="qwxz zzkq", limit=3) == []        # a zero vector: words alone
    assert recall(api, "far", query="她结婚了吗", limit=3) == []          # a language the model does not know
    assert not memory.store.r.exists(SessionKeys(tenant, "far").vectors)    # so nothing was embedded
    # Known words, but no turn within the floor's cosine and none sharing a word: nothing.
    assert recall(api, "far", query="tax deductions for freelance accountants", limit=3) == []


def test_a_forgotten_turn_leaves_the_vectors_and_is_no_longer_found_by_meaning(api, memory, tenant):
    make(api, "forget", MARRIED)
    assert recall(api, "forget", query=QUESTION, limit=1)[0]["turn"] == 0
    k = SessionKeys(tenant, "forget")
    r = memory.store.r
    before = r.hget(k.vectors, "stems:128:0")
    assert np.frombuffer(before, dtype=np.float16).reshape(-1, 128)[0].any()
    assert api.delete("/v1/sessions/forget/turns/0").status_code == 200
    # The forget dropped every row and moved the generation: no process serves its old copy.
    assert [f.decode() for f in r.hkeys(k.vectors)] == [vectors.GENERATION]
    assert 0 < r.ttl(k.vectors) <= vectors.VEC_TTL_S
    hits = recall(api, "forget", query=QUESTION, limit=3)
    assert 0 not in [h["turn"] for h in hits]
    after = np.frombuffer(r.hget(k.vectors, "stems:128:0"), dtype=np.float16).reshape(-1, 128)
    assert len(after) == 4 and not after[0].any() and after[1:].any()     # made again from the emptied text


def test_a_session_made_again_after_delete_has_no_old_vectors(api, memory, tenant):
    make(api, "again", MARRIED)
    recall(api, "again", query=QUESTION, limit=1)
    k = SessionKeys(tenant, "again")
    assert memory.store.r.exists(k.vectors)
    assert api.delete("/v1/sessions/again").status_code in (200, 204)
    assert not memory.store.r.exists(k.vectors)
    other = [{**t, "content": "Spreadsheets again."} for t in MARRIED[:2]]
    make(api, "again", other)
    assert recall(api, "again", query=QUESTION, limit=3) == []           # nothing of the old text answers


def test_a_session_made_again_with_as_many_turns_is_not_served_from_an_old_copy(api, memory, tenant):
    """This process's copy of a deleted session's vectors must not answer for a new session of the
    same name and turn count: the copy is keyed by a generation every build sets, not by turns alone."""
    make(api, "same", MARRIED)
    assert recall(api, "same", query=QUESTION, limit=1)[0]["turn"] == 0
    assert api.delete("/v1/sessions/same").status_code in (200, 204)
    make(api, "same", [{**t, "content": "Spreadsheets again."} for t in MARRIED])
    assert recall(api, "same", query=QUESTION, limit=3) == []
    generation = memory.store.r.hget(SessionKeys(tenant, "same").vectors, vectors.GENERATION)
    assert generation                                                   # set by the build itself


def test_appended_turns_are_embedded_when_next_asked(api, memory, tenant):
    make(api, "grows", MARRIED[:2])
    recall(api, "grows", query=QUESTION, limit=1)
    k = SessionKeys(tenant, "grows")
    assert len(memory.store.r.hget(k.vectors, "stems:128:0")) == 2 * 128 * 2
    api.post("/v1/sessions/grows/turns", json={"turns": MARRIED[2:]})
    recall(api, "grows", query="what about the laptop crashing", limit=1)
    assert len(memory.store.r.hget(k.vectors, "stems:128:0")) == 4 * 128 * 2


def test_this_process_keeps_vectors_within_its_byte_budget_least_recently_asked_first(api, tenant, monkeypatch):
    """A tenant asking many big sessions must not grow an API process without bound: the copies
    stay within CACHE_BYTES, the least recently asked dropped first."""
    row_bytes = 4 * 128 * len(MARRIED)                  # one session's float32 rows here
    monkeypatch.setattr(vectors, "CACHE_BYTES", 2 * row_bytes)
    names = ["lru-a", "lru-b", "lru-c"]
    for name in names:
        make(api, name, MARRIED)
    recall(api, "lru-a", query=QUESTION, limit=1)
    recall(api, "lru-b", query=QUESTION, limit=1)
    recall(api, "lru-a", query=QUESTION, limit=1)      # a asked again: b is now the least recent
    recall(api, "lru-c", query=QUESTION, limit=1)
    kept = {tag for tag, _ in vectors._cache}
    assert SessionKeys(tenant, "lru-a").tag in kept and SessionKeys(tenant, "lru-c").tag in kept
    assert SessionKeys(tenant, "lru-b").tag not in kept
    held = sum(rows.nbytes for _, _, rows in vectors._cache.values())
    assert held <= 2 * row_bytes and vectors._cache_bytes == held      # the running total is the rows' sum
    assert recall(api, "lru-b", query=QUESTION, limit=1)[0]["turn"] == 0     # dropped copies are rebuilt
    api.post("/v1/sessions/lru-b/turns", json={"turns": MARRIED[:1]})     # b grows: its copy is replaced
    recall(api, "lru-b", query=QUESTION, limit=1)
    assert vectors._cache_bytes == sum(rows.nbytes for _, _, rows in vectors._cache.values())
