"""Memory modes ``tool`` and ``both`` for a caller that asked for a stream: ``recall_tool``'s loop with
every round asked as a stream, so the answer reaches the caller token by token as the upstream
writes it, not after the look-ups as a whole.

Per round, the upstream's chunks are read as they come. Text is passed on at once (a model that says
"let me check" before it calls the tool is heard saying it); tool-call pieces are held until the
round ends. Then ``recall_tool.next_step`` says what the round meant, as without a stream: only
``recall_memory`` called, it is answered (``tool_round``) and the upstream asked again; the caller's
tools called, they are passed on (``recall_memory``'s dropped); past MAX_TOOL_ROUNDS the honest
answer is sent; no calls, that was the answer. An upstream that answers a stream request with a whole
chat.completion is read as that answer's chunks. Usage is summed over the rounds and sent once, at
the end, when the caller asked for it (``stream_options.include_usage``). Only the first choice is
streamed (with ``n`` > 1 the others are dropped; the unstreamed loop also reads only the first).
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import httpx

from optimem.api import upstream
from optimem.api.errors import ProxyError
from optimem.api.recall_tool import (MAX_TOOL_ROUNDS, LookUp, Rounds, add_usage, caller_error, honest_text,
                                     next_step, tool_round, without_recall_tool)
from optimem.api.sse import DONE, chunks, encoded

AskStream = Callable[[dict], AsyncGenerator[dict, None]]     # one round: the upstream's checked chunks


def asking(client: httpx.AsyncClient, base: str, auth: dict[str, str]) -> AskStream:
    """Rounds asked of this upstream: its stream's chunks (``upstream.chat_chunk``), or a whole
    answer's (``sse.chunks``) when it does not stream."""
    async def ask(payload: dict) -> AsyncGenerator[dict, None]:
        response = await upstream.open_stream(client, base, payload, auth)
        if isinstance(response, dict):
            for chunk in chunks(response, include_usage=True):
                yield chunk
            return
        try:
            async for line in response.aiter_lines():
                data = line[5:].strip() if line.startswith("data:") else ""
                if data == "[DONE]":
                    break
                if data:
                    yield upstream.chat_chunk(data.encode())
        except httpx.HTTPError as exc:
            raise upstream.unreachable(base, exc) from None
        finally:
            await response.aclose()
    return ask


@dataclass
class Round:
    """One round as it came: its text, its tool calls put together from their pieces, its last
    finish and usage."""
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict] = field(default_factory=dict)
    finish: str | None = None
    usage: dict | None = None             # the last one seen (some servers repeat a running total)

    def add_calls(self, pieces: list[dict]) -> None:
        for piece in pieces:
            call = self.calls.setdefault(piece.get("index", 0), {"id": "", "type": "function",
                                                                  "function": {"name": "", "arguments": ""}})
            call["id"] = piece.get("id") or call["id"]
            function = piece.get("function") or {}
            arguments = function.get("arguments")
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += (json.dumps(arguments) if isinstance(arguments, dict)
                                              else arguments or "")

    def take(self, chunk: dict) -> str:
        """One chunk of the round: its first choice's tool-call pieces, finish and usage kept; its
        text returned (and kept)."""
        self.usage = chunk["usage"] if isinstance(chunk.get("usage"), dict) else self.usage
        choice = next((c for c in chunk.get("choices") or [] if c.get("index", 0) == 0), None)
        if choice is None:
            return ""
        delta = choice.get("delta") or {}
        self.add_calls(delta.get("tool_calls") or [])
        if isinstance(choice.get("finish_reason"), str):
            self.finish = choice["finish_reason"]
        text = delta.get("content") or ""
        if text:
            self.text.append(text)
        return text

    def calls_in_order(self) -> list[dict]:
        return [self.calls[i] for i in sorted(self.calls)]


async def streamed_with_recall(ask: AskStream, look_up: LookUp, payload: dict, count_tokens: Callable[[str], int],
                               mode: str, done: Rounds, said: list[str]) -> AsyncGenerator[bytes, None]:
    """The caller's SSE events: the upstream's text as it comes, over as many rounds as the look-ups
    take. What was sent as text is added to ``said`` (the reply to store)."""
    include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    request = {**payload, "stream": True}
    messages, last_chunk, started = list(payload["messages"]), {}, False
    while True:
        last = done.count >= MAX_TOOL_ROUNDS
        if last:   # the look-ups are spent: ask for the answer without offering the tool again
            request = without_recall_tool(request)
        request["messages"] = messages
        this = Round()
        try:
            async with aclosing(ask(request)) as round_chunks:   # a caller gone mid-round frees the connection now
                async for chunk in round_chunks:
                    last_chunk, text = chunk, this.take(chunk)
                    if text and not started:    # one role chunk for the whole answer, however many rounds
                        started = True
                        yield encoded(_like(chunk, {"role": "assistant", "content": ""}))
                    if text:
                        said.append(text)
                        yield encoded(_like(chunk, {"content": text}))
        except ProxyError as exc:
            raise caller_error(exc, mode, first=done.count == 0) from None
        add_usage(done.usage, this.usage)
        step, ours, theirs = next_step(this.calls_in_order(), last)
        if step == "look up":
            done.count += 1
            messages += await tool_round({"content": "".join(this.text) or None}, ours, look_up, count_tokens, done)
            continue
        if step == "their tools":
            ending = [_like(last_chunk, {"tool_calls": [{"index": i, **c} for i, c in enumerate(theirs)]}),
                      _like(last_chunk, {}, "tool_calls")]
        elif step == "honest":
            said.append(honest_text(done.count))
            ending = [_like(last_chunk, {"content": said[-1]}), _like(last_chunk, {}, "stop")]
        else:
            ending = [_like(last_chunk, {}, this.finish or "stop")]
        if not started:
            ending.insert(0, _like(last_chunk, {"role": "assistant", "content": ""}))
        for chunk in ending:
            yield encoded(chunk)
        if include_usage and done.usage:
            yield encoded({**_like(last_chunk, {}), "choices": [], "usage": done.usage})
        yield DONE
        return


def _like(chunk: dict, delta: dict, finish: str | None = None) -> dict:
    """A chunk of the first choice with ``delta``, stamped like the upstream's ``chunk``."""
    return {"id": chunk.get("id", "chatcmpl-optimem"), "object": "chat.completion.chunk",
            "created": chunk.get("created") or int(time.time()), "model": chunk.get("model", ""),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
