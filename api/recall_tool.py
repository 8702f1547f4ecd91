"""The ``recall_memory`` tool of memory modes ``tool`` and ``both``: offered to the upstream, answered
by optimem itself, round after round, until the upstream answers the caller.

Bounds, each told to the model when it applies: at most MAX_TOOL_ROUNDS rounds (then one more ask
without the tool), at most CALLS_PER_ROUND look-ups answered per round, and at most RECALL_CHARS
characters of recalled text per look-up. One upstream message with 100 calls once made a proxy call
take 48.6 s and send 114,630 tokens of tool results upstream (issue 25): with these bounds a call adds
at most 3 x 4 x 6,000 characters, about 18k tokens, within the proxy's default budget's reach.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request

from optimem.api.errors import ProxyError
from optimem.api.recall_slots import RecallsBusy, run_recall
from optimem.errors import BadRequest
from optimem.memory.results import PageSpans, Recall
from optimem.memory.service import Memory

MODES = ("images", "tool", "both")
RECALL_TOOL = "recall_memory"
MAX_TOOL_ROUNDS = 3
CALLS_PER_ROUND = 4      # look-ups answered per round; the rest are told to ask again
RECALL_CHARS = 6_000     # recalled text per look-up (~1,500 tokens); past it, cut and said so
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
PASSED_THROUGH = ("system", "developer")


@dataclass
class Rounds:
    """What the loop did, for the X-Optimem-Tool-* headers (also when it ends in an error)."""
    count: int = 0
    tokens: int = 0
    usage: dict = field(default_factory=dict)


Ask = Callable[[dict], Awaitable[dict]]          # one checked chat completion from the upstream
LookUp = Callable[[Any], Awaitable[str]]         # a recall_memory call's arguments -> the tool's text


def caller_tools(tools: list[dict] | None) -> list[dict]:
    """The caller's tools, checked where optimem reads them; 400 for a shape no OpenAI server takes."""
    for i, tool in enumerate(tools or []):
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ProxyError(400, f"tools[{i}].function must be an object with a name, got "
                                  f"{type(function).__name__}")
        if function.get("name") == RECALL_TOOL:
            raise ProxyError(400, f"a tool named {RECALL_TOOL} is optimem's own in memory modes tool and both; "
                                  "rename yours, or send X-Optimem-Memory: images")
    return list(tools or [])


async def answer_with_recall(ask: Ask, look_up: LookUp, payload: dict, count_tokens: Callable[[str], int],
                             mode: str, done: Rounds) -> dict:
    """Ask the upstream, answering its recall_memory calls, until it answers the caller; that answer."""
    messages = list(payload["messages"])
    request = {key: value for key, value in payload.items() if key != "stream_options"}
    request["stream"] = False
    while True:
        last = done.count >= MAX_TOOL_ROUNDS
        if last:   # the look-ups are spent: ask for the answer without offering the tool again
            request = without_recall_tool(request)
        request["messages"] = messages
        try:
            answer = await ask(request)
        except ProxyError as exc:
            raise caller_error(exc, mode, first=done.count == 0) from None
        add_usage(done.usage, answer.get("usage"))
        message = answer["choices"][0]["message"]
        step, ours, theirs = next_step(message.get("tool_calls") or [], last)
        if step == "look up":
            done.count += 1
            messages += await tool_round(message, ours, look_up, count_tokens, done)
            continue
        if step == "their tools":
            message["tool_calls"] = theirs
        elif step == "honest":
            answer = honest_answer(answer, done.count)
        if done.usage:
            answer["usage"] = {**(answer.get("usage") or {}), **done.usage}
        return answer


Step = Literal["look up", "their tools", "honest", "answer"]


def next_step(calls: list[dict], last: bool) -> tuple[Step, list[dict], list[dict]]:
    """What a finished round means, streamed or not, with its calls split into ours and the caller's:
    the caller's tools called ("their tools": theirs to run; a recall_memory call beside them is
    dropped), only ours within the bound ("look up": answer them, ask again), only ours past it
    ("honest"), or no calls ("answer")."""
    ours = [c for c in calls if c["function"]["name"] == RECALL_TOOL]
    theirs = [c for c in calls if c not in ours]
    step: Step = "their tools" if theirs else "honest" if ours and last else "look up" if ours else "answer"
    return step, ours, theirs


def caller_error(exc: ProxyError, mode: str, first: bool) -> ProxyError:
    """An upstream's error as the caller should see it: a 400 about tools on the first ask means it does
    not take them (say which memory mode works without); anything else as it came."""
    if first and exc.status == 400 and "tool" in exc.message.lower():
        return tools_refused(exc.message, mode)
    return exc


async def tool_round(message: dict, calls: list[dict], look_up: LookUp, count_tokens: Callable[[str], int],
                     done: Rounds) -> list[dict]:
    """The assistant's calls and one tool message per call (the ones past CALLS_PER_ROUND say so)."""
    out: list[dict] = [{"role": "assistant", "content": message.get("content"), "tool_calls": calls}]
    for n, call in enumerate(calls):
        arguments = call["function"].get("arguments")
        if n < CALLS_PER_ROUND:
            text = capped(await look_up(arguments))
        else:
            text = (f"Not looked up: at most {CALLS_PER_ROUND} {RECALL_TOOL} calls are answered at a time. "
                    "Ask again for what is still missing, fewer at once.")
        if done.count >= MAX_TOOL_ROUNDS:
            text = f"{text}\n\n{LAST_LOOKUP}"
        out.append({"role": "tool", "tool_call_id": str(call.get("id", "")), "content": text})
        done.tokens += count_tokens(f"{RECALL_TOOL}{arguments or ''}") + count_tokens(text)
    return out


def capped(text: str) -> str:
    if len(text) <= RECALL_CHARS:
        return text
    return (text[:RECALL_CHARS] + f"\n\n(Cut at {RECALL_CHARS} characters: ask with a narrower query or a "
                                  "smaller limit for the rest.)")


def without_recall_tool(request: dict) -> dict:
    theirs = [tool for tool in request.get("tools") or [] if tool["function"].get("name") != RECALL_TOOL]
    request = {key: value for key, value in request.items() if key != "tools"}
    if theirs:
        request["tools"] = theirs
    else:
        request.pop("tool_choice", None)
        request.pop("parallel_tool_calls", None)
    return request


def looking_up(request: Request, memory: Memory, t: str, session: str, gone_pages: int) -> LookUp:
    """Look-ups as the API's recalls run (``run_recall``: a recall slot and thread, never the request
    threadpool); with every slot taken the tool answers that memory is busy."""
    async def look_up(arguments: Any) -> str:
        try:
            return await run_recall(request, recall_text, memory, t, session, arguments, gone_pages)
        except RecallsBusy as busy:
            return f"{RECALL_TOOL} could not run now: {busy}"
    return look_up


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value


def recall_text(memory: Memory, t: str, session: str, arguments: Any, gone_pages: int) -> str:
    """A recall_memory call answered, as the tool message's text. Blocking: the reader may read pages.

    The hits' decoded text only: the model learns what the pages still say, never the kept source."""
    try:
        args = json.loads(arguments or "{}") if isinstance(arguments, str) else (arguments or {})
        if not isinstance(args, dict):
            raise ValueError
    except (ValueError, RecursionError):
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


def tools_refused(said: str, mode: str) -> ProxyError:
    """An upstream that does not take tools: say which memory mode works without them."""
    return ProxyError(400, f"the upstream refused the {RECALL_TOOL} tool that memory mode '{mode}' offers "
                           f"(it said: {said}). Use a model or server with tool calling (vLLM: "
                           "--enable-auto-tool-choice --tool-call-parser ...), or send X-Optimem-Memory: images "
                           "(OPTIMEM_MEMORY_MODE=images) to give it memory as page images instead.",
                      "invalid_request_error", "tools_unsupported")


def add_usage(total: dict, usage: Any) -> None:
    if isinstance(usage, dict):
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if isinstance(usage.get(key), int):
                total[key] = total.get(key, 0) + usage[key]


def honest_text(rounds: int) -> str:
    """The upstream still wants to look things up past the bound: say so instead of guessing."""
    return (f"I looked in my memory of our conversation {rounds} times and could not settle this; I would "
            "rather not guess. Could you remind me?")


def honest_answer(answer: dict, rounds: int) -> dict:
    text = honest_text(rounds)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return {**answer, "choices": [choice]}
