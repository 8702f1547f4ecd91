"""A tiny OpenAI-compatible chat server for the proxy tests, run as its own process on loopback.

    python tests/fake_upstream.py PORT RECORD.jsonl

Each chat request is appended to RECORD.jsonl (its JSON body, Authorization header and the port it
came from: one port for many requests is a pooled connection). The answer
says what arrived: how many image parts and text messages, and the last text message. A last
message containing "RATE LIMIT ME" gets a 429 in OpenAI's error shape.

Offered tools, it behaves like a tool-calling model. With the `recall_memory` tool: before any tool
result it calls the tool with the last user message as the query; given the tool's result it answers
"From memory: <the result>". A user message containing "ALWAYS RECALL" makes it call the tool every
time it is offered ("RECALL REGARDLESS": even when it is not); "USE MY TOOL" makes it call the caller's first tool instead; "NO TOOLS" makes it
refuse any tools with a 400, as vLLM does without --enable-auto-tool-choice. Asked for a stream, it
streams these messages too, calls in pieces (``streamed``; "HOLD:<path>" holds the answer).

A hostile upstream: a last message containing "HOSTILE:<shape>" gets the answer of that shape (see
HOSTILE): tool calls that are not a list of calls, arguments nested 100,000 deep, content that is
not a string, a lone surrogate, a 200 that is not JSON, a 503, or 100 recall_memory calls at once;
or (HOSTILE_STREAMS) a stream whose events are of the wrong shape.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

MODEL = "fake-vl"
DEEP = 100_000


def completion(message: str) -> str:
    """A chat.completion whose message is the raw JSON text ``message`` (anything, however broken)."""
    return ('{"id":"chatcmpl-h","object":"chat.completion","created":1,"model":"fake-vl","choices":[{"index":0,'
            f'"message":{message},"finish_reason":"stop"}}]}}')


def call(function: str) -> str:
    return '{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":%s}]}' % function


HOSTILE = {   # shape -> the body of a 200 application/json answer; server-error: a 503 instead
    "tool-calls-string": completion('{"role":"assistant","content":null,"tool_calls":"recall_memory"}'),
    "tool-calls-numbers": completion('{"role":"assistant","content":null,"tool_calls":[1,2,3]}'),
    "tool-calls-object": completion('{"role":"assistant","content":null,"tool_calls":{"name":"recall_memory"}}'),
    "function-string": completion(call('"recall_memory"')),
    "deep-arguments": completion(call('{"name":"recall_memory","arguments":%s}' % ("[" * DEEP + "]" * DEEP))),
    "deep-text-arguments": completion(call('{"name":"recall_memory","arguments":%s}'
                                           % json.dumps("[" * DEEP + "]" * DEEP))),
    "content-number": completion('{"role":"assistant","content":42}'),
    "lone-surrogate": completion(r'{"role":"assistant","content":"half an emoji: \ud83d"}'),
    "not-json": "<html>a proxy error page</html>",
    "server-error": None,
    "recall-100": completion('{"role":"assistant","content":null,"tool_calls":%s}' % json.dumps([
        {"id": f"c{n}", "type": "function", "function": {"name": "recall_memory", "arguments": '{"query":"locker"}'}}
        for n in range(100)])),
}


HOSTILE_STREAMS = {   # shape -> the data of each event of a 200 text/event-stream answer
    "stream-content-number": ['{"choices":[{"index":0,"delta":{"content":42}}]}'],
    "stream-calls-string": ['{"choices":[{"index":0,"delta":{"tool_calls":"recall_memory"}}]}'],
    "stream-call-number-name": ['{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":7}}]}}]}'],
    "stream-not-json": ["<html>a proxy error page</html>"],
    "stream-list": ["[1, 2]"],
    "stream-breaks": ['{"choices":[{"index":0,"delta":{"content":"Hello "}}]}',
                      '{"choices":[{"index":0,"delta":{"content":42}}]}'],
}


def hostile(body: dict) -> Response | None:
    said = str(body["messages"][-1].get("content"))
    streamed_shape = next((name for name in HOSTILE_STREAMS if f"HOSTILE:{name}" in said), None)
    if streamed_shape is not None:
        events = "".join(f"data: {data}\n\n" for data in HOSTILE_STREAMS[streamed_shape]) + "data: [DONE]\n\n"
        return Response(events, media_type="text/event-stream")
    shape = next((name for name in HOSTILE if f"HOSTILE:{name}" in said), None)
    if shape is None:
        return None
    if shape == "server-error":
        return Response("upstream overloaded", status_code=503)
    return Response(HOSTILE[shape], media_type="application/json")


def reply_for(body: dict) -> str:
    images = sum(1 for m in body["messages"] if isinstance(m["content"], list)
                 for part in m["content"] if part.get("type") == "image_url")
    texts = [m["content"] for m in body["messages"] if isinstance(m["content"], str)]
    return f"I see {images} pages and {len(texts)} text messages; you said: {texts[-1][:60]}"


def tool_call(name: str, arguments: dict, n: int) -> dict:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def tool_answer(body: dict) -> dict | None:
    """The assistant message a tool-calling model would send, when tools are offered; else None."""
    names = [(tool.get("function") or {}).get("name") for tool in body.get("tools") or []]
    messages = body["messages"]
    asked = next((str(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    if "RECALL REGARDLESS" in asked:  # a model that calls the tool even when it is no longer offered
        return {"role": "assistant", "content": None, "tool_calls": [tool_call("recall_memory", {"turn": 0}, 9)]}
    if not names:
        return None
    results = [m for m in messages if m["role"] == "tool"]
    if "USE MY TOOL" in asked and names[0] != "recall_memory" and not results:
        return {"role": "assistant", "content": None, "tool_calls": [tool_call(names[0], {"city": "Halifax"}, 1)]}
    if "recall_memory" in names and ("ALWAYS RECALL" in asked or not results):
        return {"role": "assistant", "content": None,
                "tool_calls": [tool_call("recall_memory", {"query": asked}, len(results) + 1)]}
    if results:
        return {"role": "assistant", "content": "From memory: " + results[-1]["content"]}
    return None


def held_path(body: dict) -> str | None:
    asked = next((str(m["content"]) for m in reversed(body["messages"]) if m["role"] == "user"), "")
    return asked.split("HOLD:", 1)[1].split()[0] if "HOLD:" in asked else None


async def opened(path: str) -> bool:
    """Whether the file ``path`` came to exist within 10 s."""
    for _ in range(100):
        if Path(path).exists():
            return True
        await asyncio.sleep(0.1)
    return False


async def streamed(message: dict, body: dict, created: int):
    """A tool-calling model's message as a stream: its text word by word, then each call in pieces
    (id and name first, the arguments in two halves), as OpenAI and vLLM send them. A user message
    "HOLD:<path>" holds the text after its first word until that file exists (10 s at most, then
    says "held-too-long"; unstreamed, the whole answer waits): a test's proof that the first word reached it before the last was written."""
    def event(delta: dict | None, finish: str | None = None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return "data: " + json.dumps({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": created,
                                      "model": body["model"], "choices": choices, **extra}) + "\n\n"

    hold = held_path(body) if message.get("content") else None
    yield event({"role": "assistant", "content": ""})
    for n, word in enumerate((message.get("content") or "").split(" ") if message.get("content") else []):
        yield event({"content": word + " "})
        if n == 0 and hold and not await opened(hold):
            yield event({"content": "held-too-long "})
    for i, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        yield event({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                     "function": {"name": call["function"]["name"], "arguments": ""}}]})
        for half in (arguments[:len(arguments) // 2], arguments[len(arguments) // 2:]):
            yield event({"tool_calls": [{"index": i, "function": {"arguments": half}}]})
    yield event({}, "tool_calls" if message.get("tool_calls") else "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        yield event(None, usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    yield "data: [DONE]\n\n"


def make_app(record: str) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        with open(record, "a") as out:
            out.write(json.dumps({"body": body, "authorization": request.headers.get("authorization"),
                                  "peer": request.client.port}) + "\n")
        answer = hostile(body)
        if answer is not None:
            return answer
        if "RATE LIMIT ME" in str(body["messages"][-1]["content"]):
            return JSONResponse({"error": {"message": "slow down: 3 requests per minute", "type": "rate_limit_error",
                                           "param": None, "code": "rate_limit_exceeded"}}, status_code=429)
        created = int(time.time())
        if body.get("tools") and "NO TOOLS" in str(body["messages"]):
            return JSONResponse({"object": "error", "message": '"auto" tool choice requires --enable-auto-tool-choice '
                                 "and --tool-call-parser to be set", "type": "BadRequestError", "code": 400},
                                status_code=400)
        message = tool_answer(body)
        if message is not None and body.get("stream"):
            return StreamingResponse(streamed(message, body, created), media_type="text/event-stream")
        if message is not None:
            if message.get("content") and held_path(body) and not await opened(held_path(body)):
                message["content"] += " held-too-long"    # unstreamed, it waits for the whole text
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": created, "model": body["model"],
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
        text = reply_for(body)
        if not body.get("stream"):
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": created, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

        def chunk(delta: dict, finish: str | None = None) -> str:
            event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": created,
                     "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(event)}\n\n"

        def events():
            yield chunk({"role": "assistant", "content": ""})
            for word in text.split(" "):
                yield chunk({"content": word + " "})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}]}

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
