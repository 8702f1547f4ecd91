"""Errors as they are sent: ``OptimemError`` -> its status with ``{"detail"}``; FastAPI's own errors and
refused requests as ``{"detail", "errors"}``; on the proxy's paths, OpenAI's error shape. Every
response encodes (``SafeJSON``), whatever text it carries.
"""
from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from optimem.api import schemas
from optimem.api.openai_protocol import error_body
from optimem.errors import OptimemError

PROXY_PATHS = ("/v1/chat/completions", "/v1/models")   # errors there come in OpenAI's shape


class SafeJSON(JSONResponse):
    """JSON that always encodes: lone surrogates escaped as text, non-finite numbers as strings."""

    def render(self, content: Any) -> bytes:
        return json.dumps(safe(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def safe(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")  # '\ud83d' stays readable
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {safe(str(k)): safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float)) else safe(str(value))


class ProxyError(Exception):
    """A refusal of the proxy, sent in OpenAI's error shape with its status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: Any = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return SafeJSON(error_body(self.message, self.type, self.code), status_code=self.status, headers=headers)


def proxied(request: Request) -> bool:
    return request.url.path in PROXY_PATHS


async def optimem_error(_: Request, exc: OptimemError) -> JSONResponse:
    return SafeJSON({"detail": str(exc)}, status_code=exc.status)


async def http_error(request: Request, exc: HTTPException) -> Response:
    """FastAPI's own errors (401, 404 of an unknown path, 405): ``{"detail"}``, OpenAI's shape on the proxy."""
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:   # Starlette names the methods of the first route on the path only
        headers = {**(headers or {}), "Allow": ", ".join(allowed(request))}
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    if proxied(request):
        kind = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        return SafeJSON(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=headers)
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (not UTF-8 JSON): as malformed JSON, a 422
        return SafeJSON({"detail": f"the body is not JSON in UTF-8 ({exc.detail})"}, status_code=422, headers=headers)
    return SafeJSON({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def allowed(request: Request) -> list[str]:
    """Every method some route answers on this request's path (routers are included without a prefix)."""
    methods: set[str] = set()
    routes = list(request.app.routes)
    while routes:
        route = routes.pop()
        included = getattr(route, "original_router", None)   # FastAPI wraps each included router
        if included is not None:
            routes.extend(included.routes)
        elif route.matches({**request.scope, "method": "GET"})[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def where(loc: tuple) -> str:
    """('body', 'turns', 0, 'content') -> 'turns[0].content'; ('query', 'budget') -> 'budget'."""
    parts = list(loc[1:] if len(loc) > 1 and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


PATTERNS = {schemas.SESSION_ID: "session id must be 1-128 characters of letters, digits, '.', '_' or '-', "
                                "and not '.' or '..'",
            schemas.NOT_BLANK: "must be a non-empty string (not only whitespace or invisible characters)"}


def message(error: dict) -> str:
    if error.get("type") == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        if isinstance(pattern, str) and pattern in PATTERNS:
            return PATTERNS[pattern]
    return str(error.get("msg", ""))


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request the schema refuses: 422 ``Problem`` ({detail: one string, errors: [{loc, msg, type}]});
    on the proxy, 400 in OpenAI's error shape. Never echoes the input (it may be huge, or not encodable)."""
    errors = [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": message(e),
               "type": str(e.get("type", ""))} for e in exc.errors()]
    detail = "; ".join(f"{where(tuple(e['loc']))}: {e['msg']}" for e in errors) or "invalid request"
    if proxied(request):
        body = error_body(detail)
        body["error"]["param"] = where(tuple(errors[0]["loc"])) if errors else None
        return SafeJSON(body, status_code=400)
    return SafeJSON({"detail": detail, "errors": errors}, status_code=422)


