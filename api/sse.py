"""Server-sent chat.completion.chunk events: read the text out of a relayed stream, and make the
events of a stream from a whole chat.completion (when the answer had to be whole first)."""
from __future__ import annotations

import json
import re
import time
from typing import Any


class StreamText:
    """Collects the first choice's text from chat.completion.chunk SSE events, as they pass through.
    Events of another shape are skipped: the stream is the upstream's, relayed as it came."""

    def __init__(self) -> None:
        self.buffer = ""
        self.parts: list[str] = []
        self.done = False            # the stream's "data: [DONE]" has been seen

    def feed(self, data: bytes) -> None:
        self.buffer += data.decode(errors="replace")
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            line = line.strip()
            if line.startswith("data:") and line[5:].strip() == "[DONE]":
                self.done = True
            if not line.startswith("data:") or self.done:
                continue
            try:
                event = json.loads(line[5:])
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") if choice.get("index", 0) == 0 else None
                    if isinstance(text, str):
                        self.parts.append(text)
            except (ValueError, RecursionError, AttributeError, TypeError):
                continue

    @property
    def text(self) -> str:
        return "".join(self.parts)


def encoded(chunk: dict) -> bytes:
    """One chunk as an SSE event. ASCII JSON: any text encodes."""
    return f"data: {json.dumps(chunk)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def chunks(answer: dict, include_usage: bool) -> list[dict]:
    """A chat.completion (checked by ``upstream.chat_completion``) as the chat.completion.chunk
    objects a streamed one would have been."""
    base = {"id": answer.get("id", "chatcmpl-optimem"), "object": "chat.completion.chunk",
            "created": answer.get("created") or int(time.time()), "model": answer.get("model", "")}

    def chunk(choices: list, **extra: Any) -> dict:
        return {**base, "choices": choices, **extra}

    out = []
    for choice in answer.get("choices") or []:
        index, message = choice.get("index", 0), choice.get("message") or {}
        out.append(chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        for piece in re.findall(r"\S+\s*|\s+", message.get("content") or ""):
            out.append(chunk([{"index": index, "delta": {"content": piece}, "finish_reason": None}]))
        if message.get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            out.append(chunk([{"index": index, "delta": {"tool_calls": calls}, "finish_reason": None}]))
        out.append(chunk([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]))
    if include_usage and answer.get("usage"):
        out.append(chunk([], usage=answer["usage"]))
    return out


def sse_events(answer: dict, include_usage: bool) -> list[bytes]:
    """A chat.completion as the SSE events of a stream, ``[DONE]`` last."""
    return [encoded(c) for c in chunks(answer, include_usage)] + [DONE]
