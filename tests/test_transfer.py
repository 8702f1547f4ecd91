"""Export and import of a session (JSON Lines) through the API, the clients and the CLI: a round
trip gives the same context, the same page images byte for byte and the same recall answers; a
file cut short or edited is refused naming the line, and nothing is half-imported."""
from __future__ import annotations

import io
import json

import pytest

import optimem
from optimem.api import cli
from optimem.memory.lab.corpus import chinese, longest
from optimem.memory.store import SessionKeys

from .conftest import settings_for


@pytest.fixture(scope="module")
def chat():
    return longest()[1]


def build(api, sid, turns, **body):
    assert api.post("/v1/sessions", json={"id": sid, **body}).status_code == 201
    for i in range(0, len(turns), 500):
        r = api.post(f"/v1/sessions/{sid}/turns", json={"turns": turns[i:i + 500]})
        assert r.status_code == 200, r.text


def export(api, sid) -> bytes:
    r = api.get(f"/v1/sessions/{sid}/export")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return r.content


def context(api, sid) -> dict:
    got = api.get(f"/v1/sessions/{sid}/context").json()
    got.pop("session")
    for page in got["pages"]:
        page.pop("image_url")
    return got


def recalled(api, sid, query) -> list[tuple]:
    hits = api.post(f"/v1/sessions/{sid}/recall", json={"query": query, "limit": 3}).json()["hits"]
    return [(h["turn"], h["page"], h["tier"], h["text"], h["source"]) for h in hits]


def same_session(api, a, b, queries):
    info_a, info_b = api.get(f"/v1/sessions/{a}").json(), api.get(f"/v1/sessions/{b}").json()
    for key in ("curve", "keep_source", "turns", "pages", "text_turns_from"):
        assert info_a[key] == info_b[key], key
    assert info_a["pages"] >= 2
    assert context(api, a) == context(api, b)
    for page in range(info_a["pages"]):
        full = [api.get(f"/v1/sessions/{s}/pages/{page}/image?tier=full").content for s in (a, b)]
        assert full[0] == full[1], f"page {page} differs"
    for query in queries:
        assert recalled(api, a, query) == recalled(api, b, query)


def test_a_chitchat_conversation_round_trips_over_http(api, chat):
    build(api, "orig", chat[:700], curve="gentle")
    data = export(api, "orig")
    lines = data.decode().splitlines()
    header, first, last = json.loads(lines[0]), json.loads(lines[1]), json.loads(lines[-1])
    assert header["format"] == "optimem-session" and header["version"] == 1 and header["keep_source"] is True
    assert header["curve"]["kind"] == "exponential" and header["turns"] == 700
    assert (first["turn"], first["role"], first["content"], first["time"]) == (0, "user", chat[0]["content"],
                                                                             "2018-05-12T05:56:03Z")
    assert last == {"end": True, "turns": 700, "sum": last["sum"]} and len(lines) == 702
    r = api.post("/v1/sessions/copy/import", content=data, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 201, r.text
    assert r.json()["turns"] == 700
    same_session(api, "orig", "copy", ["relationship", "sleeping", "2018"])
    assert export(api, "copy").replace(b'"session":"copy"', b'"session":"orig"').split(b"\n")[1:] == \
        data.split(b"\n")[1:]


def test_the_chinese_lab_text_round_trips(api):
    turns = chinese() * 10      # 22 paragraphs: ten times over fills a few pages
    build(api, "zh", turns)
    data = export(api, "zh")
    assert api.post("/v1/sessions/zh2/import", content=data).status_code == 201
    same_session(api, "zh", "zh2", [turns[3]["content"][:6], turns[10]["content"][4:10]])


@pytest.mark.parametrize("damage, line, words", [
    (lambda lines: lines[:40], 41, "missing"),                                          # cut at a line end
    (lambda lines: lines[:40] + [lines[40][:25]], 41, "not JSON"),                      # cut inside a line
    (lambda lines: lines[:12] + [lines[12].replace("e", "a", 1)] + lines[13:], 13, "edited"),
    (lambda lines: lines[:12] + lines[13:], 13, "expected turn 11"),                    # a line removed
    (lambda lines: lines[:5] + [lines[6], lines[5]] + lines[7:], 6, "expected turn 4"),  # two swapped
    (lambda lines: lines + [lines[3]], 103, "after the last line"),
    (lambda lines: [lines[0].replace('"version":1', '"version":7')] + lines[1:], 1, "checksum"),
    (lambda lines: [], 1, "empty"),
])
def test_a_damaged_export_is_refused_naming_the_line_and_nothing_is_imported(api, chat, damage, line, words):
    build(api, "src", chat[:100])
    lines = export(api, "src").decode().splitlines()
    body = "\n".join(damage(lines)).encode()
    r = api.post("/v1/sessions/dst/import", content=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"line {line}:") and words in r.json()["detail"], r.json()["detail"]
    assert api.get("/v1/sessions/dst").status_code == 404
    assert api.get("/v1/sessions").json()["sessions"] == ["src"]


def test_an_import_over_an_existing_session_is_a_409_and_an_unknown_export_a_404(api, chat):
    build(api, "a", chat[:20])
    data = export(api, "a")
    assert api.post("/v1/sessions/a/import", content=data).status_code == 409
    assert api.get("/v1/sessions/nobody/export").status_code == 404
    assert api.get("/v1/sessions/a").json()["turns"] == 20


def test_a_turn_that_breaks_the_append_rules_is_refused_by_line(api, memory, chat):
    from optimem.memory import transfer

    build(api, "a", chat[:5])
    lines = export(api, "a").decode().splitlines()
    turn = json.loads(lines[3])
    del turn["sum"]
    turn["time"] = "yesterday"
    lines[3] = transfer.line(turn).decode().rstrip("\n")   # a well-formed line, with a valid checksum
    r = api.post("/v1/sessions/b/import", content="\n".join(lines).encode())
    assert r.status_code == 422 and r.json()["detail"].startswith("line 4: turn time") and "ISO 8601" in r.text
    assert api.get("/v1/sessions/b").status_code == 404


def test_a_forget_for_real_session_exports_what_its_pages_read_back_with_their_tier(api, chat):
    build(api, "ffr", chat[:150], keep_source=False, curve="keep")
    info = api.get("/v1/sessions/ffr").json()
    assert info["pages"] >= 1
    lines = [json.loads(x) for x in export(api, "ffr").decode().splitlines()]
    header, turns = lines[0], lines[1:-1]
    assert header["keep_source"] is False and len(turns) == 150
    sealed = [t for t in turns if "read_back" in t]
    assert sealed and all(t["turn"] < info["text_turns_from"] + 1 for t in sealed)
    assert {p["tier"] for t in sealed for p in t["read_back"]} == {"crops"}      # the `keep` curve's tier
    read_right = sum(t["content"].split() == chat[t["turn"]]["content"].split() for t in sealed)
    assert read_right >= 0.8 * len(sealed)          # read back by the CPU reader, not stored source
    recent = [t for t in turns if "read_back" not in t]
    assert all(t["content"] == chat[t["turn"]]["content"] for t in recent)
    r = api.post("/v1/sessions/ffr2/import", content=export(api, "ffr"))
    assert r.status_code == 201 and r.json()["keep_source"] is False and r.json()["turns"] == 150


def test_the_clients_export_and_import_streamed(api, tenant, chat, tmp_path):
    build(api, "c1", chat[:300])
    seen = []
    with optimem.Client("http://testserver", api_key=f"key-{tenant}", http=api) as client:
        size = client.export_session("c1", tmp_path / "c1.jsonl", progress=seen.append)
        assert size == (tmp_path / "c1.jsonl").stat().st_size and sum(seen) == 302
        made = client.import_session(tmp_path / "c1.jsonl", "c2")
        assert made.id == "c2" and made.turns == 300
        with pytest.raises(optimem.BadRequest, match="line 2"):
            client.import_session(io.BytesIO(b"\n".join((tmp_path / "c1.jsonl").read_bytes().split(b"\n")[:1]
                                                         + [b"{oops"])), "c3")
        with pytest.raises(optimem.NotFound):
            client.export_session("nobody", io.BytesIO())
    assert context(api, "c1") == context(api, "c2")


def test_the_cli_exports_and_imports_in_process(redis_server, memory, chat, tmp_path, monkeypatch, capsys):
    memory.create_session("cli", tenant="clitenant")
    memory.append("cli", chat[:250], tenant="clitenant")
    monkeypatch.setenv("OPTIMEM_REDIS_URL", f"unix://{redis_server.socket}")
    monkeypatch.setenv("OPTIMEM_RECENT_TOKENS", str(memory.settings.recent_tokens))
    monkeypatch.setenv("OPTIMEM_DATA_DIR", str(tmp_path))
    out = tmp_path / "cli.jsonl"
    cli.main(["export", "cli", "-o", str(out), "--tenant", "clitenant"])
    assert "252/252" in capsys.readouterr().err   # the progress bar: every line (header, 250 turns, end)
    cli.main(["import", str(out), "--session", "cli2", "--tenant", "clitenant"])
    assert "imported session cli2: 250 turns" in capsys.readouterr().err
    a, b = memory.session("cli", tenant="clitenant"), memory.session("cli2", tenant="clitenant")
    assert (a.turns, a.pages, a.text_turns_from) == (b.turns, b.pages, b.text_turns_from) and a.pages >= 2
    k1, k2 = SessionKeys("clitenant", "cli"), SessionKeys("clitenant", "cli2")
    assert [memory.store.png(k1, p) for p in range(a.pages)] == [memory.store.png(k2, p) for p in range(b.pages)]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(out.read_bytes()[:-40])
    with pytest.raises(optimem.BadRequest, match="line 252"):
        cli.main(["import", str(bad), "--session", "cli3", "--tenant", "clitenant", "-q"])
    assert "cli3" not in memory.sessions(tenant="clitenant")


def test_export_reads_a_chunk_at_a_time(redis_server, reader, tmp_path, chat):
    """The export holds CHUNK turns at a time: sources are asked for in chunks, never the session."""
    from optimem.memory import transfer
    from optimem.memory.service import Memory

    asked = []
    with Memory(settings_for(redis_server, tmp_path), backend=reader) as m:
        m.create_session("big", tenant="chunky")
        m.append("big", chat[:1000], tenant="chunky")
        m.append("big", chat[:1000], tenant="chunky")
        real = m.sources
        m.sources = lambda s, turns, tenant: asked.append(len(turns)) or real(s, turns, tenant=tenant)
        lines = transfer.export(m, "big", tenant="chunky")
        assert asked == []                              # nothing read before the first line is asked for
        assert sum(1 for _ in lines) == 2002
        assert asked == [transfer.CHUNK, transfer.CHUNK]
        m.delete_session("big", tenant="chunky")


def test_an_import_is_streamed_past_the_body_limit_that_bounds_other_requests(api, memory, chat):
    build(api, "big", chat[:400])
    data = export(api, "big")
    memory.settings.max_body_bytes = 20_000
    assert len(data) > 3 * memory.settings.body_limit()
    assert api.post("/v1/sessions/big2/turns", content=data).status_code == 413      # an append is capped
    r = api.post("/v1/sessions/big2/import", content=iter([data[i:i + 4096] for i in range(0, len(data), 4096)]))
    assert r.status_code == 201, r.text
    assert r.json()["turns"] == 400
    no_key = api.post("/v1/sessions/big3/import", content=data, headers={"Authorization": "Bearer nope"})
    assert no_key.status_code == 401                                                  # the key is still checked


def test_an_import_killed_part_way_is_marked_and_a_new_import_of_the_id_replaces_it(redis_server, memory, chat,
                                                                                      tmp_path, monkeypatch):
    """kill -9 of `optimem import` mid-way leaves a partial session that says ``importing``; while
    that import could still be alive a second import of the id is refused (409), after
    ``STALE_IMPORT_S`` without a sign of life it replaces the partial session with the whole one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from optimem.errors import SessionExists
    from optimem.memory import transfer

    turns = [dict(chat[i % len(chat)]) for i in range(4000)]
    memory.create_session("big", tenant="killtenant")
    for i in range(0, len(turns), 1000):
        memory.append("big", turns[i:i + 1000], tenant="killtenant")
    out = tmp_path / "big.jsonl"
    out.write_bytes(b"".join(transfer.export(memory, "big", tenant="killtenant")))
    env = {**os.environ, "OPTIMEM_REDIS_URL": f"unix://{redis_server.socket}", "OPTIMEM_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "import", str(out), "--session", "copy",
                             "--tenant", "killtenant", "-q"], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if "copy" in memory.sessions(tenant="killtenant") and memory.session("copy", tenant="killtenant").turns:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = memory.session("copy", tenant="killtenant")
    assert 0 < left.turns < 4000 and left.importing, left
    with pytest.raises(SessionExists):             # it might still be alive: not replaced
        transfer.import_file(memory, out, "copy", tenant="killtenant")
    monkeypatch.setattr(transfer, "STALE_IMPORT_S", 0.0)
    done = transfer.import_file(memory, out, "copy", tenant="killtenant")
    whole = memory.session("big", tenant="killtenant")
    assert (done.turns, done.pages, done.importing) == (whole.turns, whole.pages, False)


def test_an_import_appends_each_chunk_while_the_last_is_sealed_and_keeps_the_backlog_one_chunk_deep(
        redis_server, reader, tmp_path, chat, monkeypatch):
    """The replay appends chunk n+1 while chunk n is typeset, then waits for chunk n's pages: the
    pages come out the same, byte for byte, and the text never holds more than two chunks past
    the recent budget (a replay that never waited would leave the whole file as text)."""
    from optimem.memory import transfer
    from optimem.memory.service import Memory

    monkeypatch.setattr(transfer, "CHUNK", 150)
    with Memory(settings_for(redis_server, tmp_path, seal_background=True), backend=reader) as m:
        m.create_session("orig", tenant="overlap")
        for i in range(0, 900, 150):
            m.append("orig", chat[i:i + 150], tenant="overlap")
            m.settle("orig", tenant="overlap")
        path = tmp_path / "orig.jsonl"
        path.write_bytes(b"".join(transfer.export(m, "orig", tenant="overlap")))
        k = SessionKeys("overlap", "copy")
        backlog = []
        transfer.import_file(m, path, "copy", tenant="overlap",
                             progress=lambda n: backlog.append(len(m.store.text_turns(k))))
        budget_turns = len(m.store.text_turns(SessionKeys("overlap", "orig")))
        assert len(backlog) == 6 and max(backlog) <= budget_turns + 2 * 150 + 40, backlog
        pages = m.session("orig", tenant="overlap").pages
        assert pages >= 8 and m.session("copy", tenant="overlap").pages == pages
        for page in range(pages):
            assert m.store.png(SessionKeys("overlap", "orig"), page) == m.store.png(k, page), page
