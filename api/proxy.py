"""An OpenAI-compatible chat endpoint in front of any OpenAI-compatible model server.

A chatbot points its OpenAI client at optimem instead of its model and names a session. Each call,
optimem stores the turns it has not seen yet, replaces the history with its own context (recent
turns as text, older ones as page images at the tier their age gives them), forwards everything
else the caller asked for to the upstream, passes the answer back (streamed or not) and stores
the reply as a turn. Which messages are new:

- system and developer messages are the caller's instructions: passed through, never stored;
- in a session with no turns yet, every other message is new (a conversation carried over);
- otherwise the new ones are those after the request's last assistant message (a client that sends
  its whole history, or one that sends only its newest message), less a leading run that the
  session already ends with: the turns of a call whose upstream failed, sent again on retry.
"""
from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Optional
from urllib.parse import urlsplit

import anyio
import httpx
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from optimem.api.auth import tenant
from optimem.api.openai_protocol import (ChatCompletion, ChatCompletionRequest, ChatMessage, ErrorResponse, ModelList,
                                 error_body)
from optimem.errors import BadRequest, NotFound, SessionExists
from optimem.memory.results import Accounting, OpenAIContext
from optimem.memory.service import Memory

log = logging.getLogger(__name__)
router = APIRouter(tags=["openai"])

PASSED_THROUGH = ("system", "developer")
# Generation can take minutes; connecting should not.
TIMEOUT = httpx.Timeout(600.0, connect=10.0)
ERRORS = {400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}, 502: {"model": ErrorResponse}}
HEADERS = {name: {"description": text, "schema": {"type": "string"}} for name, text in {
    "X-Optimem-Session": "The session the turns went to.",
    "X-Optimem-Stored-Turns": "Turns of this request stored as new (the reply is stored after it).",
    "X-Optimem-Text-Tokens": "Recent turns sent as text, in tokens.",
    "X-Optimem-Visual-Tokens": "What the page images sent cost, in visual tokens of the family.",
    "X-Optimem-Replaced-Tokens": "Text tokens those pages stand for.",
    "X-Optimem-Compression": "Replaced / visual tokens (empty when no page was sent).",
    "X-Optimem-Pages": "Pages sent.", "X-Optimem-Pages-Forgotten": "Pages faded out and left out.",
    "X-Optimem-Family": "The model family whose views and token costs apply (OPTIMEM_FAMILY).",
}.items()}
SSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "headers": HEADERS,
       "description": "The upstream's chat.completion, or with stream=true its chat.completion.chunk events, "
                      "passed through; this call's token accounting in the X-Optimem-* headers."}


class ProxyError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type), status_code=self.status, headers=headers)


def upstream_base(url: str) -> str:
    """The upstream's OpenAI base URL; a bare host (no path) means its /v1."""
    if not url:
        raise ProxyError(503, "no upstream model: set OPTIMEM_UPSTREAM_URL to an OpenAI-compatible server's "
                              "base URL (e.g. http://localhost:8001/v1)", "service_unavailable")
    url = url.rstrip("/")
    return url if urlsplit(url).path else url + "/v1"


def upstream_headers(memory: Memory, authorization: str | None) -> dict[str, str]:
    """The upstream's own key when set; else the caller's, when optimem itself takes no keys."""
    if memory.settings.upstream_key:
        return {"Authorization": f"Bearer {memory.settings.upstream_key}"}
    if authorization and not memory.settings.tenants():
        return {"Authorization": authorization}
    return {}


def turn_of(message: ChatMessage, position: int) -> dict[str, Any]:
    """A message as a stored turn: its text, spoken by its role (a user's name, when given)."""
    content = message.content
    if isinstance(content, list):
        kinds = {part.type for part in content} - {"text"}
        if kinds:
            raise ProxyError(400, f"messages[{position}] has {sorted(kinds)} parts; optimem keeps text turns, "
                                  "send text parts only")
        content = "\n".join(part.text or "" for part in content)
    role = message.name if message.role == "user" and message.name else message.role
    return {"role": role, "content": content or ""}


def new_turns(messages: list[ChatMessage], memory: Memory, t: str, session: str, held: int) -> list[dict]:
    """The request's turns the session does not hold yet (the rule is in the module docstring)."""
    convo = [(i, m) for i, m in enumerate(messages) if m.role not in PASSED_THROUGH]
    if held:
        last_assistant = max((n for n, (_, m) in enumerate(convo) if m.role == "assistant"), default=-1)
        convo = convo[last_assistant + 1:]
    turns = [turn_of(m, i) for i, m in convo]
    turns = [turn for turn in turns if turn["content"].strip()]
    if held and turns:
        tail = memory.sources(session, list(range(max(0, held - len(turns)), held)), tenant=t)
        ends = [(tail[i]["role"], tail[i]["content"]) for i in sorted(tail)]
        for overlap in range(min(len(ends), len(turns)), 0, -1):
            if ends[-overlap:] == [(x["role"], x["content"]) for x in turns[:overlap]]:
                return turns[overlap:]
    return turns


def accounting_headers(session: str, family: str, stored: int, accounting: Accounting | None) -> dict[str, str]:
    headers = {"X-Optimem-Session": session, "X-Optimem-Family": family, "X-Optimem-Stored-Turns": str(stored)}
    if accounting:
        headers.update({
            "X-Optimem-Text-Tokens": str(accounting.recent_text_tokens),
            "X-Optimem-Visual-Tokens": str(accounting.visual_tokens),
            "X-Optimem-Replaced-Tokens": str(accounting.text_tokens_replaced),
            "X-Optimem-Compression": "" if accounting.compression is None else str(accounting.compression),
            "X-Optimem-Pages": str(accounting.pages),
            "X-Optimem-Pages-Forgotten": str(accounting.pages_forgotten),
        })
    return headers


def prepare(memory: Memory, t: str, session: str, messages: list[ChatMessage],
            budget: int | None) -> tuple[int, OpenAIContext]:
    """Store the new turns (creating the session), then build the context. Blocking: Redis and the typesetter."""
    try:
        held = memory.session(session, tenant=t).turns
    except NotFound:
        try:
            memory.create_session(session, tenant=t)
        except SessionExists:
            pass  # another request created it first
        held = 0
    turns = new_turns(messages, memory, t, session, held)
    if turns:
        memory.append(session, turns, tenant=t)
    return len(turns), memory.context(session, budget=budget, format="openai", tenant=t)


def upstream_messages(system: list[dict], ctx: OpenAIContext) -> list[dict]:
    """The caller's instructions, then optimem's context (memory pages, then recent turns)."""
    memory_messages = ctx.messages
    if not any(isinstance(m["content"], str) for m in memory_messages):
        if ctx.accounting.dropped_turns:
            raise ProxyError(400, f"the budget ({ctx.accounting.budget} tokens) leaves no room for the "
                                  "newest turn; raise X-Optimem-Budget (or OPTIMEM_BUDGET)")
        raise ProxyError(400, "nothing to answer: the session has no recent turns; send a user message")
    return system + memory_messages


def upstream_error(response: httpx.Response, body: bytes) -> tuple[int, dict]:
    """The upstream's status and error, in OpenAI's error shape when it did not use it itself."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return response.status_code, data
        message = data.get("detail") or data.get("message") if isinstance(data, dict) else None
        message = message if isinstance(message, str) else body.decode(errors="replace")
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = body.decode(errors="replace")
    return response.status_code, error_body(f"upstream: {message.strip() or response.reason_phrase}",
                                            "upstream_error", response.status_code)


class StreamText:
    """Collects the first choice's text from chat.completion.chunk SSE events, as they pass through."""

    def __init__(self) -> None:
        self.buffer, self.parts = "", []

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
                    if choice.get("index", 0) == 0 and (choice.get("delta") or {}).get("content"):
                        self.parts.append(choice["delta"]["content"])
            except (json.JSONDecodeError, AttributeError, TypeError):
                continue

    @property
    def text(self) -> str:
        return "".join(self.parts)


def store_reply(memory: Memory, t: str, session: str, text: str | None) -> None:
    if not isinstance(text, str) or not text.strip():
        return
    try:
        memory.add(session, text, "assistant", tenant=t)
    except (BadRequest, NotFound) as exc:  # the caller has its answer; say why memory does not
        log.warning("reply not stored in session %s: %s", session, exc)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={200: SSE, **ERRORS})
async def chat_completions(
        request: Request, body: ChatCompletionRequest, t: str = Depends(tenant),
        x_optimem_session: Optional[str] = Header(None, description="The session; else the 'user' field."),
        x_optimem_budget: Optional[int] = Header(None, ge=0, description="Context budget in tokens (text + visual)."),
        authorization: Optional[str] = Header(None, include_in_schema=False)) -> Response:
    """Chat through memory: store the new turns, send optimem's context upstream, store the reply."""
    memory: Memory = request.app.state.memory
    session = x_optimem_session or body.user
    stored, headers = 0, {}
    try:
        base = upstream_base(memory.settings.upstream_url)
        if not session:
            raise ProxyError(400, "name the session: send an X-Optimem-Session header or the 'user' field")
        budget = x_optimem_budget if x_optimem_budget is not None else (memory.settings.budget or None)
        try:
            stored, ctx = await run_in_threadpool(prepare, memory, t, session, body.messages, budget)
        except BadRequest as exc:
            raise ProxyError(400, str(exc)) from None
        headers = accounting_headers(session, memory.ladder.family, stored, ctx.accounting)
        system = [m.model_dump(exclude_none=True) for m in body.messages if m.role in PASSED_THROUGH]
        payload = body.model_dump(exclude_unset=True)
        payload["messages"] = upstream_messages(system, ctx)
    except ProxyError as exc:
        return exc.response(headers)

    client = httpx.AsyncClient(timeout=TIMEOUT, headers=upstream_headers(memory, authorization))
    try:
        upstream = await client.send(client.build_request("POST", f"{base}/chat/completions", json=payload),
                                     stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        status = 504 if isinstance(exc, httpx.TimeoutException) else 502
        return JSONResponse(error_body(f"upstream {base} did not answer: {exc!r}", "upstream_error", status),
                            status_code=status, headers=headers)
    if upstream.status_code >= 400 or not body.stream:
        try:
            raw = await upstream.aread()
        finally:
            await upstream.aclose()
            await client.aclose()
        if upstream.status_code >= 400:
            status, error = upstream_error(upstream, raw)
            return JSONResponse(error, status_code=status, headers=headers)
        try:
            answer = json.loads(raw)
            text = answer["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            return JSONResponse(error_body("upstream answered with something that is not a chat completion",
                                           "upstream_error"), status_code=502, headers=headers)
        await run_in_threadpool(store_reply, memory, t, session, text)
        return JSONResponse(answer, headers=headers)

    async def relay() -> AsyncIterator[bytes]:
        seen = StreamText()
        try:
            async for chunk in upstream.aiter_bytes():
                seen.feed(chunk)
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):  # the client may have gone; the reply is still stored
                await upstream.aclose()
                await client.aclose()
                await run_in_threadpool(store_reply, memory, t, session, seen.text)

    media = upstream.headers.get("content-type", "text/event-stream")
    return StreamingResponse(relay(), media_type=media, headers={**headers, "Cache-Control": "no-cache"})


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def models(request: Request, t: str = Depends(tenant),
                 authorization: Optional[str] = Header(None, include_in_schema=False)) -> Response:
    """The upstream's models, passed through."""
    memory: Memory = request.app.state.memory
    try:
        base = upstream_base(memory.settings.upstream_url)
    except ProxyError as exc:
        return exc.response()
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=upstream_headers(memory, authorization)) as client:
            upstream = await client.get(f"{base}/models")
    except httpx.HTTPError as exc:
        return JSONResponse(error_body(f"upstream {base} did not answer: {exc!r}", "upstream_error", 502),
                            status_code=502)
    if upstream.status_code >= 400:
        status, error = upstream_error(upstream, upstream.content)
        return JSONResponse(error, status_code=status)
    return Response(upstream.content, status_code=upstream.status_code,
                    media_type=upstream.headers.get("content-type", "application/json"))
