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
(text-only models); ``both`` does both. With the tool offered, a short note on what memory holds
joins the caller's system message; the upstream is asked without streaming; each call of the tool
is answered by optimem itself (a recall; the decoded page text, never the session's source text,
so the model knows only what the faded pages still say) and the upstream asked again, at most
MAX_TOOL_ROUNDS times; then once more without the tool, for an answer with what was found. The
caller gets only that final answer (as SSE chunks made from it when it asked for a stream); calls of
its own tools come back to it as usual. Tool traffic is never stored as turns.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, AsyncIterator, Optional
from urllib.parse import urlsplit

import anyio
import httpx
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from optimem.api.auth import tenant
from optimem.api.recall_slots import RecallsBusy, run_recall
from optimem.api.openai_protocol import (ChatCompletion, ChatCompletionRequest, ChatMessage, ErrorResponse, ModelList,
                                 error_body)
from optimem.errors import BadRequest, NotFound, SessionExists
from optimem.memory.context import openai_role
from optimem.memory.results import Accounting, OpenAIContext, PageSpans, Recall
from optimem.memory.service import Memory
from optimem.memory.tokens import count as count_tokens

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
    "X-Optimem-Pages-Faded": "Pages the budget faded beyond the tier their age gives them.",
    "X-Optimem-Family": "The model family whose views and token costs apply (OPTIMEM_FAMILY).",
    "X-Optimem-Memory": "The memory mode of this call: images, tool or both.",
    "X-Optimem-Tool-Rounds": "Rounds in which the upstream called recall_memory and optimem answered.",
    "X-Optimem-Tool-Tokens": "Text tokens those rounds added to the conversation (the calls and the recalled "
                             "text), counted with the session tokenizer.",
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
    if turns:
        memory.append(session, turns, tenant=t)
    if mode == "images":
        return len(turns), memory.context(session, budget=budget, format="openai", min_memory_tokens=min_memory,
                                          tenant=t), None
    pages = memory.pages(session, tenant=t)
    if mode == "both":
        return len(turns), memory.context(session, budget=budget, format="openai", min_memory_tokens=min_memory,
                                          tenant=t), pages
    # no page images made at all, and none sent: the budget is all recent text's
    raw = memory.context(session, budget=budget, format="raw", text_only=True, tenant=t)
    messages_ = []
    for turn in raw.turns:
        role, name = openai_role(turn.role)
        messages_.append({"role": role, "content": turn.content, **({"name": name} if name else {})})
    sent = raw.accounting.model_copy(update={"pages": 0, "visual_tokens": 0.0, "text_tokens_replaced": 0,
                                             "compression": None,
                                             "total_tokens": float(raw.accounting.recent_text_tokens)})
    return len(turns), OpenAIContext(session=session, messages=messages_, accounting=sent), pages


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


MODES = ("images", "tool", "both")
RECALL_TOOL = "recall_memory"
MAX_TOOL_ROUNDS = 3
RECALL_TOOL_SPEC = {"type": "function", "function": {
    "name": RECALL_TOOL,
    "description": "Read back earlier turns of this conversation from memory. They are kept as transcript "
                   "pages that fade with age, so old text may come back partly or not at all; each hit says "
                   "how sure the reading is. Ask by content (query), by position (turn) or by time (since/until).",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": "What to look for, in a few keywords."},
        "turn": {"type": "integer", "description": "One turn by its index (0 is the first turn)."},
        "since": {"type": "string", "description": "Only turns at or after this ISO 8601 time."},
        "until": {"type": "string", "description": "Only turns at or before this ISO 8601 time."},
        "limit": {"type": "integer", "description": "At most this many hits (default 5, at most 20)."},
    }, "required": []}}}
LAST_LOOKUP = ("(That was the last memory look-up for this answer: answer now with what you found, and say "
               "plainly what you could not find.)")


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


def memory_note(pages: list[PageSpans], mode: str) -> str:
    """What memory holds, for the upstream: how many earlier turns, from when to when, how faded."""
    tool = (f"To look something up, call {RECALL_TOOL} with a query (keywords), a turn index, or a time range "
            "(since/until, ISO 8601); it returns what the pages still say, with a confidence.")
    if not pages:
        return f"Memory: no earlier turns beyond those shown here yet. {tool}"
    gone = sum(p.tier == "gone" for p in pages)
    shown = "shown as transcript page images" if mode == "both" else "not shown here as text"
    note = (f"Memory: the {pages[-1].last_turn + 1} earlier turns of this conversation (turns 0-{pages[-1].last_turn}, "
            f"{pages[0].first_time} to {pages[-1].last_time}) are {shown}; they are kept on {len(pages)} pages "
            "that fade with age, so the oldest read back partly or not at all")
    note += f" ({gone} of them have faded out entirely). " if gone else ". "
    return note + tool


def with_note(messages: list[dict], note: str) -> list[dict]:
    """The note joins the caller's leading system message (chat templates take one), else leads alone."""
    if messages and messages[0].get("role") in PASSED_THROUGH:
        first, content = dict(messages[0]), messages[0].get("content")
        if isinstance(content, str) or content is None:
            first["content"] = f"{content}\n\n{note}" if content else note
        else:
            first["content"] = [*content, {"type": "text", "text": note}]
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value


def recall_text(memory: Memory, t: str, session: str, arguments: Any, gone_pages: int) -> str:
    """A recall_memory call answered, as the tool message's text. Blocking: the reader may read pages.

    The hits' decoded text only: the model learns what the pages still say, never the kept source."""
    try:
        args = json.loads(arguments or "{}") if isinstance(arguments, str) else (arguments or {})
        if not isinstance(args, dict):
            raise ValueError
    except ValueError:
        return f"{RECALL_TOOL} takes a JSON object: query, turn, since, until, limit."
    limit = _whole(args.get("limit") or 5)
    limit = min(max(limit, 1), 20) if isinstance(limit, int) and not isinstance(limit, bool) else 5
    try:
        found: Recall = memory.recall(session, args.get("query") or None, turn=_whole(args.get("turn")),
                                      since=args.get("since") or None, until=args.get("until") or None,
                                      limit=limit, tenant=t)
    except (BadRequest, ValueError, TypeError) as exc:
        return f"{RECALL_TOOL} could not run: {exc}"
    lines = []
    for h in found.hits:
        where = "recent text" if h.page is None else f"page {h.page}, tier {h.tier}"
        said = h.text.strip() or "(this page has faded out: its words cannot be read back)"
        lines.append(f"[turn {h.turn} | {h.role} | {h.time} | {where} | confidence {h.confidence:.2f}]\n{said}")
    if not lines:
        lines.append("Memory has nothing that matches.")
        if gone_pages:
            lines.append(f"{gone_pages} of the oldest pages have faded out entirely; what they held cannot be "
                         "read back.")
    else:
        lines.insert(0, f"{len(found.hits)} hit(s), best first. Text read from faded pages may be partly wrong.")
    if found.pages_unread:
        lines.append(f"{found.pages_unread} page(s) were not read in time; asking again later may find more.")
    return "\n\n".join(lines)


def tools_refused(upstream: httpx.Response, raw: bytes, mode: str) -> tuple[int, dict]:
    """An upstream that does not take tools: say which memory mode works without them."""
    status, error = upstream_error(upstream, raw)
    said = error["error"].get("message", "")
    return 400, error_body(f"the upstream refused the {RECALL_TOOL} tool that memory mode '{mode}' offers "
                           f"(it said: {said}). Use a model or server with tool calling (vLLM: "
                           "--enable-auto-tool-choice --tool-call-parser ...), or send X-Optimem-Memory: images "
                           "(OPTIMEM_MEMORY_MODE=images) to give it memory as page images instead.",
                           "invalid_request_error", "tools_unsupported")


def add_usage(total: dict, usage: Any) -> None:
    if isinstance(usage, dict):
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if isinstance(usage.get(key), int):
                total[key] = total.get(key, 0) + usage[key]


def honest_answer(answer: dict, rounds: int) -> dict:
    """The upstream still wants to look things up past the bound: say so instead of guessing."""
    text = (f"I looked in my memory of our conversation {rounds} times and could not settle this; I would "
            "rather not guess. Could you remind me?")
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return {**answer, "choices": [choice]}


def sse_events(answer: dict, include_usage: bool) -> list[bytes]:
    """A chat.completion as the chat.completion.chunk events a streamed one would have been."""
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


async def with_recall_tool(memory: Memory, t: str, session: str, mode: str, base: str, payload: dict,
                           client: httpx.AsyncClient, gone_pages: int, http: Request
                           ) -> tuple[dict | None, JSONResponse | None, int, int]:
    """Ask the upstream, answering its recall_memory calls, until it answers the caller.

    Each look-up runs as the API's recalls do (``recall_slots.run_recall``: a recall slot and thread, never
    the request threadpool); with every slot taken the tool answers that memory is busy.
    Returns (the final chat.completion, or an error response; tool rounds run; tokens they added)."""

    messages = list(payload["messages"])
    request = {key: value for key, value in payload.items() if key != "stream_options"}
    request["stream"] = False
    rounds = tokens = 0
    usage: dict = {}
    while True:
        last = rounds >= MAX_TOOL_ROUNDS
        if last:  # the look-ups are spent: ask for the answer without offering the tool again
            theirs = [tool for tool in request["tools"] if (tool.get("function") or {}).get("name") != RECALL_TOOL]
            request = {key: value for key, value in request.items() if key != "tools"}
            if theirs:
                request["tools"] = theirs
            else:
                request.pop("tool_choice", None)
                request.pop("parallel_tool_calls", None)
        request["messages"] = messages
        try:
            upstream = await client.post(f"{base}/chat/completions", json=request)
        except httpx.HTTPError as exc:
            status = 504 if isinstance(exc, httpx.TimeoutException) else 502
            return None, JSONResponse(error_body(f"upstream {base} did not answer: {exc!r}", "upstream_error",
                                                 status), status_code=status), rounds, tokens
        if upstream.status_code >= 400:
            raw = upstream.content
            if upstream.status_code == 400 and b"tool" in raw.lower() and rounds == 0:
                status, error = tools_refused(upstream, raw, mode)
            else:
                status, error = upstream_error(upstream, raw)
            return None, JSONResponse(error, status_code=status), rounds, tokens
        try:
            answer = upstream.json()
            message = answer["choices"][0]["message"]
            calls = message.get("tool_calls") or []
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return None, JSONResponse(error_body("upstream answered with something that is not a chat completion",
                                                 "upstream_error"), status_code=502), rounds, tokens
        add_usage(usage, answer.get("usage"))
        ours = [c for c in calls if (c.get("function") or {}).get("name") == RECALL_TOOL]
        if ours and len(ours) < len(calls):  # the caller's tools too: those are the caller's to run
            message["tool_calls"] = [c for c in calls if c not in ours]
        elif ours and last:
            answer = honest_answer(answer, rounds)
        elif ours:
            rounds += 1
            messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": ours})
            for call in ours:
                arguments = (call.get("function") or {}).get("arguments")
                try:
                    text = await run_recall(http, recall_text, memory, t, session, arguments, gone_pages)
                except RecallsBusy as busy:
                    text = f"{RECALL_TOOL} could not run now: {busy}"
                if rounds >= MAX_TOOL_ROUNDS:
                    text = f"{text}\n\n{LAST_LOOKUP}"
                messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": text})
                tokens += count_tokens(f"{RECALL_TOOL}{arguments or ''}", memory.settings.tokenizer)
                tokens += count_tokens(text, memory.settings.tokenizer)
            continue
        if usage:
            answer["usage"] = {**(answer.get("usage") or {}), **usage}
        return answer, None, rounds, tokens


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={200: SSE, **ERRORS})
async def chat_completions(
        request: Request, body: ChatCompletionRequest, t: str = Depends(tenant),
        x_optimem_session: Optional[str] = Header(None, description="The session; else the 'user' field."),
        x_optimem_budget: Optional[int] = Header(None, ge=0, description="Context budget in tokens (text + visual)."),
        x_optimem_min_memory_tokens: int = Header(0, ge=0, description="Tokens of the budget kept for memory pages "
                                                                       "even when recent text would fill it."),
        x_optimem_memory: Optional[str] = Header(None, description="images (page images), tool (the recall_memory "
                                                                    "tool, no images) or both; else "
                                                                    "OPTIMEM_MEMORY_MODE."),
        authorization: Optional[str] = Header(None, include_in_schema=False)) -> Response:
    """Chat through memory: store the new turns, send optimem's context upstream, store the reply."""
    memory: Memory = request.app.state.memory
    session = x_optimem_session or body.user
    stored, headers = 0, {}
    try:
        base = upstream_base(memory.settings.upstream_url)
        mode = memory_mode(x_optimem_memory, memory.settings.memory_mode)
        if not session:
            raise ProxyError(400, "name the session: send an X-Optimem-Session header or the 'user' field")
        budget = x_optimem_budget if x_optimem_budget is not None else (memory.settings.budget or None)
        try:
            stored, ctx, pages = await run_in_threadpool(prepare, memory, t, session, body.messages, budget, mode,
                                                         x_optimem_min_memory_tokens)
        except BadRequest as exc:
            raise ProxyError(400, str(exc)) from None
        headers = {**accounting_headers(session, memory.ladder.family, stored, ctx.accounting),
                   "X-Optimem-Memory": mode, "X-Optimem-Tool-Rounds": "0", "X-Optimem-Tool-Tokens": "0"}
        system = [m.model_dump(exclude_none=True) for m in body.messages if m.role in PASSED_THROUGH]
        payload = body.model_dump(exclude_unset=True)
        payload["messages"] = upstream_messages(system, ctx)
        if pages is not None:
            if any((tool.get("function") or {}).get("name") == RECALL_TOOL for tool in body.tools or []):
                raise ProxyError(400, f"a tool named {RECALL_TOOL} is optimem's own in memory mode '{mode}'; "
                                      "rename yours, or send X-Optimem-Memory: images")
            payload["tools"] = [*(body.tools or []), RECALL_TOOL_SPEC]
            payload["messages"] = with_note(payload["messages"], memory_note(pages, mode))
    except ProxyError as exc:
        return exc.response(headers)

    if pages is not None:
        gone = sum(p.tier == "gone" for p in pages)
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=upstream_headers(memory, authorization)) as client:
            answer, error, rounds, tokens = await with_recall_tool(memory, t, session, mode, base, payload, client,
                                                                   gone, request)
        headers.update({"X-Optimem-Tool-Rounds": str(rounds), "X-Optimem-Tool-Tokens": str(tokens)})
        if error is not None:
            error.headers.update(headers)
            return error
        await run_in_threadpool(store_reply, memory, t, session, answer["choices"][0]["message"].get("content"))
        if not body.stream:
            return JSONResponse(answer, headers=headers)
        events = sse_events(answer, bool((body.stream_options or {}).get("include_usage")))

        async def replay() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return StreamingResponse(replay(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})

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
