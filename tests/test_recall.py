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


def test_recall_by_position_and_time(api):
    turns = conversation(200)
    api.post("/v1/sessions", json={"id": "pos"})
    api.post("/v1/sessions/pos/turns", json={"turns": turns})
    first = api.post("/v1/sessions/pos/recall", json={"turn": "first", "role": "user"}).json()["hits"]
    assert first and first[0]["turn"] == 0 and first[0]["page"] == 0
    assert first[0]["source"] == turns[0]["content"]
    assert first[0]["char_error"] <= 0.05
    last = api.post("/v1/sessions/pos/recall", json={"turn": "last"}).json()["hits"]
    assert last[0]["turn"] == 199 and last[0]["tier"] == "text" and last[0]["text"] == turns[199]["content"]
    window = api.post("/v1/sessions/pos/recall", json={"since": turns[10]["time"], "until": turns[12]["time"],
                                                       "limit": 50}).json()["hits"]
    assert {h["turn"] for h in window} >= {10, 11, 12}
    assert all(turns[10]["time"] <= h["time"] <= turns[12]["time"] for h in window)


def test_forget_for_real_keeps_no_source(api, memory, tenant):
    turns = conversation(200)
    api.post("/v1/sessions", json={"id": "forget", "keep_source": False})
    api.post("/v1/sessions/forget/turns", json={"turns": turns})
    hit = api.post("/v1/sessions/forget/recall", json={"turn": 6}).json()["hits"][0]
    assert hit["page"] == 0
    assert hit.get("source") is None and hit.get("char_error") is None   # no source to give, none to compare
    assert "Marguerite" in hit["text"]           # still readable from the page itself
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
    got = api.post("/v1/sessions/busy/recall", json={"query": "Marguerite sailboat"}).json()
    assert got["pages_unread"] == pages >= 2 and got["pages_read"] == 0
    assert got["seconds"] < 5


@pytest.mark.parametrize("read, kept", [
    ("user 05:56:", None),                       # the header box read alone
    ("user 05:56: ok", "ok"),                    # a whole row: header, then a short turn
    ("uscr 05:56: hi there", "hi there"),        # with an OCR slip in the header
    ("hello there", "hello there"),              # no header at all
])
def test_the_typeset_header_is_not_part_of_a_turns_text(read, kept):
    from optimem.memory.recall import strip_header
    line = strip_header({"text": read, "score": 1.0}, ["user 05:56:"])
    assert (line and line["text"]) == kept
