"""What a request must pass before any route reads it: a valid key, then a bounded body.

A plain ASGI middleware, outside FastAPI's body parsing: a request that carries a body (POST, PUT,
PATCH) is refused 401 before a byte of it is read when keys are set and it has no valid key (so a
caller without a key learns nothing from how its JSON is parsed, and costs nothing), and 413 as soon
as its body passes ``Settings.body_limit()``: by Content-Length when it says so, else while the
chunks arrive. The body read is handed on to the app as one message.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from optimem.api.auth import ASK_FOR_KEY, NO_KEY, tenant_of
from optimem.api.errors import PROXY_PATHS, SafeJSON
from optimem.api.openai_protocol import error_body
from optimem.settings import Settings

WITH_BODY = ("POST", "PUT", "PATCH")
# An import's body is a whole session: the route streams it to a spool file, checking each line and
# bounding each line's size itself (memory/transfer.py), so it is neither buffered nor capped here.
STREAMED = re.compile(r"^/v1/sessions/[^/]+/import$")


class Admission:
    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            return await self.app(scope, receive, send)
        settings = self.settings()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if tenant_of(settings.tenants(), headers.get("authorization")) is None:
            return await refuse(scope, receive, send, 401, NO_KEY, ASK_FOR_KEY)
        if scope["method"] == "POST" and STREAMED.match(scope.get("path", "")):
            return await self.app(scope, receive, send)
        limit = settings.body_limit()
        too_big = (f"the request body is over {limit} bytes (OPTIMEM_MAX_BODY_BYTES; at most 1000 turns of "
                   f"OPTIMEM_MAX_TURN_CHARS per append): send fewer turns per request")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await refuse(scope, receive, send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return   # the caller went away: no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await refuse(scope, receive, send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False
        del chunks

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()   # after the body: the disconnect a streaming response listens for

        await self.app(scope, replay, send)


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
    """The refusal in the shape of the path: OpenAI's error on the proxy, ``{"detail"}`` elsewhere."""
    if scope.get("path") in PROXY_PATHS:
        kind = "authentication_error" if status == 401 else "invalid_request_error"
        content = error_body(message, kind)
    else:
        content = {"detail": message}
    headers = {**(headers or {}), "Connection": "close"} if status == 413 else headers
    await SafeJSON(content, status_code=status, headers=headers)(scope, receive, send)
