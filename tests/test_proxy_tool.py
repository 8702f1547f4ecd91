"""Memory as a tool: the proxy offers recall_memory, answers the upstream's calls itself and gives the
caller only the final answer. Driven by the official `openai` client against the fake upstream process."""
from __future__ import annotations

import json

import openai
import pytest

from optimem.memory.lab.corpus import longest
from tests.test_proxy import SYSTEM, client, optimem, slow_stores, turns_of, upstream  # noqa: F401 (fixtures)

FACT = "By the way, my storage locker code is 4817-QX, please remember it."
TOOL = {"X-Optimem-Memory": "tool"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


def requests_since(upstream, before: int) -> list[dict]:
    """The bodies the upstream got after the first ``before`` requests."""
    return [json.loads(line)["body"] for line in upstream[1].read_text().splitlines()[before:]]


def sent(upstream) -> int:
    return len(upstream[1].read_text().splitlines())


def image_parts(body: dict) -> int:
    return sum(1 for m in body["messages"] if isinstance(m.get("content"), list)
               for part in m["content"] if part.get("type") == "image_url")


def test_a_fact_500_turns_back_comes_back_through_the_recall_tool(optimem, upstream, memory, tenant):
    turns = [dict(t) for t in longest()[1][:520]]
    turns[6].update(role="user", content=FACT)
    memory.create_session("locker", tenant=tenant)
    memory.append("locker", turns, tenant=tenant)
    assert memory.pages("locker", tenant=tenant)[0].last_turn >= 6   # sealed on the oldest page
    # The background worker reads sealed pages ahead of recalls; tests run without it, so read the
    # fact's page once here (one CPU OCR read) and let the proxy's recalls read nothing new.
    memory.recall("locker", turn=6, tenant=tenant)
    memory.settings.recall_read_s = 0

    pal = client(optimem, tenant, "locker")
    before = sent(upstream)
    raw = pal.chat.completions.with_raw_response.create(
        model="fake-vl", messages=[SYSTEM, {"role": "user", "content": "What is my storage locker code?"}],
        extra_headers=TOOL)
    reply = raw.parse().choices[0].message.content
    assert "4817-QX" in reply and raw.parse().choices[0].message.tool_calls is None
    h = raw.headers
    assert h["x-optimem-memory"] == "tool" and h["x-optimem-tool-rounds"] == "1"
    assert int(h["x-optimem-tool-tokens"]) > 20 and h["x-optimem-pages"] == "0"

    first, second = requests_since(upstream, before)
    assert [t["function"]["name"] for t in first["tools"]] == ["recall_memory"]
    assert first["stream"] is False and image_parts(first) == 0 and image_parts(second) == 0
    note = first["messages"][0]["content"]
    assert note.startswith(SYSTEM["content"]) and "earlier turns" in note and "2018-05-12T05:56:03Z" in note
    assert FACT not in json.dumps(first)                 # the old turn was not sent as text
    call = second["messages"][-2]["tool_calls"][0]
    assert call["function"]["name"] == "recall_memory"
    result = second["messages"][-1]
    assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
    assert "turn 6 | user | 2018-05-12" in result["content"] and "4817-QX" in result["content"]

    # streamed: the tool round runs first, then the final answer arrives as chunks
    with pal.chat.completions.with_streaming_response.create(
            model="fake-vl", stream=True, extra_headers=TOOL,
            messages=[{"role": "user", "content": "Tell me the storage locker code again"}]) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-optimem-tool-rounds"] == "1"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "4817-QX" in text and chunks[-1].choices[0].finish_reason == "stop"

    # stored: the user's turns and the final replies only, no tool traffic
    stored = turns_of(memory, tenant, "locker")
    assert len(stored) == 524 and [t["role"] for t in stored[-4:]] == ["user", "assistant", "user", "assistant"]
    assert stored[-3]["content"] == reply and stored[-1]["content"] == text
    assert not any(t["role"] == "tool" for t in stored)


def test_the_callers_own_tool_passes_through(optimem, upstream, memory, tenant):
    pal = client(optimem, tenant, "weather")
    ask = [{"role": "user", "content": "USE MY TOOL: how is the weather?"}]
    before = sent(upstream)
    answer = pal.chat.completions.create(model="fake-vl", messages=ask, tools=[WEATHER], extra_headers=TOOL)
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Halifax"}
    assert answer.choices[0].finish_reason == "tool_calls"
    (body,) = requests_since(upstream, before)
    assert body["tools"][0] == WEATHER and body["tools"][1]["function"]["name"] == "recall_memory"

    chunks = list(pal.chat.completions.create(model="fake-vl", messages=ask, tools=[WEATHER], stream=True,
                                              extra_headers=TOOL))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    assert [t["content"] for t in turns_of(memory, tenant, "weather")] == [ask[0]["content"]]  # no reply text


def test_the_tool_rounds_are_bounded(optimem, upstream, memory, tenant):
    pal = client(optimem, tenant, "loop")
    before = sent(upstream)
    raw = pal.chat.completions.with_raw_response.create(
        model="fake-vl", messages=[{"role": "user", "content": "ALWAYS RECALL what I said"}], extra_headers=TOOL)
    assert raw.headers["x-optimem-tool-rounds"] == "3"
    bodies = requests_since(upstream, before)
    assert len(bodies) == 4 and "tools" not in bodies[-1]          # then asked once more, without the tool
    assert "last memory look-up" in bodies[-1]["messages"][-1]["content"]
    assert raw.parse().choices[0].message.content.startswith("I see 0 pages")

    # a model that calls it anyway gets no fourth look-up: the caller gets an honest answer
    answer = pal.chat.completions.create(model="fake-vl", messages=[{"role": "user", "content": "RECALL REGARDLESS"}],
                                         extra_headers=TOOL)
    assert "could not settle this" in answer.choices[0].message.content
    assert not any(t["role"] == "tool" for t in turns_of(memory, tenant, "loop"))


def test_modes_come_from_the_header_or_the_setting_and_bad_ones_are_refused(optimem, upstream, memory, tenant):
    pal = client(optimem, tenant, "modes")
    hi = [{"role": "user", "content": "hello there"}]
    with pytest.raises(openai.BadRequestError) as caught:
        pal.chat.completions.create(model="fake-vl", messages=hi, extra_headers={"X-Optimem-Memory": "pictures"})
    assert "X-Optimem-Memory" in caught.value.message and caught.value.body["type"] == "invalid_request_error"

    raw = pal.chat.completions.with_raw_response.create(model="fake-vl", messages=hi)  # default: images
    assert raw.headers["x-optimem-memory"] == "images" and raw.headers["x-optimem-tool-rounds"] == "0"
    assert "tools" not in requests_since(upstream, sent(upstream) - 1)[0]

    memory.settings.memory_mode = "both"
    raw = pal.chat.completions.with_raw_response.create(model="fake-vl", messages=hi)
    assert raw.headers["x-optimem-memory"] == "both"
    assert requests_since(upstream, sent(upstream) - 2)[0]["tools"][0]["function"]["name"] == "recall_memory"

    with pytest.raises(openai.BadRequestError) as caught:  # an upstream without tool calling
        pal.chat.completions.create(model="fake-vl", messages=[{"role": "user", "content": "NO TOOLS here"}])
    assert "X-Optimem-Memory: images" in caught.value.message and "tool-call" in caught.value.message


def test_the_tool_recalls_run_on_recall_threads_not_the_request_pool(optimem, upstream, memory, tenant, monkeypatch):
    """Like the API's and the inspector's recalls (issue 10): a recall slot and a recall thread."""
    import threading

    memory.create_session("pool", tenant=tenant)
    memory.append("pool", [{"role": "user", "content": FACT}, {"role": "assistant", "content": "Noted."}],
                  tenant=tenant)
    real, names = memory.recall, []

    def recall(*args, **kwargs):
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(memory, "recall", recall)
    reply = client(optimem, tenant, "pool").chat.completions.create(
        model="fake-vl", messages=[{"role": "user", "content": "What is my storage locker code?"}],
        extra_headers=TOOL).choices[0].message.content
    assert "4817-QX" in reply
    assert names and all(name.startswith("optimem-recall") for name in names), names


def test_under_a_budget_the_tool_mode_gives_the_whole_budget_to_recent_text(optimem, upstream, memory, tenant):
    """Tool mode sends no pages, so no recent text yields to pages (issue 22's rule is for contexts
    that send them): the upstream gets every recent turn the budget holds."""
    memory.create_session("tooltext", tenant=tenant)
    memory.append("tooltext", [dict(t) for t in longest()[1][:400]], tenant=tenant)
    budget = 1200
    text_only = memory.context("tooltext", budget=budget, text_only=True, tenant=tenant)
    with_pages = memory.context("tooltext", budget=budget, tenant=tenant)
    assert with_pages.accounting.pages_made >= 1 and len(with_pages.turns) < len(text_only.turns)
    pal = client(optimem, tenant, "tooltext")
    before = sent(upstream)
    pal.chat.completions.create(model="fake-vl", messages=[{"role": "user", "content": "hello again"}],
                                extra_headers={**TOOL, "X-Optimem-Budget": str(budget)})
    first = requests_since(upstream, before)[0]
    history = [m for m in first["messages"] if m["role"] in ("user", "assistant")]
    now = memory.context("tooltext", budget=budget, text_only=True, tenant=tenant)
    # the same window as a text-only context (the reply stored after it adds one turn at the end)
    assert [m["content"] for m in history] == [t.content for t in now.turns][:len(history)]
    assert history[-1]["content"] == "hello again" and len(now.turns) - len(history) <= 1
    assert now.turns[0].index < with_pages.turns[0].index


def test_a_streamed_answer_after_a_look_up_reaches_the_caller_word_by_word(optimem, upstream, memory, tenant,
                                                                           tmp_path, monkeypatch):
    """Each round is asked as a stream and the answer's words are passed on as they come: the caller
    reads the first word while the upstream still holds back the rest (fake_upstream's HOLD)."""
    memory.create_session("live", tenant=tenant)
    memory.append("live", [{"role": "user", "content": FACT}, {"role": "assistant", "content": "Noted."}],
                  tenant=tenant)
    pal, gate = client(optimem, tenant, "live"), tmp_path / "go"
    slow_stores(memory, monkeypatch)
    before = sent(upstream)
    with pal.chat.completions.with_streaming_response.create(
            model="fake-vl", stream=True, stream_options={"include_usage": True}, extra_headers=TOOL,
            messages=[{"role": "user", "content": f"What is my storage locker code? HOLD:{gate}"}]) as response:
        assert response.headers["x-optimem-tool-rounds"] == "1"
        assert int(response.headers["x-optimem-tool-tokens"]) > 20
        chunks = iter(response.parse())
        first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
        assert first.choices[0].delta.content == "From "       # while the upstream holds the rest
        gate.touch()
        rest = list(chunks)
    text = "From " + "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert "4817-QX" in text and "held-too-long" not in text
    assert rest[-1].choices == [] and rest[-1].usage.total_tokens == 30   # both rounds' usage, once, last
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "stop"
    assert [body["stream"] for body in requests_since(upstream, before)] == [True, True]
    assert turns_of(memory, tenant, "live")[-1]["content"] == text      # stored before [DONE] went out
    assert not any(t["role"] == "tool" for t in turns_of(memory, tenant, "live"))

    # past the rounds' bound, streamed too: the honest answer, not a guess
    chunks = list(pal.chat.completions.create(model="fake-vl", stream=True, extra_headers=TOOL,
                                              messages=[{"role": "user", "content": "RECALL REGARDLESS"}]))
    assert "could not settle this" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # an upstream without tool calling: the same 400 as unstreamed, before any event
    with pytest.raises(openai.BadRequestError) as caught:
        list(pal.chat.completions.create(model="fake-vl", stream=True, extra_headers=TOOL,
                                         messages=[{"role": "user", "content": "NO TOOLS here"}]))
    assert "X-Optimem-Memory: images" in caught.value.message
