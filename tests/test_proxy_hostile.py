"""A hostile upstream behind the proxy (tests/fake_upstream.py, HOSTILE): every answer of the wrong
shape is a 502 in OpenAI's error shape naming what was wrong, never a 500; what does encode is sent
encoded; and the caller's keep-alive connection survives all of it (issue 25, items 5, 6, 7, 10, 11)."""
from __future__ import annotations

import json

import httpx
import pytest

from optimem.api.app import create_app
from tests.live import serve
from tests.test_proxy import optimem, received, turns_of, upstream  # noqa: F401 (fixtures)

BAD_SHAPES = [
    ("tool-calls-string", "choices[0].message.tool_calls is a str, not a list"),
    ("tool-calls-numbers", "choices[0].message.tool_calls[0] is a int, not an object"),
    ("tool-calls-object", "choices[0].message.tool_calls is a dict, not a list"),
    ("function-string", "choices[0].message.tool_calls[0].function is a str, not an object"),
    ("deep-arguments", "nests deeper than 64"),
    ("content-number", "choices[0].message.content is a int, not a string"),
]


@pytest.fixture
def http(optimem, tenant):
    """One keep-alive connection to optimem (a pool of one), as the caller's."""
    with httpx.Client(base_url=optimem, headers={"Authorization": f"Bearer key-{tenant}"}, timeout=120,
                      limits=httpx.Limits(max_connections=1)) as c:
        yield c


def chat(http: httpx.Client, session: str, text: str, mode: str = "tool", stream: bool = False, **extra):
    return http.post("/v1/chat/completions", json={"model": "fake-vl", "stream": stream, **extra,
                                                   "messages": [{"role": "user", "content": text}]},
                     headers={"X-Optimem-Session": session, "X-Optimem-Memory": mode})


def connection(r: httpx.Response):
    return r.extensions["network_stream"].get_extra_info("client_addr")


def openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    return error


@pytest.mark.parametrize("mode", ["tool", "images"])
def test_an_answer_of_the_wrong_shape_is_a_502_naming_it_and_keep_alive_survives(http, mode):
    first = http.get("/v1/models")
    for shape, says in BAD_SHAPES:
        for stream in (False, True):
            r = chat(http, f"bad-{mode}", f"HOSTILE:{shape}", mode, stream)
            error = openai_error(r, 502)
            assert error["code"] == "upstream_bad_response" and says in error["message"], (shape, stream)
            assert connection(r) == connection(first), f"{shape}: the connection was dropped"


BAD_STREAMS = [
    ("stream-content-number", "choices[0].delta.content is a int, not a string"),
    ("stream-calls-string", "choices[0].delta.tool_calls is not a list of objects"),
    ("stream-call-number-name", "holds a call that is not"),
    ("stream-not-json", "not JSON"),
    ("stream-list", "a stream event is a JSON list"),
]


def test_a_stream_of_the_wrong_shape_in_tool_mode_is_a_502_naming_it(http):
    """Tool modes read the upstream's stream (the round's calls are in it): checked as it is read."""
    first = http.get("/v1/models")
    for shape, says in BAD_STREAMS:
        r = chat(http, "bad-stream", f"HOSTILE:{shape}", "tool", stream=True)
        error = openai_error(r, 502)
        assert error["code"] == "upstream_bad_response" and says in error["message"], shape
        assert connection(r) == connection(first), f"{shape}: the connection was dropped"
    # once the answer has begun the status is sent: the stream ends there, without [DONE]
    r = chat(http, "bad-stream", "HOSTILE:stream-breaks", "tool", stream=True)
    assert r.status_code == 200 and '"Hello "' in r.text and "[DONE]" not in r.text


def test_deeply_nested_arguments_as_text_are_answered_as_a_bad_call(http, upstream):
    r = chat(http, "deep-text", "HOSTILE:deep-text-arguments")
    assert r.status_code == 200, r.text
    assert "recall_memory takes a JSON object" in r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("mode", ["tool", "images"])
def test_a_lone_surrogate_in_the_reply_still_encodes(http, mode):
    whole = chat(http, f"half-{mode}", "HOSTILE:lone-surrogate", mode)
    assert whole.status_code == 200 and "half an emoji" in whole.json()["choices"][0]["message"]["content"]
    streamed = chat(http, f"half-{mode}", "HOSTILE:lone-surrogate again", mode, stream=True)
    assert streamed.status_code == 200 and "half" in streamed.text and streamed.text.endswith("data: [DONE]\n\n")


def test_a_stream_answered_with_a_200_that_is_not_json_is_a_502(http):
    r = chat(http, "html", "HOSTILE:not-json", "images", stream=True)
    assert openai_error(r, 502)["code"] == "upstream_bad_response"
    assert "not JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("mode, stream", [("images", False), ("images", True), ("tool", False)])
def test_an_upstream_5xx_is_a_502_distinct_from_optimems_own_500(http, mode, stream):
    error = openai_error(chat(http, "down", "HOSTILE:server-error", mode, stream), 502)
    assert "upstream answered 503: upstream overloaded" in error["message"] and error["code"] == 503


def test_an_upstream_that_does_not_answer_is_one_502_on_every_path(http, memory):
    memory.settings.upstream_url = "http://127.0.0.1:9/v1"   # discard port: nothing listens
    for r in (http.get("/v1/models"), chat(http, "gone", "hello", "images"), chat(http, "gone", "hi", "tool"),
              chat(http, "gone", "hey", "images", stream=True)):
        error = openai_error(r, 502)
        assert error["code"] == "upstream_unreachable" and "did not answer" in error["message"]


@pytest.mark.parametrize("mode", ["tool", "both"])
def test_a_callers_tool_whose_function_is_not_an_object_is_a_400(http, mode):
    r = chat(http, "tools", "hello", mode, tools=[{"type": "function", "function": "x"}])
    assert "tools[0].function must be an object" in openai_error(r, 400)["message"]


def test_recall_calls_per_round_are_capped_and_the_model_is_told(http, upstream):
    r = chat(http, "hundred", "HOSTILE:recall-100")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("From memory:")
    assert r.headers["x-optimem-tool-rounds"] == "1"
    results = [m["content"] for m in received(upstream)["body"]["messages"] if m["role"] == "tool"]
    assert len(results) == 100                                  # every call gets its answer (OpenAI needs one)
    assert sum("Not looked up: at most 4 recall_memory calls" in text for text in results) == 96
    assert int(r.headers["x-optimem-tool-tokens"]) < 10_000


def test_a_conversation_of_more_than_1000_messages_starts_a_new_session(http, memory, tenant):
    messages = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"message {n}"} for n in range(2_501)]
    r = http.post("/v1/chat/completions", json={"model": "fake-vl", "messages": messages},
                  headers={"X-Optimem-Session": "carried", "X-Optimem-Memory": "tool"})
    assert r.status_code == 200, r.text
    assert r.headers["x-optimem-stored-turns"] == "2501"
    stored = turns_of(memory, tenant, "carried")
    assert len(stored) == 2502 and stored[1000]["content"] == "message 1000"


def test_one_pooled_client_per_app_reaches_the_upstream_and_closes_with_it(memory, tenant, upstream):
    """Three calls, one connection to the model server (a client per request opened three); the
    client is the app's, closed when the app stops."""
    memory.settings.api_keys = f"key-{tenant}:{tenant}"
    memory.settings.upstream_url = upstream[0]
    app = create_app(memory)
    with serve(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer key-{tenant}"},
                                         timeout=60) as http:
        for n in range(3):
            assert chat(http, "pooled", f"hello {n}", "images").status_code == 200
        pooled = app.state.upstream
        assert not pooled.is_closed
    peers = [json.loads(line)["peer"] for line in upstream[1].read_text().splitlines()[-3:]]
    assert len(set(peers)) == 1, peers
    assert pooled.is_closed
