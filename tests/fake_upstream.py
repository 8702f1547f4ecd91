"""A tiny OpenAI-compatible chat server for the proxy tests, run as its own process on loopback.

    python tests/fake_upstream.py PORT RECORD.jsonl

Each chat request is appended to RECORD.jsonl (its JSON body and Authorization header). The answer
says what arrived: how many image parts and text messages, and the last text message. A last
message containing "RATE LIMIT ME" gets a 429 in OpenAI's error shape.
"""
from __future__ import annotations

import json
import sys
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

MODEL = "fake-vl"


def reply_for(body: dict) -> str:
    images = sum(1 for m in body["messages"] if isinstance(m["content"], list)
                 for part in m["content"] if part.get("type") == "image_url")
    texts = [m["content"] for m in body["messages"] if isinstance(m["content"], str)]
    return f"I see {images} pages and {len(texts)} text messages; you said: {texts[-1][:60]}"


def make_app(record: str) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        with open(record, "a") as out:
            out.write(json.dumps({"body": body, "authorization": request.headers.get("authorization")}) + "\n")
        if "RATE LIMIT ME" in str(body["messages"][-1]["content"]):
            return JSONResponse({"error": {"message": "slow down: 3 requests per minute", "type": "rate_limit_error",
                                           "param": None, "code": "rate_limit_exceeded"}}, status_code=429)
        text, created = reply_for(body), int(time.time())
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
