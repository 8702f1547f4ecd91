"""The OpenAI-compatible proxy, driven by the official `openai` client against a real upstream process."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from optimem.api.app import create_app
from optimem.memory.lab.corpus import longest
from tests.live import free_port, serve, wait_for

SYSTEM = {"role": "system", "content": "You are a friendly pen pal."}


@pytest.fixture(scope="module")
def chat():
    return longest()[1]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The fake OpenAI-compatible server in its own process; yields (base URL, record file)."""
    record = tmp_path_factory.mktemp("upstream") / "requests.jsonl"
    record.touch()
    port = free_port()
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_upstream.py")), str(port),
                                str(record)])
    url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/models", timeout=1).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None  # died: fail below rather than wait

    wait_for(up, timeout=30)
    assert process.poll() is None, "fake upstream exited"
    yield url, record
    process.terminate()
    process.wait(10)


@pytest.fixture
def optimem(memory, tenant, upstream):
    """optimem under uvicorn on loopback, forwarding to the fake upstream; yields its base URL."""
    memory.settings.api_keys = f"key-{tenant}:{tenant}"
    memory.settings.upstream_url = upstream[0]
    memory.settings.upstream_key = "upstream-secret"
    with serve(create_app(memory)) as url:
        yield url


def client(optimem: str, tenant: str, session: str | None = None) -> openai.OpenAI:
    """The three-line change a chatbot makes: base_url, its optimem key, and the session header."""
    headers = {"X-Optimem-Session": session} if session else {}
    return openai.OpenAI(base_url=f"{optimem}/v1", api_key=f"key-{tenant}", default_headers=headers, max_retries=0)


def received(upstream) -> dict:
    """The last request the upstream got."""
    return json.loads(upstream[1].read_text().splitlines()[-1])


def turns_of(memory, tenant, session) -> list[dict]:
    count = memory.session(session, tenant=tenant).turns
    sources = memory.sources(session, list(range(count)), tenant=tenant)
    return [sources[i] for i in range(count) if i in sources]


def test_old_turns_reach_the_model_as_pages_recent_as_text_and_the_reply_is_stored(optimem, upstream, memory,
                                                                                   tenant, chat):
    history = [{"role": t["role"], "content": t["content"]} for t in chat[:200]]
    raw = client(optimem, tenant, "pal").chat.completions.with_raw_response.create(
        model="fake-vl", messages=[SYSTEM, *history], temperature=0.3, max_tokens=50)
    answer = raw.parse()
    reply = answer.choices[0].message.content
    assert reply.startswith("I see ")

    # accounting of this call, in headers
    h = raw.headers
    assert h["x-optimem-session"] == "pal" and h["x-optimem-stored-turns"] == "200"
    assert int(h["x-optimem-pages"]) >= 1 and float(h["x-optimem-visual-tokens"]) > 0
    assert int(h["x-optimem-text-tokens"]) >= 300 and float(h["x-optimem-compression"]) > 0
    assert h["x-optimem-family"] == "deepseek-ocr2"

    # what the model got: the caller's system message, the old turns as page images, the recent as text
    got = received(upstream)
    assert got["authorization"] == "Bearer upstream-secret"
    body = got["body"]
    assert body["model"] == "fake-vl" and body["temperature"] == 0.3 and body["max_tokens"] == 50
    messages = body["messages"]
    assert messages[0] == SYSTEM
    images = [p for p in messages[1]["content"] if p["type"] == "image_url"]
    assert len(images) == -(-int(h["x-optimem-pages"]) // 4)  # default curve: mosaic4, four pages a canvas
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)
    texts = [m["content"] for m in messages[2:]]
    assert all(isinstance(t, str) for t in texts)
    recent = [t["content"] for t in history[-len(texts):]]
    assert texts[1:] == recent[1:] and recent[0].endswith(texts[0]) and len(texts) < 200  # (a turn may
    # begin on the last page and end in text)
    assert history[4]["content"] not in json.dumps(messages)  # the oldest turns arrived only as pixels
    assert f"I see {len(images)} pages" in reply

    # the reply is the session's newest turn
    stored = turns_of(memory, tenant, "pal")
    assert len(stored) == 201 and stored[-1] == {**stored[-1], "role": "assistant", "content": reply}

    # the next call sends its whole history again: only the new message is stored
    follow = [SYSTEM, *history, {"role": "assistant", "content": reply},
              {"role": "user", "content": "Do you remember what we said about the weather?"}]
    raw = client(optimem, tenant, "pal").chat.completions.with_raw_response.create(model="fake-vl", messages=follow)
    assert raw.headers["x-optimem-stored-turns"] == "1"
    stored = turns_of(memory, tenant, "pal")
    assert len(stored) == 203 and stored[-2]["content"] == follow[-1]["content"]
    assert stored[-1]["content"] == raw.parse().choices[0].message.content


def slow_stores(memory, monkeypatch, seconds: float = 0.5) -> None:
    """Storing a reply takes ``seconds``: a reply stored after the stream's end would be seen missing."""
    real = memory.add

    def add(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(memory, "add", add)


def test_streaming_passes_chunks_through_and_stores_the_reply_before_done(optimem, upstream, memory, tenant, chat,
                                                                          monkeypatch):
    history = [{"role": t["role"], "content": t["content"]} for t in chat[:200]]
    slow_stores(memory, monkeypatch)
    pal = client(optimem, tenant)  # no header: the `user` field names the session
    with pal.chat.completions.with_streaming_response.create(model="fake-vl", messages=history, stream=True,
                                                             user="streamer") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-optimem-session"] == "streamer"
        assert int(response.headers["x-optimem-pages"]) >= 1
        chunks = list(response.parse())
    assert chunks[0].object == "chat.completion.chunk" and chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.startswith("I see ") and len(chunks) > 5
    assert received(upstream)["body"]["stream"] is True

    # stored before [DONE] went out: a client's next message, sent at once, comes after it
    stored = turns_of(memory, tenant, "streamer")
    assert len(stored) == 201 and stored[-1]["role"] == "assistant" and stored[-1]["content"] == text


def test_upstream_error_comes_back_with_its_status_and_the_turn_is_kept(optimem, memory, tenant):
    pal = client(optimem, tenant, "limited")
    ask = [{"role": "user", "content": "Hello! RATE LIMIT ME please"}]
    with pytest.raises(openai.RateLimitError) as caught:
        pal.chat.completions.create(model="fake-vl", messages=ask)
    assert caught.value.status_code == 429 and "slow down: 3 requests per minute" in caught.value.message
    assert [t["content"] for t in turns_of(memory, tenant, "limited")] == [ask[0]["content"]]
    with pytest.raises(openai.RateLimitError):  # a retry sends it again: it is not stored twice
        pal.chat.completions.create(model="fake-vl", messages=ask)
    assert len(turns_of(memory, tenant, "limited")) == 1


def test_models_pass_through(optimem, tenant):
    assert [m.id for m in client(optimem, tenant).models.list()] == ["fake-vl"]


def test_without_an_upstream_the_answer_names_the_setting(memory, tenant):
    memory.settings.upstream_url = ""
    with serve(create_app(memory)) as url:
        with pytest.raises(openai.APIStatusError) as caught:
            client(url, "x", "s").chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503 and "OPTIMEM_UPSTREAM_URL" in caught.value.message


@pytest.mark.parametrize("session, messages, headers, words", [
    (None, [{"role": "user", "content": "hi"}], {}, "X-Optimem-Session"),
    ("bad id!", [{"role": "user", "content": "hi"}], {}, "session id"),
    ("s", [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}], {},
     "text and image_url parts"),
    ("s", [{"role": "user", "content": "hi there, a long enough turn"}], {"X-Optimem-Budget": "1"}, "budget"),
    ("s", [SYSTEM], {}, "nothing to answer"),
])
def test_bad_calls_get_a_400_that_says_what_to_fix(optimem, tenant, session, messages, headers, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client(optimem, tenant, session).chat.completions.create(model="m", messages=messages, extra_headers=headers)
    assert words in caught.value.message


PICTURE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="


def test_a_callers_image_goes_upstream_with_its_message_and_memory_keeps_its_place(optimem, upstream, memory,
                                                                                   tenant):
    pal = client(optimem, tenant, "photo")
    asked = [{"type": "text", "text": "What breed is the dog in this photo?"},
             {"type": "image_url", "image_url": {"url": PICTURE, "detail": "low"}}]
    pal.chat.completions.create(model="fake-vl", messages=[SYSTEM, {"role": "user", "content": asked}])
    newest = received(upstream)["body"]["messages"][-1]
    assert newest == {"role": "user", "content": asked}          # as the caller sent it, picture and all
    stored = turns_of(memory, tenant, "photo")
    assert stored[0]["content"] == "What breed is the dog in this photo?\n[image]"
    assert stored[1]["role"] == "assistant"

    # a later call: the old picture is only its mark in memory's context, the new text goes as text
    pal.chat.completions.create(model="fake-vl", messages=[{"role": "user", "content": "And its name?"}])
    sent = received(upstream)["body"]["messages"]
    assert sent[-1] == {"role": "user", "content": "And its name?"}
    assert "What breed is the dog in this photo?\n[image]" in [m["content"] for m in sent]
    assert PICTURE not in json.dumps(sent)


def test_an_unknown_key_is_refused(optimem):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{optimem}/v1", api_key="wrong", max_retries=0).models.list()


def test_a_tight_budget_fades_pages_and_min_memory_keeps_room_for_them(optimem, upstream, memory, tenant, chat):
    memory.create_session("fade", curve="detailed", tenant=tenant)   # sharp pages, room to fade
    history = [{"role": t["role"], "content": t["content"]} for t in chat[:300]]
    pal = client(optimem, tenant, "fade").chat.completions
    full = pal.with_raw_response.create(model="fake-vl", messages=history).headers
    pages, text = int(full["x-optimem-pages"]), int(full["x-optimem-text-tokens"])
    assert pages >= 2
    # room for recent text plus one sharp page: every page still goes, faded
    tight = pal.with_raw_response.create(model="fake-vl", messages=history,
                                         extra_headers={"X-Optimem-Budget": str(text + 300)}).headers
    assert int(tight["x-optimem-pages"]) == pages and int(tight["x-optimem-pages-faded"]) > 0
    assert float(tight["x-optimem-visual-tokens"]) < float(full["x-optimem-visual-tokens"])
    # a budget recent text alone fills: text beyond the floor yields to legible pages (issue 22)
    filled = {"X-Optimem-Budget": str(text)}
    yielded = pal.with_raw_response.create(model="fake-vl", messages=history, extra_headers=filled).headers
    assert int(yielded["x-optimem-pages"]) > pages and int(yielded["x-optimem-text-tokens"]) < text
    kept = pal.with_raw_response.create(model="fake-vl", messages=history,
                                        extra_headers={**filled, "X-Optimem-Min-Memory-Tokens": "300"}).headers
    # min_memory_tokens is a floor for memory: the rule may give it more, to keep its pages legible
    assert int(kept["x-optimem-pages"]) >= 1 and float(kept["x-optimem-visual-tokens"]) >= 300
    assert len([p for p in received(upstream)["body"]["messages"][0]["content"] if p["type"] == "image_url"]) >= 1
