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

Memory modes (header X-Optimem-Memory, else OPTIMEM_MEMORY_MODE): ``images`` sends older turns as
page images (vision models); ``tool`` sends no images and offers the model a ``recall_memory`` tool
(text-only models, ``recall_tool``); ``both`` does both. With the tool offered, a stream is streamed
round by round (``tool_stream``): the answer's words as the upstream writes them, the look-ups in
between held back. Tool traffic is never stored as turns.

This module is the endpoint; the upstream client and the checks of its answers are ``upstream``, the
tool loop ``recall_tool``, the SSE events ``sse``.
"""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Optional

import anyio
import httpx
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from optimem.api import upstream
from optimem.api.auth import tenant
from optimem.api.errors import ProxyError, SafeJSON
from optimem.api.openai_protocol import ChatCompletion, ChatCompletionRequest, ChatMessage, ErrorResponse, ModelList
from optimem.api.schemas import Responses
from optimem.api.recall_tool import (MODES, PASSED_THROUGH, RECALL_TOOL_SPEC, Rounds, answer_with_recall,
                                     caller_tools, looking_up, memory_note, with_note)
from optimem.api.sse import DONE, StreamText, sse_events
from optimem.api.tool_stream import asking, streamed_with_recall
from optimem.errors import BadRequest, NotFound, SessionExists
from optimem.memory.context import openai_messages
from optimem.memory.results import Accounting, OpenAIContext, PageSpans, RawContext
from optimem.memory.service import Memory
from optimem.memory.store import TurnRecord
from optimem.memory.tokens import count as count_tokens
from optimem.settings import MAX_TURNS_PER_APPEND

log = logging.getLogger(__name__)
router = APIRouter(tags=["openai"])

ERRORS: Responses = {400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}, 502: {"model": ErrorResponse}}
HEADERS = {name: {"description": text, "schema": {"type": "string"}} for name, text in {
    "X-Optimem-Session": "The session the turns went to.",
    "X-Optimem-Stored-Turns": "Turns of this request stored as new (the reply is stored after it).",
    "X-Optimem-Text-Tokens": "Recent turns sent as text, in tokens.",
    "X-Optimem-Visual-Tokens": "What the page images sent cost, in visual tokens of the family.",
    "X-Optimem-Replaced-Tokens": "Text tokens those pages stand for.",
    "X-Optimem-Compression": "Replaced / visual tokens (empty when no page was sent).",
    "X-Optimem-Pages": "Pages sent.", "X-Optimem-Pages-Forgotten": "Pages faded out and left out.",
    "X-Optimem-Pages-Faded": "Pages the budget faded beyond the tier their age gives them.",
    "X-Optimem-Family": "The model family whose views and token costs apply (OPTIMEM_FAMILY).",
    "X-Optimem-Memory": "The memory mode of this call: images, tool or both.",
    "X-Optimem-Tool-Rounds": "Rounds in which the upstream called recall_memory and optimem answered "
                             "(with stream=true: those before the answer's first word).",
    "X-Optimem-Tool-Tokens": "Text tokens those rounds added to the conversation (the calls and the recalled "
                             "text), counted with the session tokenizer.",
}.items()}
SSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "headers": HEADERS,
       "description": "The upstream's chat.completion, or with stream=true its chat.completion.chunk events, "
                      "passed through; this call's token accounting in the X-Optimem-* headers."}


IMAGE_MARK = "[image]"     # where a caller's image was, in the stored turn


def turn_of(message: ChatMessage, position: int) -> dict[str, Any]:
    """A message as a stored turn: its text, spoken by its role (a user's name, when given). An image
    part is kept as IMAGE_MARK: memory holds text (the picture itself goes upstream with this call only)."""
    content = message.content
    if isinstance(content, list):
        kinds = {part.type for part in content} - {"text", "image_url"}
        if kinds:
            raise ProxyError(400, f"messages[{position}] has {sorted(kinds)} parts; optimem keeps text turns "
                                  "and passes images on: send text and image_url parts only")
        content = "\n".join(part.text or "" if part.type == "text" else IMAGE_MARK for part in content)
    role = message.name if message.role == "user" and message.name else message.role
    return {"role": role, "content": content or ""}


def with_callers_images(sent: list[dict], asked: list[ChatMessage]) -> list[dict]:
    """The caller's newest message, when it holds images, goes upstream as it came in place of its
    stored text (the newest turn of the context): the model sees the picture it is asked about; the
    older turns' pictures are only their marks."""
    newest = next((m for m in reversed(asked) if m.role not in PASSED_THROUGH), None)
    if (newest is None or not isinstance(newest.content, list) or not sent
            or not any(part.type == "image_url" for part in newest.content)):
        return sent
    if sent[-1]["content"] != turn_of(newest, len(asked) - 1)["content"]:
        return sent      # the budget cut the newest turn short: its text goes as it is
    return [*sent[:-1], {**sent[-1], "content": [part.model_dump(exclude_none=True) for part in newest.content]}]


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
            "X-Optimem-Pages-Faded": str(accounting.pages_faded_by_budget),
        })
    return headers


def prepare(memory: Memory, t: str, session: str, messages: list[ChatMessage], budget: int | None,
            mode: str = "images", min_memory: int = 0) -> tuple[int, OpenAIContext, list[PageSpans] | None]:
    """Store the new turns (creating the session), then build the context, and with the tool offered
    the session's pages (for the memory note). Blocking: Redis and the typesetter."""
    try:
        held = memory.session(session, tenant=t).turns
    except NotFound:
        try:
            memory.create_session(session, tenant=t)
        except SessionExists:
            pass  # another request created it first
        held = 0
    turns = new_turns(messages, memory, t, session, held)
    for start in range(0, len(turns), MAX_TURNS_PER_APPEND):   # a long conversation carried over: in chunks
        memory.append(session, turns[start:start + MAX_TURNS_PER_APPEND], tenant=t)
    if mode == "images":
        return len(turns), openai_context(memory, t, session, budget, min_memory), None
    pages = memory.pages(session, tenant=t)
    if mode == "both":
        return len(turns), openai_context(memory, t, session, budget, min_memory), pages
    # no page images made at all, and none sent: the budget is all recent text's
    raw = memory.context(session, budget=budget, format="raw", text_only=True, tenant=t)
    if not isinstance(raw, RawContext):
        raise TypeError(f"Memory.context(format='raw') gave a {type(raw).__name__}")
    messages_ = openai_messages([TurnRecord(x.index, x.role, x.content, x.time) for x in raw.turns], [])
    sent = raw.accounting.model_copy(update={"pages": 0, "visual_tokens": 0.0, "text_tokens_replaced": 0,
                                             "compression": None,
                                             "total_tokens": float(raw.accounting.recent_text_tokens)})
    return len(turns), OpenAIContext(session=session, messages=messages_, accounting=sent), pages


def openai_context(memory: Memory, t: str, session: str, budget: int | None, min_memory: int) -> OpenAIContext:
    ctx = memory.context(session, budget=budget, format="openai", min_memory_tokens=min_memory, tenant=t)
    if not isinstance(ctx, OpenAIContext):   # Memory.context's type covers every format
        raise TypeError(f"Memory.context(format='openai') gave a {type(ctx).__name__}")
    return ctx


def upstream_messages(system: list[dict], ctx: OpenAIContext) -> list[dict]:
    """The caller's instructions, then optimem's context (memory pages, then recent turns)."""
    memory_messages = ctx.messages
    if not any(isinstance(m["content"], str) for m in memory_messages):
        if ctx.accounting.dropped_turns:
            raise ProxyError(400, f"the budget ({ctx.accounting.budget} tokens) leaves no room for the "
                                  "newest turn; raise X-Optimem-Budget (or OPTIMEM_BUDGET)")
        raise ProxyError(400, "nothing to answer: the session has no recent turns; send a user message")
    return system + memory_messages


def store_reply(memory: Memory, t: str, session: str, text: str | None) -> None:
    if not isinstance(text, str) or not text.strip():
        return
    try:
        memory.add(session, text, "assistant", tenant=t)
    except (BadRequest, NotFound) as exc:  # the caller has its answer; say why memory does not
        log.warning("reply not stored in session %s: %s", session, exc)


class StoredOnce:
    """A streamed reply, stored once: before the stream's ``[DONE]`` goes out (a client that sends its
    next message at once finds the reply already stored, so the turns stay in order), or when the
    stream ends short of it."""

    def __init__(self, memory: Memory, t: str, session: str):
        self.memory, self.t, self.session, self.done = memory, t, session, False

    async def store(self, text: str) -> None:
        if not self.done:
            self.done = True
            await run_in_threadpool(store_reply, self.memory, self.t, self.session, text)


def memory_mode(header: str | None, configured: str) -> str:
    """The call's memory mode: the header's, else the deployment's (OPTIMEM_MEMORY_MODE)."""
    if header is not None:
        mode = header.strip().lower()
        if mode not in MODES:
            raise ProxyError(400, f"X-Optimem-Memory must be one of {', '.join(MODES)}; got {header[:40]!r}")
        return mode
    mode = (configured or "images").strip().lower()
    if mode not in MODES:
        raise ProxyError(500, f"OPTIMEM_MEMORY_MODE must be one of {', '.join(MODES)}; got {configured[:40]!r}",
                         "server_error")
    return mode


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={200: SSE, **ERRORS})
async def chat_completions(
        request: Request, body: ChatCompletionRequest, t: str = Depends(tenant),
        x_optimem_session: Optional[str] = Header(None, description="The session; else the 'user' field."),
        x_optimem_budget: Optional[int] = Header(None, ge=0, description="Context budget in tokens (text + visual); "
                                                 "else OPTIMEM_BUDGET, else 24000."),
        x_optimem_min_memory_tokens: int = Header(0, ge=0, description="Tokens of the budget kept for memory pages "
                                                                       "even when recent text would fill it."),
        x_optimem_memory: Optional[str] = Header(None, description="images (page images), tool (the recall_memory "
                                                                    "tool, no images) or both; else "
                                                                    "OPTIMEM_MEMORY_MODE."),
        authorization: Optional[str] = Header(None, include_in_schema=False)) -> Response:
    """Chat through memory: store the new turns, send optimem's context upstream, store the reply."""
    memory: Memory = request.app.state.memory
    headers: dict[str, str] = {}
    try:
        mode, payload, pages, headers = await forwarded(request, body, memory, t, x_optimem_session,
                                                        x_optimem_budget, x_optimem_min_memory_tokens,
                                                        x_optimem_memory)
        session = headers["X-Optimem-Session"]
        client, base = request.app.state.upstream, upstream.base_url(memory.settings)
        auth = upstream.auth_headers(memory.settings, authorization)
        if pages is None:
            return await images_answer(memory, t, session, client, base, auth, payload, body, headers)
        rounds = Rounds()
        if body.stream:
            return await streamed_tool_answer(request, memory, t, session, pages, client, base, auth, payload,
                                              mode, rounds, headers)
        try:
            answer = await answer_with_recall(
                lambda asked: upstream.complete(client, base, asked, auth),
                looking_up(request, memory, t, session, sum(p.tier == "gone" for p in pages)), payload,
                lambda text: count_tokens(text, memory.settings.tokenizer), mode, rounds)
        finally:
            headers.update({"X-Optimem-Tool-Rounds": str(rounds.count), "X-Optimem-Tool-Tokens": str(rounds.tokens)})
        await run_in_threadpool(store_reply, memory, t, session, answer["choices"][0]["message"].get("content"))
        return whole_or_streamed(answer, body, headers)
    except ProxyError as exc:
        return exc.response(headers)


async def forwarded(request: Request, body: ChatCompletionRequest, memory: Memory, t: str, session: str | None,
                    budget: int | None, min_memory: int, mode_header: str | None
                    ) -> tuple[str, dict, list[PageSpans] | None, dict[str, str]]:
    """Store the new turns and build what goes upstream: (mode, payload, the pages when the tool is
    offered, the X-Optimem-* headers)."""
    upstream.base_url(memory.settings)   # no upstream: say so before storing anything
    mode = memory_mode(mode_header, memory.settings.memory_mode)
    session = session or body.user
    if not session:
        raise ProxyError(400, "name the session: send an X-Optimem-Session header or the 'user' field")
    tools = caller_tools(body.tools) if mode != "images" else None
    budget = budget if budget is not None else memory.settings.proxy_budget()
    try:
        stored, ctx, pages = await run_in_threadpool(prepare, memory, t, session, body.messages, budget, mode,
                                                     min_memory)
    except BadRequest as exc:
        raise ProxyError(400, str(exc)) from None
    headers = {**accounting_headers(session, memory.ladder.family, stored, ctx.accounting),
               "X-Optimem-Memory": mode, "X-Optimem-Tool-Rounds": "0", "X-Optimem-Tool-Tokens": "0"}
    system = [m.model_dump(exclude_none=True) for m in body.messages if m.role in PASSED_THROUGH]
    payload = body.model_dump(exclude_unset=True)
    payload["messages"] = with_callers_images(upstream_messages(system, ctx), body.messages)
    if pages is not None:
        payload["tools"] = [*(tools or []), RECALL_TOOL_SPEC]
        payload["messages"] = with_note(payload["messages"], memory_note(pages, mode))
    return mode, payload, pages, headers


async def streamed_tool_answer(request: Request, memory: Memory, t: str, session: str, pages: list[PageSpans],
                               client: httpx.AsyncClient, base: str, auth: dict[str, str], payload: dict,
                               mode: str, rounds: Rounds, headers: dict[str, str]) -> Response:
    """Tool modes, streamed (``tool_stream``): the look-ups before the answer's first word run before
    the response starts, so their errors are statuses and the X-Optimem-Tool-* headers count them."""
    said: list[str] = []
    events = streamed_with_recall(
        asking(client, base, auth), looking_up(request, memory, t, session, sum(p.tier == "gone" for p in pages)),
        payload, lambda text: count_tokens(text, memory.settings.tokenizer), mode, rounds, said)
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    finally:
        headers.update({"X-Optimem-Tool-Rounds": str(rounds.count), "X-Optimem-Tool-Tokens": str(rounds.tokens)})

    async def relay() -> AsyncIterator[bytes]:
        reply = StoredOnce(memory, t, session)
        try:
            yield first
            async for event in events:
                if event == DONE:
                    await reply.store("".join(said))
                yield event
        except ProxyError as exc:   # a later round failed mid-answer: the status is sent; end the stream
            log.warning("upstream stream for session %s failed mid-answer: %s", session, exc.message)
        finally:
            with anyio.CancelScope(shield=True):  # the client may have gone; the reply is still stored
                await events.aclose()
                await reply.store("".join(said))

    return StreamingResponse(relay(), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})


def whole_or_streamed(answer: dict, body: ChatCompletionRequest, headers: dict[str, str]) -> Response:
    """A whole chat.completion, as asked: JSON, or the chunk events of a stream made from it."""
    if not body.stream:
        return SafeJSON(answer, headers=headers)
    events = sse_events(answer, bool((body.stream_options or {}).get("include_usage")))

    async def replay() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return StreamingResponse(replay(), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})


async def images_answer(memory: Memory, t: str, session: str, client: httpx.AsyncClient, base: str,
                        auth: dict[str, str], payload: dict, body: ChatCompletionRequest,
                        headers: dict[str, str]) -> Response:
    """Images mode: the upstream's answer passed on (a stream relayed as it comes), the reply stored."""
    if not body.stream:
        answer = await upstream.complete(client, base, payload, auth)
        await run_in_threadpool(store_reply, memory, t, session, answer["choices"][0]["message"].get("content"))
        return SafeJSON(answer, headers=headers)
    opened = await upstream.open_stream(client, base, payload, auth)
    if isinstance(opened, dict):    # a whole answer to a stream request: checked, then as events
        await run_in_threadpool(store_reply, memory, t, session, opened["choices"][0]["message"].get("content"))
        return whole_or_streamed(opened, body, headers)
    media = opened.headers["content-type"]

    async def relay() -> AsyncIterator[bytes]:
        seen, reply = StreamText(), StoredOnce(memory, t, session)
        try:
            async for chunk in opened.aiter_bytes():
                seen.feed(chunk)
                if seen.done:
                    await reply.store(seen.text)
                yield chunk
        except httpx.HTTPError as exc:   # cut off mid-stream: the status is sent; end the stream
            log.warning("upstream stream for session %s cut off: %r", session, exc)
        finally:
            with anyio.CancelScope(shield=True):  # the client may have gone; the reply is still stored
                await opened.aclose()
                await reply.store(seen.text)

    return StreamingResponse(relay(), media_type=media, headers={**headers, "Cache-Control": "no-cache"})


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def models(request: Request, t: str = Depends(tenant),
                 authorization: Optional[str] = Header(None, include_in_schema=False)) -> Response:
    """The upstream's models, passed through."""
    settings = request.app.state.memory.settings
    client: httpx.AsyncClient = request.app.state.upstream
    try:
        base = upstream.base_url(settings)
        answer = await upstream.send(client, client.build_request(
            "GET", f"{base}/models", headers=upstream.auth_headers(settings, authorization)))
        if answer.status_code >= 400:
            raise upstream.refusal(answer, answer.content)
        listed = upstream.parse(answer.content)
        if not isinstance(listed, dict) or not isinstance(listed.get("data"), list):
            raise upstream.bad_models()
    except ProxyError as exc:
        return exc.response()
    return SafeJSON(listed)
