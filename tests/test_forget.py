"""Forgetting a turn for real: its text leaves every key of the session, the page's pixels and,
once Redis has rewritten its files, the disk; its number stays, and its neighbours still read back."""
from __future__ import annotations

import json

import pytest

from optimem.memory.lab.corpus import longest
from optimem.memory.store import SessionKeys

PLANTED = "remember my vault phrase: Quixotic Zephyr 4417 Marmalade"
MARKS = (b"zephyr", b"marmalade", b"quixotic")      # any of its words, in any case


def holds(blob: bytes) -> bool:
    low = blob.lower()
    return any(mark in low for mark in MARKS)


def session_content(r, k: SessionKeys) -> list[bytes]:
    """Every key of the session: its name and everything in it, whatever its type."""
    out = []
    for key in r.scan_iter(match=f"{k.tag}*", count=1000):
        kind = r.type(key)
        out.append(key)
        if kind == b"string":
            out.append(r.get(key))
        elif kind == b"hash":
            out += [x for pair in r.hgetall(key).items() for x in pair]
        elif kind == b"set":
            out += list(r.smembers(key))
        elif kind == b"zset":
            out += [member for member, _ in r.zrange(key, 0, -1, withscores=True)]
        else:
            raise AssertionError(f"{key!r}: a {kind!r} the test can't read")
    return out


def files_hold(directory) -> list[str]:
    return [str(f) for f in directory.rglob("*") if f.is_file() and holds(f.read_bytes())]


@pytest.fixture
def planted(api, memory, tenant):
    """A 500-turn session of real chat, turn 100 holding the planted phrase, its page sealed."""
    chat = [dict(t) for t in longest()[1][:500]]
    chat[100] = {**chat[100], "content": PLANTED}
    assert api.post("/v1/sessions", json={"id": "s"}).status_code == 201
    assert api.post("/v1/sessions/s/turns", json={"turns": chat}).status_code == 200
    k = SessionKeys(tenant, "s")
    page = memory.store.pages_holding(k, [100])[0].page
    return chat, k, page


def test_a_forgotten_turn_leaves_every_key_the_pixels_recall_context_and_the_disk(api, memory, planted, reader,
                                                                                  redis_server):
    chat, k, page = planted
    r = memory.store.r
    # Read it at two tiers, so the caches hold it: the default curve's mosaic4, then crops (`keep`)
    first = api.post("/v1/sessions/s/recall", json={"query": "Zephyr Marmalade"}).json()["hits"]
    assert first[0]["turn"] == 100 and "Zephyr" in first[0]["text"] and first[0]["tier"] == "mosaic4"
    assert api.put("/v1/sessions/s/curve", json={"curve": "keep"}).status_code == 200
    second = api.post("/v1/sessions/s/recall", json={"turn": 100}).json()["hits"]
    assert second[0]["tier"] == "crops" and "Zephyr" in second[0]["text"]
    whole = memory.reader.decoded(k, page, memory.ladder["g1024"])        # a whole-page read, cached
    assert "Zephyr" in whole["text"]
    assert api.get(f"/v1/sessions/s/pages/{page}/image?tier=mosaic4").status_code == 200
    canvas_before = api.get(f"/v1/sessions/s/mosaics/mosaic4/{page // 4}/image").content   # cached now
    assert list(r.scan_iter(match=f"{k.tag}:canvas:mosaic4:{page // 4}:*"))
    # Visual tokens as a GPU backend caches them (the CPU reader makes none): the page's own, its
    # mosaic canvases', and another page's, which stays
    own = [k.token_cache(str(page), "g1024", "rev1"), k.token_cache(f"m{page // 4}", "mosaic4", "rev0"),
           k.token_cache(f"m{page // 16}", "mosaic16", "rev1"),
           k.token_cache(f"m{page // 4}", "mosaic4", "rev1:1733350000.5-4")]     # as Reader.encoded keys a canvas
    other = k.token_cache(str(page + 5), "g1024", "rev1")
    for key in own:
        r.set(key, b"tokens of a page that reads " + PLANTED.encode())
    r.set(other, b"tokens of another page")
    assert sum(holds(x) for x in session_content(r, k)) >= 8              # source, index, lines, decoded...
    memory.rewrite.request()
    assert memory.rewrite.wait(60)
    assert files_hold(redis_server.dir)                                    # the disk holds it before

    gone = api.delete("/v1/sessions/s/turns/100")
    assert gone.status_code == 200, gone.text
    assert gone.json()["turns"] == [100] and gone.json()["pages"] == [page] and gone.json()["seconds"] < 1.0

    assert not [x for x in session_content(r, k) if holds(x)]              # no key, no value
    assert r.exists(*own) == 0 and r.get(other) == b"tokens of another page"
    assert not list(r.scan_iter(match=f"{k.tag}:canvas:mosaic4:{page // 4}:*"))            # the canvas too
    canvas_after = api.get(f"/v1/sessions/s/mosaics/mosaic4/{page // 4}/image").content
    assert canvas_after != canvas_before
    for query in ("Zephyr Marmalade", "vault phrase Quixotic", "4417"):
        hits = api.post("/v1/sessions/s/recall", json={"query": query, "limit": 20}).json()["hits"]
        assert not [h for h in hits if holds(json.dumps(h).encode())]
    by_turn = api.post("/v1/sessions/s/recall", json={"turn": 100}).json()["hits"]
    assert by_turn and by_turn[0]["text"] == "" and not by_turn[0]["source"]
    for fmt in ("raw", "openai"):
        got = api.get(f"/v1/sessions/s/context?format={fmt}")
        assert not holds(got.content) and got.json()["accounting"]["turns_forgotten"] == 1
    info = api.get("/v1/sessions/s").json()
    assert info["turns"] == 500                                             # numbers stay
    # The page as the CPU reader sees it now (read afresh, not from a cache)
    png = api.get(f"/v1/sessions/s/pages/{page}/image?tier=full").content
    from optimem.memory.reading import line_boxes, page_view
    view = page_view(png, line_boxes(memory.store.lines(k, page)), memory.ladder["g1024"], memory.ladder.page_px)
    text = reader.decode([view])[0].text
    assert not holds(text.encode()) and len(text) > 500
    for n in (99, 101):                                                     # the neighbours still read back
        hit = api.post("/v1/sessions/s/recall", json={"turn": n}).json()["hits"][0]
        assert hit["char_error"] is not None and hit["char_error"] < 0.1, hit
    assert memory.rewrite.wait(60)
    assert files_hold(redis_server.dir) == []                              # the AOF and the snapshot


def test_forgetting_a_range_and_a_recent_turn_keeps_numbers_and_marks_them(api, memory, planted):
    chat, k, page = planted
    last = api.get("/v1/sessions/s").json()["turns"] - 1
    gone = api.delete(f"/v1/sessions/s/turns?from={last - 2}&to={last}")
    assert gone.status_code == 200 and gone.json()["turns"] == [last - 2, last - 1, last]
    ctx = api.get("/v1/sessions/s/context").json()
    marked = [t for t in ctx["turns"] if t["forgotten"]]
    assert [t["index"] for t in marked] == [last - 2, last - 1, last] and all(t["content"] == "" for t in marked)
    assert ctx["accounting"]["turns_forgotten"] == 3
    # The text turns are sealed later like any other: still marked, still empty, nothing re-indexed
    assert api.post("/v1/sessions/s/turns", json={"turns": longest()[1][500:900]}).status_code == 200
    assert memory.session("s", tenant=k.tenant).text_turns_from > last
    assert memory.sources("s", [last], tenant=k.tenant)[last]["content"] == ""
    assert api.get("/v1/sessions/s/context").json()["accounting"]["turns_forgotten"] == 3


@pytest.mark.parametrize("path, status, words", [
    ("/v1/sessions/s/turns/500", 422, "0..499"),
    ("/v1/sessions/s/turns/-1", 422, "0..499"),
    ("/v1/sessions/s/turns?from=10&to=5", 422, "in order"),
    ("/v1/sessions/s/turns?from=0&to=20000", 422, "0..499"),
    ("/v1/sessions/s/turns?from=3", 422, "to"),
    ("/v1/sessions/nobody/turns/1", 404, "no session"),
])
def test_bad_forgets_get_a_4xx_and_forget_nothing(api, memory, planted, path, status, words):
    chat, k, page = planted
    r = api.delete(path)
    assert r.status_code == status and words in r.json()["detail"], r.text
    assert memory.forgotten("s", tenant=k.tenant) == set()


def test_an_export_carries_a_forgotten_turn_as_a_marker_and_an_import_forgets_it_again(api, memory, planted):
    chat, k, page = planted
    assert api.delete("/v1/sessions/s/turns/100").status_code == 200
    data = api.get("/v1/sessions/s/export").content
    assert not holds(data)
    marker = json.loads(data.split(b"\n")[101])
    assert marker == {"turn": 100, "role": chat[100]["role"], "content": "", "time": chat[100]["time"],
                      "forgotten": True, "sum": marker["sum"]}
    assert api.post("/v1/sessions/copy/import", content=data).status_code == 201
    assert memory.forgotten("copy", tenant=k.tenant) == {100}
    assert api.get("/v1/sessions/copy/context").json()["accounting"]["turns_forgotten"] == 1
    assert api.get("/v1/sessions/copy/export").content.split(b"\n")[1:] == data.split(b"\n")[1:]


def test_the_clients_forget_a_turn_and_a_range(api, memory, planted, tenant):
    import asyncio

    import httpx

    import optimem

    chat, k, page = planted
    with optimem.Client("http://testserver", api_key=f"key-{tenant}", http=api) as client:
        one = client.forget("s", 100)
        assert one.turns == [100] and one.pages == [page]
        with pytest.raises(optimem.BadRequest, match="0..499"):
            client.forget("s", 900)

    async def later():
        async with optimem.AsyncClient("http://testserver", api_key=f"key-{tenant}",
                                       transport=httpx.ASGITransport(app=api.app)) as client:
            return await client.forget("s", 10, 12)

    assert asyncio.run(later()).turns == [10, 11, 12]
    assert memory.forgotten("s", tenant=k.tenant) == {10, 11, 12, 100}
