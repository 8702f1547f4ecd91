"""The service through its HTTP API, on a real embedded Redis."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from optimem.memory.lab.corpus import longest
from optimem.api import schemas
from optimem.memory.store import SessionKeys


@pytest.fixture(scope="module")
def chat():
    return longest()[1]


def make(api, sid="s1", **body):
    r = api.post("/v1/sessions", json={"id": sid, **body})
    assert r.status_code == 201, r.text
    return sid


def append(api, sid, turns):
    r = api.post(f"/v1/sessions/{sid}/turns", json={"turns": turns})
    assert r.status_code == 200, r.text
    return r.json()


def test_session_lifecycle(api):
    make(api, "alpha", curve="gentle", keep_source=False)
    got = api.get("/v1/sessions/alpha").json()
    assert got["curve"]["kind"] == "exponential" and got["keep_source"] is False and got["turns"] == 0
    assert api.get("/v1/sessions").json() == {"sessions": ["alpha"]}
    assert api.delete("/v1/sessions/alpha").status_code == 204
    assert api.get("/v1/sessions/alpha").status_code == 404
    generated = api.post("/v1/sessions").json()["id"]
    assert api.get(f"/v1/sessions/{generated}").status_code == 200


def test_api_keys_separate_tenants(api):
    make(api, "mine")
    other = api.get("/v1/sessions/mine", headers={"Authorization": "Bearer wrong"})
    assert other.status_code == 401 and "API key" in other.json()["detail"]


@pytest.mark.parametrize("method, path, body, status, words", [
    ("get", "/v1/sessions/nobody", None, 404, "no session"),
    ("post", "/v1/sessions", {"id": "bad id!"}, 422, "session id"),
    ("post", "/v1/sessions", {"curve": {"kind": "step", "steps": [[0, "fuzzy"]]}}, 422, "unknown tier"),
    ("post", "/v1/sessions/s1/turns", {"turns": []}, 422, "at least 1"),
    ("post", "/v1/sessions/s1/turns", {"turns": [{"role": "user", "content": "   "}]}, 422, "non-empty"),
    ("post", "/v1/sessions/s1/turns", {"turns": [{"content": "hi"}]}, 422, "role"),
    ("post", "/v1/sessions/s1/turns", {"turns": [{"role": "user", "content": "x" * 100_001}]}, 422, "limit"),
    ("post", "/v1/sessions/s1/turns", {"turns": [{"role": "user", "content": "hi", "time": "yesterday"}]}, 422, "ISO 8601"),
    ("post", "/v1/sessions/nobody/turns", {"turns": [{"role": "user", "content": "hi"}]}, 404, "no session"),
    ("get", "/v1/sessions/s1/context?format=xml", None, 422, "format"),
    ("get", "/v1/sessions/s1/context?budget=-3", None, 422, "budget"),
    ("get", "/v1/sessions/s1/pages/0/image", None, 404, "no page"),
    ("post", "/v1/sessions/s1/recall", {}, 422, "needs a 'query'"),
    ("post", "/v1/sessions/s1/recall", {"query": ""}, 422, "non-empty"),
    ("put", "/v1/sessions/s1/curve", {"curve": "sometimes"}, 422, "unknown curve preset"),
])
def test_bad_input_gets_a_4xx_that_says_what_to_fix(api, method, path, body, status, words):
    make(api)
    r = getattr(api, method)(path, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_malformed_json_is_a_422(api):
    make(api)
    r = api.post("/v1/sessions/s1/turns", content=b'{"turns": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def every_turn_is_somewhere(memory, tenant, sid, turns_sent):
    """Each turn's text is covered exactly once: by sealed pages, then by the text kept."""
    k = SessionKeys(tenant, sid)
    covered = {i: [] for i in range(len(turns_sent))}
    for page in memory.store.pages(k):
        for span in page.turns:
            covered[span["index"]].append((span["start"], span["end"]))
    for turn in memory.store.text_turns(k):
        covered[turn.index].append((turn.start, len(turn.content)))
    for index, spans in covered.items():
        spans.sort()
        assert spans and spans[0][0] == 0, f"turn {index} lost its beginning: {spans}"
        for (a, b), (c, d) in zip(spans, spans[1:]):
            assert b == c, f"turn {index} has a gap or overlap: {spans}"
        assert spans[-1][1] == len(turns_sent[index]["content"]), f"turn {index} lost its end: {spans}"


def test_old_turns_are_sealed_into_pages_and_nothing_is_lost(api, memory, tenant, chat):
    make(api)
    sealed = []
    for i in range(0, 300, 50):
        sealed += append(api, "s1", chat[i:i + 50])["sealed_pages"]
    assert sealed == list(range(len(sealed))) and len(sealed) >= 2
    info = api.get("/v1/sessions/s1").json()
    assert info["turns"] == 300 and info["pages"] == len(sealed)
    every_turn_is_somewhere(memory, tenant, "s1", chat[:300])
    ctx = api.get("/v1/sessions/s1/context").json()
    recent = sum(t["tokens"] for t in ctx["turns"])
    assert recent == ctx["accounting"]["recent_text_tokens"]
    # recent text stays within the budget plus at most one page's worth (only full pages are sealed)
    assert 300 <= recent <= 300 + max(p["text_tokens"] for p in ctx["pages"])


def test_a_turn_longer_than_a_page_continues_on_the_next(api, memory, tenant, chat):
    make(api)
    long_turn = {"role": "user", "content": " ".join(t["content"] for t in chat[:1000])}
    turns = [long_turn] + chat[1000:1060]
    append(api, "s1", turns)
    k = SessionKeys(tenant, "s1")
    pages = memory.store.pages(k)
    assert len(pages) >= 2 and all(p.first_turn == 0 for p in pages[:2])
    assert pages[1].first_offset == pages[0].end_offset > 0
    every_turn_is_somewhere(memory, tenant, "s1", turns)


def test_context_accounting_and_budget(api, chat):
    make(api, curve="keep")
    append(api, "s1", chat[:300])
    ctx = api.get("/v1/sessions/s1/context").json()
    a = ctx["accounting"]
    assert a["text_tokens_replaced"] == sum(p["text_tokens"] for p in ctx["pages"])
    assert a["visual_tokens"] == pytest.approx(sum(p["visual_tokens"] for p in ctx["pages"]))
    assert a["compression"] == pytest.approx(a["text_tokens_replaced"] / a["visual_tokens"], abs=0.01)
    assert all(p["tier"] == "crops" and p["visual_tokens"] == 833 for p in ctx["pages"])
    budget = a["recent_text_tokens"] + 833
    tight = api.get("/v1/sessions/s1/context", params={"budget": budget}).json()
    t = tight["accounting"]
    # one crops page's worth of budget: every page still goes, faded instead of dropped
    assert t["pages"] == len(ctx["pages"]) and t["dropped_pages"] == 0 and t["pages_faded_by_budget"] > 0
    assert t["total_tokens"] <= budget
    assert [p["curve_tier"] for p in tight["pages"]] == ["crops"] * len(ctx["pages"])


def test_openai_format_gives_images_then_recent_text(api, chat):
    make(api, curve="detailed")   # a page an image (mosaic tiers share a canvas)
    append(api, "s1", chat[:300])
    ctx = api.get("/v1/sessions/s1/context", params={"format": "openai"}).json()
    memory_message, *recent = ctx["messages"]
    images = [p for p in memory_message["content"] if p["type"] == "image_url"]
    assert len(images) == ctx["accounting"]["pages"] >= 2
    assert images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert [m["content"] for m in recent] == [t["content"] for t in chat[300 - len(recent):300]]
    served = api.get("/v1/sessions/s1/context", params={"format": "openai", "images": "url"}).json()
    url = served["messages"][0]["content"][1]["image_url"]["url"]
    png = api.get(url)
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (1024, 1024)


def test_page_images_fade_by_resize(api, chat):
    make(api)
    append(api, "s1", chat[:200])
    full = Image.open(io.BytesIO(api.get("/v1/sessions/s1/pages/0/image?tier=full").content))
    faded = Image.open(io.BytesIO(api.get("/v1/sessions/s1/pages/0/image?tier=v768").content))
    assert full.size == (1024, 1024) and faded.size == (768, 768)
    assert api.get("/v1/sessions/s1/pages/0/image?tier=blurry").status_code == 422
    mosaic = api.get("/v1/sessions/s1/mosaics/mosaic4/0/image")
    assert Image.open(io.BytesIO(mosaic.content)).size == (1024, 1024)


def test_changing_the_curve_retiers_pages(api, chat):
    make(api, curve="keep")
    append(api, "s1", chat[:300])
    assert {p["tier"] for p in api.get("/v1/sessions/s1/context").json()["pages"]} == {"crops"}
    steep = {"kind": "step", "steps": [[0, "v768"], [40, "mosaic16"]]}
    assert api.put("/v1/sessions/s1/curve", json={"curve": steep}).status_code == 200
    tiers = [p["tier"] for p in api.get("/v1/sessions/s1/context").json()["pages"]]
    assert tiers and set(tiers) <= {"v768", "mosaic16"} and "mosaic16" in tiers
    api.put("/v1/sessions/s1/curve", json={"curve": {"kind": "step", "steps": [[0, "gone"]]}})
    gone = api.get("/v1/sessions/s1/context").json()
    assert gone["pages"] == [] and gone["accounting"]["pages_forgotten"] >= 2


def test_openapi_documents_every_path(api):
    paths = api.get("/openapi.json").json()["paths"]
    for path in ["/v1/sessions", "/v1/sessions/{session}", "/v1/sessions/{session}/turns",
                 "/v1/sessions/{session}/context", "/v1/sessions/{session}/pages/{page}/image",
                 "/v1/sessions/{session}/recall", "/v1/sessions/{session}/curve", "/healthz"]:
        assert path in paths
    assert "image/png" in json.dumps(paths["/v1/sessions/{session}/pages/{page}/image"])


# -- issue 25, item 12: the document and the validators agree ---------------------------------------
@pytest.mark.parametrize("session", [".", ".."])
def test_session_ids_dot_and_dot_dot_are_refused(api, session):
    r = api.post("/v1/sessions", json={"id": session})
    assert r.status_code == 422 and "not '.' or '..'" in r.json()["detail"]
    assert api.post("/v1/sessions", json={"id": "..."}).status_code == 201   # only the two path words


@pytest.mark.parametrize("content", ["\u200b", "\u200b\u200d \ufeff", "\u2060\u00ad"])
def test_a_turn_of_only_invisible_characters_is_refused(api, content):
    make(api)
    r = api.post("/v1/sessions/s1/turns", json={"turns": [{"role": "user", "content": content}]})
    assert r.status_code == 422 and "invisible" in r.json()["detail"]
    assert api.get("/v1/sessions/s1").json()["turns"] == 0


def test_a_405_lists_every_method_of_the_path(api):
    make(api)
    r = api.put("/v1/sessions/s1")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    assert api.patch("/v1/sessions").headers["allow"] == "DELETE, GET, POST"   # DELETE: every session (issue 24)


def test_the_document_declares_the_key_and_the_patterns(api, memory):
    doc = api.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["apiKey"] == {**doc["components"]["securitySchemes"]["apiKey"],
                                                              "type": "http", "scheme": "bearer"}
    turns = doc["paths"]["/v1/sessions/{session}/turns"]["post"]
    assert turns["security"] == [{"apiKey": []}] and "authorization" not in json.dumps(turns["parameters"])
    assert {} in doc["paths"]["/healthz"]["get"]["security"]                      # open, more with a key
    session = next(p for p in doc["paths"]["/inspect/{session}"]["get"]["parameters"] if p["name"] == "session")
    assert session["schema"]["pattern"] == schemas.SESSION_ID
    tier = next(p for p in doc["paths"]["/v1/sessions/{session}/pages/{page}/image"]["get"]["parameters"]
                if p["name"] == "tier")
    assert "gone" not in tier["schema"]["enum"]
    assert doc["components"]["schemas"]["TextTurn"]["properties"]["time"]["format"] == "date-time"
    assert not memory.encodes()                       # the CPU backend: no visual tokens offered
    assert "/v1/sessions/{session}/tokens/{unit}" not in doc["paths"]
    fmt = next(p for p in doc["paths"]["/v1/sessions/{session}/context"]["get"]["parameters"] if p["name"] == "format")
    assert "embeddings" not in json.dumps(fmt["schema"])
