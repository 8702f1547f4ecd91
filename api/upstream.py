"""The model server behind the proxy: one pooled ``httpx.AsyncClient`` per app, and what its answers
may look like.

The client is made in the app's lifespan (``open_client``) and closed on shutdown, with the timeouts
of ``OPTIMEM_UPSTREAM_TIMEOUT_S`` / ``OPTIMEM_UPSTREAM_CONNECT_S``; connections to the model server
are reused across requests. Whatever goes wrong on the way is one ``ProxyError`` in OpenAI's shape:

- the upstream did not answer (refused, timed out, cut off): 502, ``upstream_unreachable``;
- it answered 5xx: 502, ``upstream_error`` with its message (optimem's own faults stay 500);
- it answered 4xx: that status and its message (a 429 is the caller's to see);
- it answered 200 with something that is not a chat completion: 502, ``upstream_bad_response``,
  naming what was wrong. An upstream is never trusted to be well-formed.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from optimem.api.errors import ProxyError
from optimem.settings import Settings

UNREACHABLE = 502   # the one status of "the upstream did not answer", on every path
MAX_DEPTH = 64      # JSON nesting an answer may have; deeper is a broken or hostile upstream


def open_client(settings: Settings) -> httpx.AsyncClient:
    """The app's one client to the upstream (the lifespan closes it)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(settings.upstream_timeout_s,
                                                   connect=settings.upstream_connect_s))


def base_url(settings: Settings) -> str:
    """The upstream's OpenAI base URL; a bare host (no path) means its /v1."""
    url = settings.upstream_url
    if not url:
        raise ProxyError(503, "no upstream model: set OPTIMEM_UPSTREAM_URL to an OpenAI-compatible server's "
                              "base URL (e.g. http://localhost:8001/v1)", "service_unavailable")
    url = url.rstrip("/")
    return url if urlsplit(url).path else url + "/v1"


def auth_headers(settings: Settings, authorization: str | None) -> dict[str, str]:
    """The upstream's own key when set; else the caller's, when optimem itself takes no keys."""
    if settings.upstream_key:
        return {"Authorization": f"Bearer {settings.upstream_key}"}
    if authorization and not settings.tenants():
        return {"Authorization": authorization}
    return {}


def unreachable(base: str, exc: httpx.HTTPError) -> ProxyError:
    return ProxyError(UNREACHABLE, f"upstream {base} did not answer: {type(exc).__name__}: {exc}",
                      "upstream_error", "upstream_unreachable")


async def send(client: httpx.AsyncClient, request: httpx.Request, stream: bool = False) -> httpx.Response:
    """The upstream's response (streamed: the caller closes it); ``ProxyError`` when it did not answer."""
    try:
        return await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        raise unreachable(str(request.url), exc) from None


async def read(response: httpx.Response) -> bytes:
    """A streamed response's whole body, closed after; ``ProxyError`` when it is cut off."""
    try:
        return await response.aread()
    except httpx.HTTPError as exc:
        raise unreachable(str(response.request.url), exc) from None
    finally:
        await response.aclose()


def encode(payload: dict) -> bytes:
    """A request body that always encodes: ASCII JSON (a lone surrogate goes as its escape)."""
    return json.dumps(payload, ensure_ascii=True).encode()


async def complete(client: httpx.AsyncClient, base: str, payload: dict, headers: dict[str, str]) -> dict:
    """One chat completion, not streamed, checked (``chat_completion``); ``ProxyError`` otherwise."""
    request = client.build_request("POST", f"{base}/chat/completions", content=encode(payload),
                                   headers={**headers, "Content-Type": "application/json"})
    response = await send(client, request)
    if response.status_code >= 400:
        raise refusal(response, response.content)
    return chat_completion(response.content)


async def open_stream(client: httpx.AsyncClient, base: str, payload: dict,
                      headers: dict[str, str]) -> httpx.Response | dict:
    """A chat completion asked as a stream: the open response when the upstream streams (the caller
    closes it), else its whole answer, checked (``chat_completion``); ``ProxyError`` on an error."""
    request = client.build_request("POST", f"{base}/chat/completions", content=encode(payload),
                                   headers={**headers, "Content-Type": "application/json"})
    response = await send(client, request, stream=True)
    if response.status_code < 400 and response.headers.get("content-type", "").startswith("text/event-stream"):
        return response
    raw = await read(response)
    if response.status_code >= 400:
        raise refusal(response, raw)
    return chat_completion(raw)


def refusal(response: httpx.Response, body: bytes) -> ProxyError:
    """The upstream's error as optimem answers it: 4xx as it came, 5xx as 502, in OpenAI's shape."""
    status = response.status_code if response.status_code < 500 else 502
    message, kind, code = None, "upstream_error", response.status_code
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message, kind, code = error.get("message"), error.get("type") or kind, error.get("code", code)
        elif isinstance(data, dict):
            message = data.get("detail") or data.get("message")
    except (ValueError, RecursionError):
        pass
    if not isinstance(message, str):
        message = body.decode(errors="replace")
    message = message.strip()[:2000] or response.reason_phrase
    if response.status_code >= 500:
        message = f"upstream answered {response.status_code}: {message}"
    return ProxyError(status, message, str(kind), code)


def bad(what: str) -> ProxyError:
    return ProxyError(502, f"the upstream's answer is not a chat completion: {what}", "upstream_error",
                      "upstream_bad_response")


def bad_models() -> ProxyError:
    return ProxyError(502, "the upstream's model list is not an object with a 'data' list", "upstream_error",
                      "upstream_bad_response")


def depth_over(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests lists/objects deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > limit:
                return True
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse(body: bytes) -> Any:
    """JSON that is safe to walk and send on: not too deep; ``bad`` otherwise."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise bad(f"it nests deeper than {MAX_DEPTH}") from None
    except ValueError:
        raise bad("it is not JSON") from None
    if depth_over(value):
        raise bad(f"it nests deeper than {MAX_DEPTH}")
    return value


def chat_completion(body: bytes) -> dict:
    """The upstream's chat.completion, checked where the proxy reads it: the first choice's message,
    its ``content`` (a string or null) and its ``tool_calls`` (a list of {function: {name, arguments}})."""
    answer = parse(body)
    if not isinstance(answer, dict):
        raise bad(f"it is a JSON {type(answer).__name__}, not an object")
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        raise bad("'choices' is not a non-empty list of objects")
    for i, choice in enumerate(choices):
        message(choice.get("message"), f"choices[{i}].message")
    return answer


def with_text(value: Any, where: str) -> dict:
    """A message or a stream's delta: an object whose ``content`` is a string or null."""
    if not isinstance(value, dict):
        raise bad(f"{where} is not an object")
    if value.get("content") is not None and not isinstance(value["content"], str):
        raise bad(f"{where}.content is a {type(value['content']).__name__}, not a string")
    return value


def message(value: Any, where: str) -> dict:
    calls = with_text(value, where).get("tool_calls")
    if calls is None:
        return value
    if not isinstance(calls, list):
        raise bad(f"{where}.tool_calls is a {type(calls).__name__}, not a list")
    for i, call in enumerate(calls):
        at = f"{where}.tool_calls[{i}]"
        if not isinstance(call, dict):
            raise bad(f"{at} is a {type(call).__name__}, not an object")
        function = call.get("function")
        if not isinstance(function, dict):
            raise bad(f"{at}.function is a {type(function).__name__}, not an object")
        if not isinstance(function.get("name"), str):
            raise bad(f"{at}.function.name is not a string")
        if not isinstance(function.get("arguments", ""), (str, dict)):
            raise bad(f"{at}.function.arguments is not a string")
    return value


def chat_chunk(data: bytes) -> dict:
    """One chat.completion.chunk of a stream, checked where the tool loop reads it: each choice's
    ``delta``, its ``content`` (a string or null) and its ``tool_calls`` pieces."""
    chunk = parse(data)
    if not isinstance(chunk, dict):
        raise bad(f"a stream event is a JSON {type(chunk).__name__}, not an object")
    choices = chunk.get("choices") or []      # a usage chunk has none
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise bad("a stream event's 'choices' is not a list of objects")
    for i, choice in enumerate(choices):
        where = f"a stream event's choices[{i}].delta"
        calls = with_text(choice.get("delta") or {}, where).get("tool_calls")
        if calls is None:
            continue
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise bad(f"{where}.tool_calls is not a list of objects")
        for call in calls:
            function = call.get("function") or {}
            if (not isinstance(function, dict) or not isinstance(call.get("index", 0), int)
                    or any(function.get(k) is not None and not isinstance(function[k], str)
                           for k in ("name", "arguments"))):
                raise bad(f"{where}.tool_calls holds a call that is not {{index, function: {{name, arguments}}}}")
    return chunk
