"""optimem as an MCP server: memory tools an agent calls (remember, recall, context, sessions,
forget_session) and its pages as resources, on the official ``mcp`` SDK (2.x: ``MCPServer``).

A translation layer, like the proxy: arguments in, one ``Verbs`` call, typed results out (a
readable text for the model and the same as structured content for programs). Who is asking and
which memory answers is the caller's business (``Caller``): ``optimem mcp`` over stdio binds one
(the embedded Memory, or a ``Client`` of a running service); ``/mcp`` on ``optimem serve``
(``mcp_http``) binds each request to its API key's tenant.

Every refusal is a tool error saying what to fix; nothing from an unexpected exception reaches the
client (the SDK logs it on the server and answers "Error executing tool <name>").
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Awaitable, Callable, Literal, Optional, Union

import anyio
import anyio.to_thread
import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import (INVALID_REQUEST, PARSE_ERROR, CallToolResult, ErrorData, ImageContent, JSONRPCError,
                       TextContent, ToolAnnotations)
from pydantic import BaseModel, Field, StrictInt, ValidationError

from optimem._version import __version__
from optimem.api.schemas import TurnIn
from optimem.api.verbs import Recalled, Verbs, append_creating, asked, raw_context, recall_text, recalled
from optimem.errors import NotFound, OptimemError
from optimem.memory.results import Accounting, Recall
from optimem.memory.results import Forgotten as TurnsForgotten
from optimem.memory.service import SESSION_CHARS
from optimem.settings import SCOPES

INSTRUCTIONS = ("Long-term memory for this conversation. Call `remember` with each new turn (or a batch); "
                "older turns are kept as transcript pages that fade with age. Before answering about the "
                "past, call `recall` (by keywords, turn index or time range): it returns what the pages "
                "still say, with a confidence. `context` gives the recent turns plus the memory pages as "
                "images within a token budget.")

Session = Annotated[str, Field(pattern=f"^{SESSION_CHARS}$", description="Session id: 1-128 letters, digits, "
                                                                          "'.', '_' or '-' (one per conversation).")]


@dataclass
class Caller:
    """Whose memory a call reaches, and how a recall runs (over HTTP: in the app's recall slots)."""
    verbs: Verbs
    run_recall: Optional[Callable[..., Awaitable[Recall]]] = None
    scope: str = "admin"     # what the caller's API key may do (OPTIMEM_API_KEYS key:tenant:scope)

    def needs(self, scope: str, what: str) -> "Caller":
        """This caller, if its key's scope allows ``scope``; else the tool refuses, saying why."""
        if SCOPES.index(self.scope) < SCOPES.index(scope):
            raise ToolError(f"this API key's scope is '{self.scope}'; {what} needs '{scope}'")
        return self


# -- results ---------------------------------------------------------------------------------
class Remembered(BaseModel):
    session: str
    first_turn: int = Field(description="Index of the first turn remembered by this call.")
    remembered: int = Field(description="Turns remembered by this call.")
    turns: int = Field(description="Turns in the session now.")
    sealing: bool = Field(description="True when older turns are being sealed into pages just after this call.")


class MemoryPage(BaseModel):
    page: int
    first_turn: int
    last_turn: int
    first_time: str
    last_time: str
    tier: str
    px: int = Field(description="Side of the page image sent, in pixels.")
    visual_tokens: float
    text_tokens: int = Field(description="Text tokens of the turns the page holds.")


class RecentTurn(BaseModel):
    index: int
    role: str
    time: str
    content: str


class ContextResult(BaseModel):
    session: str
    pages: list[MemoryPage] = Field(description="The memory pages, oldest first, sent as PNG images in this order.")
    turns: list[RecentTurn] = Field(description="The recent turns, as text.")
    accounting: Accounting


class Sessions(BaseModel):
    sessions: list[str]


class Forgotten(BaseModel):
    session: str
    deleted: bool


# -- translation -----------------------------------------------------------------------------
def _hint(exc: OptimemError) -> str:
    if isinstance(exc, NotFound) and str(exc).startswith("no session"):
        return f"{exc}: the `sessions` tool lists the sessions there are; `remember` starts one"
    return str(exc)


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking verb on a worker thread; optimem's refusals become tool errors saying what to fix."""
    try:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))
    except OptimemError as exc:
        raise ToolError(_hint(exc)) from None
    except httpx.TransportError as exc:
        raise ToolError(f"the optimem service did not answer ({type(exc).__name__}); is `optimem serve` running?") \
            from None


def _structured(model: BaseModel, content: list) -> CallToolResult:
    return CallToolResult(content=content, structured_content=model.model_dump(mode="json"))


def server(caller_for: Callable[[Context], Caller], name: str = "optimem") -> MCPServer:
    """The MCP server; ``caller_for(ctx)`` says whose memory each request reaches."""
    mcp = MCPServer(name, version=__version__, instructions=INSTRUCTIONS, log_level="WARNING",
                    warn_on_duplicate_tools=False)
    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
    reads = ToolAnnotations(read_only_hint=True)

    @mcp.tool(annotations=writes, description="Remember conversation turns in a session (created on first "
              "use): `turns` in order, or one `text`. Returns at once; older turns are sealed into pages after.")
    async def remember(
            session: Session,
            ctx: Context,
            turns: Annotated[Optional[list[TurnIn]], Field(
                description="Turns in order: {role, content, time?}; at most 1000 a call.", max_length=1000)] = None,
            text: Annotated[Optional[str], Field(description="One turn's text (instead of `turns`).")] = None,
            role: Annotated[str, Field(description="Speaker of `text`: user, assistant or a name.",
                                       max_length=64)] = "user",
    ) -> Annotated[CallToolResult, Remembered]:
        if (turns is None) == (text is None):
            raise ToolError("give either `turns` (a list of {role, content}) or `text` (one turn), not both or neither")
        given = [t.model_dump() for t in turns] if turns is not None else [{"role": role, "content": text}]
        if not given:
            raise ToolError("`turns` is empty: give at least one {role, content}")
        got = await _run(append_creating, caller_for(ctx).needs("write", "remember").verbs, session, given)
        done = Remembered(session=session, first_turn=got.first_index, remembered=got.appended, turns=got.turns,
                          sealing=got.sealing)
        span = f"turn {done.first_turn}" if done.remembered == 1 else \
            f"turns {done.first_turn}-{done.first_turn + done.remembered - 1}"
        return _structured(done, [TextContent(type="text", text=f"Remembered {span} in session {session!r} "
                                                                 f"({done.turns} turns in all).")])

    @mcp.tool(annotations=reads, description="Read back earlier turns of a session: by `query` (keywords), by "
              "`turn` (index, 'first' or 'last') or by time (`since`/`until`, ISO 8601); says plainly when "
              "nothing is found.")
    async def recall(
            session: Session,
            ctx: Context,
            query: Annotated[Optional[str], Field(description="What to look for, in a few keywords.",
                                                  max_length=10_000)] = None,
            turn: Annotated[Union[StrictInt, Literal["first", "last"], None], Field(
                description="One turn by index (0 is the first), or 'first' / 'last'.")] = None,
            since: Annotated[Optional[str], Field(description="Only turns at or after this ISO 8601 time.",
                                                  max_length=64)] = None,
            until: Annotated[Optional[str], Field(description="Only turns at or before this ISO 8601 time.",
                                                  max_length=64)] = None,
            role: Annotated[Optional[str], Field(description="Only this speaker's turns (e.g. 'user').",
                                                 max_length=64)] = None,
            limit: Annotated[StrictInt, Field(ge=1, le=100, description="At most this many hits.")] = 5,
    ) -> Annotated[CallToolResult, Recalled]:
        if query is None and turn is None and since is None and until is None:
            raise ToolError("give a `query` (keywords), a `turn` (index, 'first' or 'last') or `since`/`until`")
        c = caller_for(ctx)
        call = partial(c.verbs.recall, session, query, turn=turn, since=since, until=until, role=role, limit=limit)
        if c.run_recall is None:
            got = await _run(call)
        else:
            try:
                got = await c.run_recall(call)
            except OptimemError as exc:
                raise ToolError(_hint(exc)) from None
        found = recalled(got, asked(query=query, turn=turn, since=since, until=until, role=role))
        return _structured(found, [TextContent(type="text", text=recall_text(found))])

    @mcp.tool(annotations=reads, description="The session's recent turns as text plus its memory pages as PNG "
              "images at each page's tier, within `budget` tokens, with the token accounting.")
    async def context(
            session: Session,
            ctx: Context,
            budget: Annotated[Optional[StrictInt], Field(
                ge=0, description="Total tokens (text + visual); pages fade further to fit. None: no limit.")] = None,
    ) -> Annotated[CallToolResult, ContextResult]:
        v = caller_for(ctx).verbs
        raw = await _run(raw_context, v, session, budget)
        pages = [MemoryPage(**p.model_dump(include=set(MemoryPage.model_fields))) for p in raw.pages]
        turns = [RecentTurn(index=t.index, role=t.role, time=t.time, content=t.content) for t in raw.turns]
        a = raw.accounting
        summary = (f"Session {session!r}: {len(turns)} recent turn(s) as text ({a.recent_text_tokens} tokens) and "
                   f"{len(pages)} memory page(s) as images ({a.visual_tokens:g} visual tokens standing for "
                   f"{a.text_tokens_replaced} text tokens); {a.total_tokens:g} tokens in all"
                   + (f" of a budget of {a.budget}" if a.budget is not None else "")
                   + (f"; {a.pages_forgotten} older page(s) have faded out" if a.pages_forgotten else "") + ".")
        content: list = [TextContent(type="text", text=summary)]
        for p in pages:   # each at the tier the context placed it at (the budget may have faded it)
            png = await _run(v.page_image, session, p.page, p.tier)
            content.append(TextContent(type="text", text=f"Memory page {p.page}: turns {p.first_turn}-{p.last_turn}, "
                                                         f"{p.first_time} to {p.last_time}, tier {p.tier}"))
            content.append(ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"))
        if turns:
            content.append(TextContent(type="text", text="Recent turns:\n" + "\n".join(
                f"[{t.index}] {t.role} ({t.time}): {t.content}" for t in turns)))
        return _structured(ContextResult(session=session, pages=pages, turns=turns, accounting=a), content)

    @mcp.tool(annotations=reads, description="List the ids of the sessions this caller can see.")
    async def sessions(ctx: Context) -> Annotated[CallToolResult, Sessions]:
        got = Sessions(sessions=await _run(caller_for(ctx).verbs.sessions))
        text = ("Sessions: " + ", ".join(got.sessions)) if got.sessions else "There are no sessions yet."
        return _structured(got, [TextContent(type="text", text=text)])

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
              description="Delete a session and everything remembered in it, for good; needs `confirm: true`.")
    async def forget_session(
            session: Session,
            ctx: Context,
            confirm: Annotated[bool, Field(description="Must be true: the deletion cannot be undone.")] = False,
    ) -> Annotated[CallToolResult, Forgotten]:
        if confirm is not True:
            raise ToolError(f"not deleted: call again with confirm=true to delete session {session!r} and all its "
                            "turns and pages (this cannot be undone)")
        await _run(caller_for(ctx).needs("admin", "forget_session").verbs.delete_session, session)
        return _structured(Forgotten(session=session, deleted=True),
                           [TextContent(type="text", text=f"Session {session!r} is deleted.")])

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
              description="Forget turns for real, when the user asks: their text leaves memory (the stored "
              "text, the search index, the page images, every cache); the turns keep their numbers, empty. "
              "`turn`, or `turn` to `last`; needs `confirm: true`.")
    async def forget_turns(
            session: Session,
            turn: Annotated[StrictInt, Field(description="The (first) turn to forget.", ge=0)],
            ctx: Context,
            last: Annotated[Optional[StrictInt], Field(description="The last turn to forget (included).", ge=0)] = None,
            confirm: Annotated[bool, Field(description="Must be true: the text cannot be brought back.")] = False,
    ) -> Annotated[CallToolResult, TurnsForgotten]:
        if confirm is not True:
            raise ToolError("not forgotten: call again with confirm=true to take these turns' text out of memory "
                            "for good")
        got = await _run(caller_for(ctx).needs("admin", "forget_turns").verbs.forget, session, turn, last)
        span = f"turn {got.turns[0]}" if len(got.turns) == 1 else f"turns {got.turns[0]}-{got.turns[-1]}"
        return _structured(got, [TextContent(type="text", text=f"Forgot {span} of session {session!r}: the text "
                                                               "is gone, the turn numbers stay.")])

    @mcp.resource("optimem://{session}/pages/{n}{?tier}", name="page", mime_type="image/png",
                  description="A memory page as PNG, at `tier` (a tier name or 'full'; default: its tier now).")
    async def page(session: str, n: str, ctx: Context, tier: str | None = None) -> bytes:
        if not n.isdigit():
            raise ResourceError(f"page must be a page number, got {n!r}")
        try:
            return await anyio.to_thread.run_sync(partial(caller_for(ctx).verbs.page_image, session, int(n), tier))
        except OptimemError as exc:
            raise ResourceError(_hint(exc)) from None

    return mcp


def refusal(exc: Exception) -> SessionMessage:
    """The JSON-RPC error for a line that is not a message: -32700 when it is not JSON, else -32600."""
    bad_json = isinstance(exc, ValidationError) and any(e["type"] == "json_invalid" for e in exc.errors())
    code, what = (PARSE_ERROR, "not JSON") if bad_json else (INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    return SessionMessage(JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(
        code=code, message=f"ignored a line that is {what}: send one JSON-RPC message per line")))


async def serve_stdio(mcp: MCPServer) -> None:
    """Serve on stdin/stdout until stdin closes. A line that is not a JSON-RPC message is answered
    with a JSON-RPC error (id null) and the session goes on: the SDK would drop it without a word,
    leaving a client that sent it waiting."""
    lowlevel = mcp._lowlevel_server   # as MCPServer.run_stdio_async and the SDK's own Client reach it (mcp 2.x)
    async with stdio_server() as (read, write), anyio.create_task_group() as tg:
        send, receive = anyio.create_memory_object_stream[Union[SessionMessage, Exception]](0)

        async def relay() -> None:
            async with send:
                async for item in read:
                    await (write.send(refusal(item)) if isinstance(item, Exception) else send.send(item))

        tg.start_soon(relay)
        await lowlevel.run(receive, write, lowlevel.create_initialization_options())
