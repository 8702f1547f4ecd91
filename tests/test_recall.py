"""Recall through the API: old words come back from page images read by the CPU reader."""
from __future__ import annotations

import pytest
from optimem.memory.lab.corpus import longest

FACT = "By the way, my sister Marguerite keeps her sailboat Tortuga moored at pier 47 in Halifax."


def conversation(n: int) -> list[dict]:
    turns = longest()[1][:n]
    planted = dict(turns[6])
    planted.update(role="user", content=FACT)
    return turns[:6] + [planted] + turns[7:]


def test_a_planted_fact_comes_back_exactly_from_a_500_turn_real_conversation(api, memory):
    memory.settings.recall_read_s = 3600   # this test is about reading every page, however slow the machine
    turns = conversation(500)
    assert api.post("/v1/sessions", json={"id": "long", "curve": "keep"}).status_code == 201
    for i in range(0, 500, 100):
        assert api.post("/v1/sessions/long/turns", json={"turns": turns[i:i + 100]}).status_code == 200
    got = api.post("/v1/sessions/long/recall", json={"query": "where does Marguerite keep the sailboat",
                                                     "limit": 3}).json()
    best = got["hits"][0]
    assert best["turn"] == 6 and best["page"] == 0 and best["tier"] == "crops"
    assert best["source"] == FACT
    assert best["text"].replace("\n", " ") == FACT          # read back exactly at the sharpest tier
    assert best["char_error"] == 0.0 and best["confidence"] > 0.8
    assert best["found_by"] == "index" and best["searched"] == "source"


def test_recall_by_position_and_time(api):
    turns = conversation(200)
    api.post("/v1/sessions", json={"id": "pos"})
    api.post("/v1/sessions/pos/turns", json={"turns": turns})
    first = api.post("/v1/sessions/pos/recall", json={"turn": "first", "role": "user"}).json()["hits"]
    assert first and first[0]["turn"] == 0 and first[0]["page"] == 0
    assert first[0]["source"] == turns[0]["content"]
    assert first[0]["char_error"] <= 0.05
    assert first[0]["found_by"] == "position" and first[0]["searched"] is None
    last = api.post("/v1/sessions/pos/recall", json={"turn": "last"}).json()["hits"]
    assert last[0]["turn"] == 199 and last[0]["tier"] == "text" and last[0]["text"] == turns[199]["content"]
    window = api.post("/v1/sessions/pos/recall", json={"since": turns[10]["time"], "until": turns[12]["time"],
                                                       "limit": 50}).json()["hits"]
    assert {h["turn"] for h in window} >= {10, 11, 12}
    assert all(turns[10]["time"] <= h["time"] <= turns[12]["time"] for h in window)
    assert {(h["found_by"], h["searched"]) for h in window} == {("time", None)}


def test_forget_for_real_keeps_no_source(api, memory, tenant):
    turns = conversation(200)
    api.post("/v1/sessions", json={"id": "forget", "keep_source": False})
    api.post("/v1/sessions/forget/turns", json={"turns": turns})
    hit = api.post("/v1/sessions/forget/recall", json={"turn": 6}).json()["hits"][0]
    assert hit["page"] == 0
    assert hit.get("source") is None and hit.get("char_error") is None   # no source to give, none to compare
    assert "Marguerite" in hit["text"]           # still readable from the page itself
    assert hit["found_by"] == "position" and hit["searched"] is None
    from optimem.memory.store import SessionKeys
    assert memory.store.r.hlen(SessionKeys(tenant, "forget").source) == 0


def test_faded_pages_read_worse_than_sharp_ones(api):
    turns = conversation(200)
    api.post("/v1/sessions", json={"id": "fade", "curve": {"kind": "step", "steps": [[0, "mosaic16"]]}})
    api.post("/v1/sessions/fade/turns", json={"turns": turns})
    hit = api.post("/v1/sessions/fade/recall", json={"turn": 6}).json()["hits"][0]
    assert hit["tier"] == "mosaic16"
    assert hit["char_error"] > 0.3               # 256 px: the words are gone, as the curve intends


def test_recall_does_not_wait_for_pages_past_its_read_budget(api, memory):
    memory.settings.recall_read_s = 0
    api.post("/v1/sessions", json={"id": "busy"})
    api.post("/v1/sessions/busy/turns", json={"turns": conversation(200)})
    pages = api.get("/v1/sessions/busy").json()["pages"]
    got = api.post("/v1/sessions/busy/recall", json={"query": "Marguerite sailboat", "limit": 1}).json()
    # Found by the index without reading; the one page holding the hit could not be read in time.
    assert pages >= 2 and got["pages_unread"] == 1 and got["pages_read"] == pages - 1 and not got["hits"]
    assert got["seconds"] < 5


LOCKER = "By the way, my storage locker code is 4817-QX, please remember it."


@pytest.mark.parametrize("query", ["storage locker code", "what's the code for my storage locker?"])
def test_right_after_a_500_turn_import_a_planted_fact_is_found_in_under_two_seconds(api, query):
    turns = longest()[1][:500]
    turns[5] = {**turns[5], "role": "user", "content": LOCKER}
    assert api.post("/v1/sessions", json={"id": "import"}).status_code == 201
    assert api.post("/v1/sessions/import/turns", json={"turns": turns}).status_code == 200
    import time
    start = time.monotonic()
    got = api.post("/v1/sessions/import/recall", json={"query": query}).json()
    took = time.monotonic() - start
    best = got["hits"][0]
    assert best["turn"] == 5 and best["source"] == LOCKER and best["page"] == 0
    assert "4817" in best["text"] and best["char_error"] < 0.1      # read back: only that turn's lines
    assert best["found_by"] == "index" and best["searched"] == "source"
    assert got["pages_unread"] == 0
    assert took < 2.0, took


@pytest.mark.parametrize("read, kept", [
    ("user 05:56:", None),                       # the header box read alone
    ("user 05:56: ok", "ok"),                    # a whole row: header, then a short turn
    ("uscr 05:56: hi there", "hi there"),        # with an OCR slip in the header
    ("hello there", "hello there"),              # no header at all
])
def test_the_typeset_header_is_not_part_of_a_turns_text(read, kept):
    from optimem.memory.fragments import strip_header
    line = strip_header({"text": read, "score": 1.0}, ["user 05:56:"])
    assert (line and line["text"]) == kept


def test_hits_say_how_they_were_found_and_on_which_text_through_the_api(api, memory):
    """``found_by``/``searched`` over HTTP, and in the OpenAPI schema: the index on source text in a
    keep-source session (sealed and recent turns alike), on decoded text in a forget-for-real one
    (once its page is read), by position and by time otherwise."""
    schema = api.get("/openapi.json").json()["components"]["schemas"]["Hit"]["properties"]
    assert schema["found_by"]["enum"] == ["index", "position", "time"]
    assert "source" in str(schema["searched"]) and "decoded" in str(schema["searched"])
    memory.settings.recall_read_s = 120
    turns = conversation(200)
    turns[-1] = {**turns[-1], "role": "user", "content": "Tortuga needs new sails before the regatta."}
    for sid, keep in (("kept", True), ("forgot", False)):
        assert api.post("/v1/sessions", json={"id": sid, "keep_source": keep}).status_code == 201
        assert api.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}).status_code == 200
    kept = api.post("/v1/sessions/kept/recall", json={"query": "Marguerite sailboat Tortuga", "limit": 4}).json()
    by_turn = {h["turn"]: h for h in kept["hits"]}
    assert by_turn[6]["page"] == 0 and (by_turn[6]["found_by"], by_turn[6]["searched"]) == ("index", "source")
    assert by_turn[199]["tier"] == "text" and (by_turn[199]["found_by"], by_turn[199]["searched"]) == ("index", "source")
    assert kept["pages_unread"] == 0
    forgot = api.post("/v1/sessions/forgot/recall", json={"query": "Marguerite sailboat Tortuga", "limit": 4}).json()
    by_turn = {h["turn"]: h for h in forgot["hits"]}
    assert by_turn[6]["page"] == 0 and (by_turn[6]["found_by"], by_turn[6]["searched"]) == ("index", "decoded")
    assert by_turn[6]["source"] is None and "Tortuga" in by_turn[6]["text"]
    assert by_turn[199]["tier"] == "text" and by_turn[199]["searched"] == "source"   # recent: plain text
    assert forgot["pages_unread"] == 0 and forgot["pages_read"] == api.get("/v1/sessions/forgot").json()["pages"]
    at = api.post("/v1/sessions/kept/recall", json={"turn": 6}).json()["hits"][0]
    assert (at["found_by"], at["searched"]) == ("position", None)
    window = api.post("/v1/sessions/kept/recall", json={"since": turns[6]["time"], "until": turns[6]["time"]}).json()
    assert window["hits"] and {(h["found_by"], h["searched"]) for h in window["hits"]} == {("time", None)}


def test_forget_for_real_counts_pages_it_could_not_index_in_time(api, memory):
    """A forget-for-real content query must read a page before its text is searchable: pages it
    could not read within the budget are counted unread, never silently left out."""
    memory.settings.recall_read_s = 0
    api.post("/v1/sessions", json={"id": "late", "keep_source": False})
    api.post("/v1/sessions/late/turns", json={"turns": conversation(200)})
    pages = api.get("/v1/sessions/late").json()["pages"]
    got = api.post("/v1/sessions/late/recall", json={"query": "Marguerite sailboat"}).json()
    assert pages >= 2 and got["pages_unread"] == pages and got["pages_read"] == 0 and not got["hits"]
