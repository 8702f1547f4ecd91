"""The per-session text index: find turns without reading pages (memory/index.py)."""
from __future__ import annotations

import pytest

from optimem.memory import index as ix
from optimem.memory.lab.corpus import chinese, longest
from optimem.memory.store import SessionKeys

FACT = "By the way, my sister Marguerite keeps her sailboat Tortuga moored at pier 47 in Halifax."


def turns_with(n: int, at: int = 6, content: str = FACT) -> list[dict]:
    turns = longest()[1][:n]
    turns[at] = {**turns[at], "role": "user", "content": content}
    return turns


def found(memory, k: SessionKeys, query: str, top: int = 5) -> list[int]:
    return [ix.doc_turn(doc)[0] for doc, _, _ in memory.store.search(k, query)[:top]]


def test_tokens_stem_latin_split_identifiers_and_gram_cjk():
    assert ix.tokens("Storage lockers") == ["storag", "locker"]
    assert ix.query_terms("what's the code for my storage locker?") == ["code", "storag", "locker"]
    assert {"parsehttprequest", "pars", "http", "request"} <= set(ix.tokens("call parseHttpRequest()"))
    assert {"max_retry_count", "max", "retri", "count"} <= set(ix.tokens("max_retry_count = 3"))
    assert ix.tokens("储物柜") == ["储", "物", "柜", "储物", "物柜"]
    assert ix.query_terms("what did we talk about") == ["talk"]      # never empty when words remain
    assert ix.tokens("THe Storage") == ["storag"] and ix.query_terms("WHat is THe code") == ["code"]   # stop words in odd case


def test_append_indexes_turns_at_once_and_paraphrases_find_them(memory, tenant):
    memory.create_session("idx", curve="keep", tenant=tenant)
    turns = turns_with(300, at=40, content="my storage locker code is 4817-QX")
    turns[120] = {**turns[120], "content": "the crash is in parseHttpRequest when max_retry_count hits 0"}
    memory.append("idx", turns, tenant=tenant)
    k = SessionKeys(tenant, "idx")
    worded = sum(1 for t in turns if ix.tokens(t["content"]))   # "ok", "yes": nothing to index
    assert int(memory.store.r.hget(ix.stats_key(k.tag), "docs")) == worded >= 280   # sealed or not
    for query in ("storage locker code", "what's the code for my storage locker?", "storage lockers",
                  "4817-QX", "storag locker cdoe"):                            # the last: typos, fuzzy
        assert found(memory, k, query)[0] == 40, query
    for query in ("parseHttpRequest", "parse http request", "max_retry_count"):
        assert found(memory, k, query)[0] == 120, query


def test_fuzzy_matching_reads_the_vocabulary_again_only_past_one_percent_more_turns(memory, tenant, monkeypatch):
    """A question follows every append in a chat: the vocabulary (for typos) is not read again for
    each one, only once the session has 1% more documents, or fewer (a forget)."""
    memory.create_session("voc", curve="keep", tenant=tenant)
    turns = turns_with(300, at=40, content="my storage locker code is 4817-QX")
    memory.append("voc", turns, tenant=tenant)
    k = SessionKeys(tenant, "voc")
    reads = []
    zrange = memory.store.r.zrange
    monkeypatch.setattr(memory.store.r, "zrange", lambda key, *a, **kw: (
        reads.append(key) if key == ix.vocab_key(k.tag) else None) or zrange(key, *a, **kw))
    assert found(memory, k, "storag lockr cdoe")[0] == 40 and len(reads) == 1
    memory.append("voc", [{"role": "user", "content": "my neighbour Wilhelmina fixed the boiler"}], tenant=tenant)
    assert found(memory, k, "storag lockr cdoe")[0] == 40 and len(reads) == 1       # one doc more: cached
    assert found(memory, k, "Wilhelmina")[0] == 300                                  # exact: found at once
    memory.append("voc", [{"role": "user", "content": f"turn number {i} about gardening"} for i in range(3)],
                  tenant=tenant)
    assert found(memory, k, "Wilhelmna")[0] == 300 and len(reads) == 2              # past 1%: read again
    memory.forget("voc", 300, tenant=tenant)
    found(memory, k, "storag lockr")
    assert len(reads) == 3                                                            # fewer docs: read again


def test_chinese_turns_are_found_by_a_phrase_of_them(memory, tenant):
    memory.create_session("zh", curve="keep", tenant=tenant)
    turns = chinese()                       # 22 paragraphs of real Chinese chat
    memory.append("zh", turns, tenant=tenant)
    k = SessionKeys(tenant, "zh")
    top = [found(memory, k, t["content"][len(t["content"]) // 3:][:8], top=1) for t in turns]
    assert sum(t == [i] for i, t in enumerate(top)) >= 20, top


def test_deleting_a_session_removes_its_index(memory, tenant):
    memory.create_session("del", tenant=tenant)
    memory.append("del", turns_with(50), tenant=tenant)
    k = SessionKeys(tenant, "del")
    assert list(memory.store.r.scan_iter(match=f"{k.tag}:ix:*"))
    memory.delete_session("del", tenant=tenant)
    assert not list(memory.store.r.scan_iter(match=f"{k.tag}:*"))


@pytest.mark.slow
def test_forget_for_real_finds_readable_pages_by_decoded_text_and_nothing_once_gone(memory, tenant):
    curve = {"kind": "step", "unit": "turns", "steps": [[0, "crops"], [150, "gone"]]}
    memory.create_session("ffr", curve=curve, keep_source=False, tenant=tenant)
    memory.append("ffr", turns_with(120), tenant=tenant)
    k = SessionKeys(tenant, "ffr")
    assert found(memory, k, "Marguerite sailboat") == []           # sealed: not held in words any more
    page0 = memory.pages("ffr", tenant=tenant)[0]
    assert page0.tier == "crops" and any(t["index"] == 6 for t in page0.turns)
    memory.handle_job({"kind": "decode", "tenant": tenant, "session": "ffr", "page": "0", "tier": "crops"})
    assert found(memory, k, "Marguerite sailboat")[0] == 6        # read once: searchable by its decoded text
    memory.settings.recall_read_s = 120
    got = memory.recall("ffr", "where does Marguerite keep her sailboat", tenant=tenant)
    assert got.hits[0].turn == 6 and got.hits[0].source is None and "Tortuga" in got.hits[0].text
    assert (got.hits[0].found_by, got.hits[0].searched) == ("index", "decoded")   # no source: its page's read
    assert got.pages_unread == 0
    memory.append("ffr", longest()[1][200:320], tenant=tenant)    # page 0 fades to gone
    assert memory.pages("ffr", tenant=tenant)[0].tier == "gone"
    assert not memory.store.r.hexists(ix.pages_key(k.tag), 0)
    docs = [d.decode() for d in memory.store.r.hkeys(ix.docs_key(k.tag))]
    assert not [d for d in docs if d.startswith("p0:")]
    for query in ("Marguerite sailboat", "Tortuga pier 47 Halifax", "sister"):
        assert 6 not in found(memory, k, query, top=50)
        assert all(h.turn != 6 for h in memory.recall("ffr", query, tenant=tenant).hits)


def test_a_term_past_the_postings_cap_keeps_its_true_weight(memory, tenant, monkeypatch):
    """Past MAX_POSTINGS docs a term is read only for its heaviest docs; its idf still comes from
    its true document count, and a turn it misses is still found by the query's rarer words."""
    memory.create_session("cap", curve="keep", tenant=tenant)
    turns = [{"role": "user", "content": f"the weather today is fine number {i}"} for i in range(60)]
    turns[30] = {"role": "user", "content": "the weather at the pier of Halifax today"}
    memory.append("cap", turns, tenant=tenant)
    k = SessionKeys(tenant, "cap")
    whole = memory.store.search(k, "weather Halifax", limit=100)
    monkeypatch.setattr(ix, "MAX_POSTINGS", 10)
    capped = memory.store.search(k, "weather Halifax", limit=100)
    assert ix.doc_turn(capped[0][0])[0] == 30 == ix.doc_turn(whole[0][0])[0]
    scores = dict((doc, score) for doc, score, _ in whole)
    read = [(doc, score) for doc, score, _ in capped if doc != capped[0][0]]
    assert len(read) == 10                                  # the cap: 'weather' read for 10 docs
    for doc, score in read:                                 # same idf: the vocabulary's true count
        assert score == pytest.approx(scores[doc])
