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

    def feed(self, data: bytes) -> None:
        self.buffer += data.decode(errors="replace")
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            line = line.strip()
            if not line.startswith("data:") or line == "data: [DONE]":
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


def sse_events(answer: dict, include_usage: bool) -> list[bytes]:
    """A chat.completion (checked by ``upstream.chat_completion``) as the chat.completion.chunk events
    a streamed one would have been. ASCII JSON: any text encodes."""
    base = {"id": answer.get("id", "chatcmpl-optimem"), "object": "chat.completion.chunk",
            "created": answer.get("created") or int(time.time()), "model": answer.get("model", "")}

    def event(choices: list, **extra: Any) -> bytes:
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

    out = []
    for choice in answer.get("choices") or []:
        index, message = choice.get("index", 0), choice.get("message") or {}
        out.append(event([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        for piece in re.findall(r"\S+\s*|\s+", message.get("content") or ""):
            out.append(event([{"index": index, "delta": {"content": piece}, "finish_reason": None}]))
        if message.get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            out.append(event([{"index": index, "delta": {"tool_calls": calls}, "finish_reason": None}]))
        out.append(event([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]))
    if include_usage and answer.get("usage"):
        out.append(event([], usage=answer["usage"]))
    out.append(b"data: [DONE]\n\n")
    return out
