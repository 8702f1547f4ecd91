"""What the API tells operators: ``GET /metrics`` (Prometheus text), request ids and structured logs.

Metric definitions live in ``optimem.memory.metrics``; this module counts requests (per route
template, never per raw path) and renders the scrape. ``Observe`` is a plain ASGI middleware: it
takes the caller's ``X-Request-Id`` (or makes one), returns it on the response, and puts it, the
tenant and the session in context variables that every log line of the request carries (worker
threads of the request inherit them). ``OPTIMEM_LOG_FORMAT=json`` makes those lines JSON.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.registry import CollectorRegistry

from optimem.api.auth import tenant_of
from optimem.memory import metrics
from optimem.memory.service import SESSION_CHARS

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("optimem_request_id", default="-")
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("optimem_tenant", default="-")
SESSION: contextvars.ContextVar[str] = contextvars.ContextVar("optimem_session", default="-")
GOOD_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")   # a caller's id is kept only if it is this tame
SESSION_IN_PATH = re.compile(rf"^/(?:v1/sessions|inspect)/({SESSION_CHARS})(?:/|$)")
access = logging.getLogger("optimem.access")


class Observe:
    """ASGI middleware: request id, log context, one access line and the request metrics."""

    def __init__(self, app, tenants):
        self.app, self.tenants = app, tenants   # tenants(): the key -> tenant map (settings)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if GOOD_ID.match(given) else uuid.uuid4().hex
        tenant = tenant_of(self.tenants(), headers.get("authorization")) or "-"
        found = SESSION_IN_PATH.match(scope.get("path", ""))
        tokens = (REQUEST_ID.set(rid), TENANT.set(tenant), SESSION.set(found.group(1) if found else "-"))
        status = [500]
        started = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "-")
            metrics.REQUESTS.labels(method, route, str(status[0])).inc()
            metrics.REQUEST_SECONDS.labels(method, route).observe(seconds)
            access.info("%s %s %s %.1f ms", method, route, status[0], seconds * 1000,
                        extra={"method": method, "route": route, "status": status[0],
                               "ms": round(seconds * 1000, 1)})
            for var, token in zip((REQUEST_ID, TENANT, SESSION), tokens):
                var.reset(token)


def scrape(jobs_state: tuple[int, float, int], cap: int) -> bytes:
    """The Prometheus text: this process's counters plus the job stream's state from Redis."""
    scraped = CollectorRegistry(auto_describe=False)

    class Jobs:
        def collect(self):
            return metrics.job_families(*jobs_state, cap)

    scraped.register(Jobs())
    return generate_latest(REGISTRY) + generate_latest(scraped)


CONTENT_TYPE = CONTENT_TYPE_LATEST


# -- logs ------------------------------------------------------------------------------------------
class Context(logging.Filter):
    """Every record gets request_id, tenant and session (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.tenant = TENANT.get()
        record.session = SESSION.get()
        return True


class JsonLines(logging.Formatter):
    EXTRA = ("method", "route", "status", "ms")

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage(),
               "request_id": getattr(record, "request_id", "-"), "tenant": getattr(record, "tenant", "-"),
               "session": getattr(record, "session", "-")}
        out.update({k: getattr(record, k) for k in self.EXTRA if hasattr(record, k)})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(tenant)s/%(session)s] %(message)s"


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """Root logging for the CLI: one stderr handler, text or JSON lines, with the request context.
    Access lines (logger ``optimem.access``) are at INFO: set OPTIMEM_LOG=INFO to see them."""
    handler = logging.StreamHandler()
    handler.addFilter(Context())
    handler.setFormatter(JsonLines() if fmt.lower() == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error"):   # uvicorn's own lines go through the same handler
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
