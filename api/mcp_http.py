"""MCP over streamable HTTP at ``/mcp`` on ``optimem serve``, behind the API's keys and tenants.

The caller's key (``Authorization: Bearer <key>``) is checked here by the JSON API's own check
(``auth.tenant``), before the SDK sees the request: with keys set, no valid key gets 401 and nothing else. The tenant it maps to
rides in the request's ASGI scope; each tool call reads it from there, so a key reaches only its
tenant's sessions. Stateless and JSON-answered: any request may land on any ``serve --workers``
process (no MCP session lives in one), and recalls run in the process's recall slots as the JSON
API's do.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from optimem.api.auth import scope_of, tenant
from optimem.api.mcp_server import Caller, server
from optimem.api.recall_slots import RecallsBusy, run_recall
from optimem.api.verbs import Embedded
from optimem.errors import ModelUnavailable

PATH = "/mcp"
TENANT = "optimem.tenant"   # the ASGI scope key the checked tenant travels in
SCOPE = "optimem.scope"     # and the key's scope (read, write, admin)


def _caller(ctx: Context) -> Caller:
    request: Request | None = ctx.request_context.request
    if request is None or TENANT not in request.scope:   # only requests that passed the key check get here
        raise PermissionError("an MCP request reached optimem without a checked API key")

    async def recall_in_slot(call):
        try:
            return await run_recall(request, call)
        except RecallsBusy as busy:
            raise ModelUnavailable(str(busy)) from None

    return Caller(Embedded(request.app.state.memory, request.scope[TENANT]), recall_in_slot,
                  scope=request.scope.get(SCOPE, "admin"))


class Endpoint:
    """The ASGI app at ``/mcp``: the key check, then the SDK's session manager, which runs while the
    app does (``running``; a manager runs once, so each start of the app gets a new one)."""

    def __init__(self) -> None:
        self.manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self):
        mcp = server(_caller)
        # Built for its session manager only (the route is ours). No DNS-rebinding host check: the
        # API's keys guard /mcp as they guard every other route, on whatever host the service is reached.
        mcp.streamable_http_app(json_response=True, stateless_http=True,
                                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        async with mcp.session_manager.run():
            self.manager = mcp.session_manager
            try:
                yield
            finally:
                self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:    # the JSON API's own check: 'default' without keys, else the key's tenant or 401
            who = tenant(Request(scope), Headers(scope=scope).get("authorization"))
        except HTTPException as refused:
            return await JSONResponse({"detail": refused.detail}, status_code=refused.status_code,
                                      headers=refused.headers)(scope, receive, send)
        if self.manager is None:
            return await JSONResponse({"detail": "MCP is not running: the service is starting or stopping"},
                                      status_code=503)(scope, receive, send)
        settings = scope["app"].state.memory.settings
        have = scope_of(settings.scopes(), Headers(scope=scope).get("authorization"))
        await self.manager.handle_request({**scope, TENANT: who, SCOPE: have}, receive, send)


def router() -> APIRouter:
    """``/mcp`` with its life cycle (the session manager runs while the app does): include it in the app."""
    endpoint = Endpoint()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with endpoint.running():
            yield

    routes = APIRouter(lifespan=lifespan)
    routes.routes.append(Route(PATH, endpoint, include_in_schema=False))
    return routes
