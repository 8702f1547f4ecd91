"""optimem.Client and optimem.AsyncClient against a real `optimem serve` on a loopback port."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

import optimem
from optimem.api.client import error
from optimem.errors import BadRequest, NotFound, OptimemError, SessionExists
from optimem.memory.lab.corpus import longest
from optimem.memory.results import Appended, Hit, OpenAIContext, RawContext, Recall, Session
from tests.live import free_port

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "OPTIMEM_DATA_DIR": str(tmp_path_factory.mktemp("client-data")), "OPTIMEM_REDIS_URL": "",
           "OPTIMEM_RECENT_TOKENS": "300", "OPTIMEM_WORKER": "0", "OPTIMEM_API_KEYS": "k1:tenantA,k2:tenantB"}
    proc = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "serve", "--no-worker", "--port", str(port),
                             "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("optimem serve did not come up")
        time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def turns() -> list[dict]:
    return longest()[1][:150]  # the first page seals at about turn 88


def test_session_lifecycle(url):
    with optimem.Client(url, api_key="k1") as c:
        assert c.health()["status"] == "ok"
        made = c.create_session("life", curve="gentle")
        assert isinstance(made, Session) and made.id == "life" and made.turns == 0
        assert c.session("life") == made
        assert "life" in c.sessions()
        with pytest.raises(SessionExists) as exists:
            c.create_session("life")
        assert exists.value.status == 409 and "life" in str(exists.value)
        assert c.set_curve("life", "keep").curve != made.curve
        assert c.delete_session("life") is None
        with pytest.raises(NotFound) as gone:
            c.session("life")
        assert gone.value.status == 404 and str(gone.value)
        assert "life" not in c.sessions()
        generated = c.create_session()
        assert generated.id and generated.id in c.sessions()


def test_pages_seal_context_and_recall(url, turns):
    with optimem.Client(url, api_key="k1") as c:
        c.create_session("chat")
        appended = c.append("chat", turns[:-1])
        assert isinstance(appended, Appended) and appended.appended == len(turns) - 1
        # `optimem serve` seals just after the append answers (OPTIMEM_SEAL_BACKGROUND, the default)
        assert appended.sealing and not appended.sealed_pages, "150 turns over a 300-token window seal a page"
        last = c.add("chat", turns[-1]["content"], turns[-1]["role"], time=turns[-1]["time"])
        assert last.first_index == len(turns) - 1 and last.turns == len(turns)
        assert c.session("chat").pages >= 1

        raw = c.context("chat")
        assert isinstance(raw, RawContext) and raw.pages and raw.accounting.total_tokens > 0
        assert raw.turns[-1].content == turns[-1]["content"]
        openai = c.context("chat", format="openai", budget=100_000)
        assert isinstance(openai, OpenAIContext)
        parts = [p for m in openai.messages if isinstance(m["content"], list) for p in m["content"]]
        assert any(p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/png") for p in parts)
        assert c.page_image("chat", 0).startswith(PNG)
        assert c.page_image("chat", 0, tier="full").startswith(PNG)

        first = c.recall("chat", turn="first")  # sealed on page 0: the server reads it (CPU OCR)
        assert isinstance(first, Recall) and isinstance(first.hits[0], Hit)
        assert first.hits[0].turn == 0 and first.hits[0].page == 0
        assert first.hits[0].source == turns[0]["content"]


def test_async_client(url, turns):
    async def main() -> None:
        async with optimem.AsyncClient(url, api_key="k1", timeout=60) as c:
            assert (await c.health())["status"] == "ok"
            made = await c.create_session("async")
            assert isinstance(made, Session) and "async" in await c.sessions()
            with pytest.raises(SessionExists):
                await c.create_session("async")
            appended = await c.append("async", turns[:120])
            assert appended.sealing and (await c.session("async")).pages >= 1   # reads wait for the seal
            await c.add("async", "My locker code is 4817.", time="2024-01-02T03:04:05Z")
            raw = await c.context("async")
            assert isinstance(raw, RawContext) and raw.pages and raw.accounting.total_tokens > 0
            openai = await c.context("async", format="openai")
            assert isinstance(openai, OpenAIContext)
            assert any(p["type"] == "image_url" for p in openai.messages[0]["content"])
            assert (await c.page_image("async", 0)).startswith(PNG)
            recent = await c.recall("async", turn="last")  # still plain text: no OCR
            hit = recent.hits[0]
            assert hit.page is None and hit.tier == "text" and hit.source == "My locker code is 4817."
            with pytest.raises(BadRequest):
                await c.add("async", "   ")
            await c.delete_session("async")
            with pytest.raises(NotFound):
                await c.session("async")

    asyncio.run(main())


def test_tenants_are_isolated(url):
    with optimem.Client(url, api_key="k1") as a, optimem.Client(url, api_key="k2") as b:
        a.create_session("private")
        a.add("private", "only tenant A may read this")
        assert "private" not in b.sessions()
        for verb in (lambda: b.session("private"), lambda: b.context("private"),
                     lambda: b.recall("private", turn="first"), lambda: b.delete_session("private")):
            with pytest.raises(NotFound):
                verb()
        b.create_session("private")  # the same id is free in tenant B
        assert a.session("private").turns == 1 and b.session("private").turns == 0
    with optimem.Client(url, api_key="nope") as stranger, pytest.raises(OptimemError) as refused:
        stranger.sessions()
    assert refused.value.status == 401 and "API key" in str(refused.value)


def test_bad_input_raises_bad_request(url):
    with optimem.Client(url, api_key="k1") as c:
        c.create_session("bad")
        with pytest.raises(BadRequest) as empty:
            c.add("bad", "")
        assert empty.value.status == 422 and "content" in str(empty.value)
        with pytest.raises(BadRequest) as none:
            c.append("bad", [])
        assert "turns" in str(none.value)
        with pytest.raises(BadRequest) as limit:
            c.recall("bad", "x", limit=0)
        assert "limit" in str(limit.value)
        with pytest.raises(BadRequest):
            c.set_curve("bad", "no-such-curve")
        with pytest.raises(BadRequest):
            c.context("bad", format="pdf")  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            c.page_image("bad", 7)


def test_a_list_detail_becomes_one_message():
    request = httpx.Request("POST", "http://x/v1/sessions/s/recall")
    listed = error(httpx.Response(422, request=request, json={"detail": [
        {"loc": ["body", "limit"], "msg": "Input should be greater than or equal to 1"},
        {"loc": ["body", "turn"], "msg": "Input should be a valid integer"}]}))
    assert isinstance(listed, BadRequest) and listed.status == 422
    assert str(listed) == ("body.limit: Input should be greater than or equal to 1; "
                           "body.turn: Input should be a valid integer")
    plain = error(httpx.Response(502, request=request, text="Bad Gateway"))
    assert type(plain) is OptimemError and plain.status == 502 and str(plain) == "Bad Gateway"
