"""The FastAPI app: shapes in, Memory calls, shapes out. No memory logic lives here.

Handlers are plain module-level functions on ``router``; ``create_app`` wires the routers, the
life cycle and the one handler that turns an ``OptimemError`` into its HTTP status.
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import math
import threading
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from pydantic import Field
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from optimem import __version__
from optimem.api import inspector, proxy, schemas
from optimem.api import metrics as observe
from optimem.api.auth import api_key, tenant
from optimem.api.openai_protocol import error_body
from optimem.api.deps import HttpLinks, links, memory
from optimem.errors import OptimemError
from optimem.memory import metrics as observed, results
from optimem.memory.reading import COMPUTE, Threads
from optimem.memory.service import Memory

PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
ERRORS = {404: {"model": schemas.Problem}, 409: {"model": schemas.Problem}, 422: {"model": schemas.Problem}}
PROXY_PATHS = ("/v1/chat/completions", "/v1/models")   # errors there come in OpenAI's shape
SessionId = Annotated[str, Path(pattern=schemas.SESSION_ID, max_length=128,
                                description="Session id: 1-128 letters, digits, '.', '_' or '-'.")]

router = APIRouter()
log = logging.getLogger("optimem.api")


def run(fn, *args, **kwargs):
    return run_in_threadpool(fn, *args, **kwargs)  # Redis and the reader block; keep the loop free


class Health(schemas.Health):
    jobs_oldest_s: Optional[float] = Field(None, description="Age in seconds of the oldest job waiting or in "
                                                             "progress (0: none). Shown like jobs_backlog.")
    jobs_shed: Optional[int] = Field(None, description="Read-ahead jobs dropped, oldest first, because the job "
                                                       "stream was full (OPTIMEM_JOBS_MAX), since the store was "
                                                       "created. Shown like jobs_backlog.")


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["service"])
async def healthz(request: Request,
                  authorization: Optional[str] = Header(None, description="Bearer API key: with keys set, "
                                                                          "the backlog is shown only to callers "
                                                                          "with a valid key")):
    """Liveness, for anyone; the global job backlog, its age and the shed jobs only for a valid key
    when API keys are set."""
    m: Memory = request.app.state.memory   # not Depends(memory): a sync dependency is a thread hop
    health = {"status": "ok", "backend": m.backend_name, "family": m.ladder.family}
    keys = m.settings.tenants()
    if not keys or api_key(authorization) in keys:
        health["jobs_backlog"], health["jobs_oldest_s"], health["jobs_shed"] = await run(m.store.jobs_state)
    return health


@router.get("/metrics", response_class=Response, tags=["service"],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
async def prometheus_metrics(_: str = Depends(tenant), m: Memory = Depends(memory)):
    """Prometheus metrics of this process (requests per route, appends, seals, recalls, page reads,
    cache lookups) and the job stream (backlog, oldest age, shed). With API keys set, any valid key
    may read them (they are global, not per tenant)."""
    state = await run(m.store.jobs_state)
    cap = getattr(m.store, "jobs_max", m.settings.jobs_max)
    return Response(observe.scrape(state, cap), media_type=observe.CONTENT_TYPE)


@router.post("/v1/sessions", response_model=results.Session, status_code=201, tags=["sessions"], responses=ERRORS)
async def create_session(body: Optional[schemas.SessionCreate] = None, t: str = Depends(tenant),
                         m: Memory = Depends(memory)):
    body = body or schemas.SessionCreate()
    return await run(m.create_session, body.id, curve=body.curve, keep_source=body.keep_source, tenant=t)


@router.get("/v1/sessions", response_model=schemas.SessionList, tags=["sessions"])
async def list_sessions(t: str = Depends(tenant), m: Memory = Depends(memory)):
    return {"sessions": await run(m.sessions, tenant=t)}


@router.get("/v1/sessions/{session}", response_model=results.Session, tags=["sessions"], responses=ERRORS)
async def get_session(session: SessionId, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.session, session, tenant=t)


@router.delete("/v1/sessions/{session}", status_code=204, tags=["sessions"], responses=ERRORS)
async def delete_session(session: SessionId, t: str = Depends(tenant), m: Memory = Depends(memory)):
    await run(m.delete_session, session, tenant=t)
    return Response(status_code=204)


@router.post("/v1/sessions/{session}/turns", response_model=results.Appended, tags=["turns"], responses=ERRORS)
async def append(session: SessionId, body: schemas.TurnsIn, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.append, session, [turn.model_dump() for turn in body.turns], tenant=t)


@router.get("/v1/sessions/{session}/context", tags=["context"], responses=ERRORS,
            response_model=results.RawContext | results.OpenAIContext | results.EmbeddingsContext)
async def get_context(session: SessionId,
                      format: Literal["raw", "openai", "embeddings"] = Query(
                          "raw", description="raw JSON, OpenAI messages with page images, or cached visual "
                                             "tokens for a DeepSeek-OCR-family decoder"),
                      budget: Optional[int] = Query(None, ge=0, description="Total token budget (text + visual). "
                                                    "Pages that don't fit at their curve tier fade further (oldest "
                                                    "first); the oldest are dropped only when even the faintest "
                                                    "tier doesn't fit."),
                      min_memory_tokens: int = Query(0, ge=0, description="Tokens of the budget kept for memory "
                                                     "pages even when recent text would fill it (at most what the "
                                                     "pages need; 0: recent text first)."),
                      images: Literal["data", "url"] = Query("data", description="Images (or visual tokens) "
                                                             "inline, or as URLs served by optimem"),
                      t: str = Depends(tenant), m: Memory = Depends(memory), to: HttpLinks = Depends(links)):
    # Raw pages always carry their image URL; images=url also links images and tokens in the other formats.
    served = to if images == "url" or format == "raw" else None
    return await run(m.context, session, budget=budget, format=format, links=served,
                     min_memory_tokens=min_memory_tokens, tenant=t)


@router.get("/v1/sessions/{session}/pages/{page}/image", response_class=Response, responses={**PNG, **ERRORS},
            tags=["pages"])
async def page_image(session: SessionId, page: int,
                     tier: Optional[str] = Query(None, description="A tier name, or 'full'; default: its tier now"),
                     t: str = Depends(tenant), m: Memory = Depends(memory)):
    return Response(await run(m.page_image, session, page, tier, tenant=t), media_type="image/png")


@router.get("/v1/sessions/{session}/mosaics/{tier}/{group}/image", response_class=Response,
            responses={**PNG, **ERRORS}, tags=["pages"])
async def mosaic_image(session: SessionId, tier: str, group: int, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return Response(await run(m.mosaic_image, session, tier, group, tenant=t), media_type="image/png")


@router.get("/v1/sessions/{session}/tokens/{unit}", response_class=Response, tags=["pages"],
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "safetensors: one tensor 'tokens' [n_tokens, hidden]; metadata "
                                            "holds shape, dtype, tier, model revision and a sha256"}, **ERRORS})
async def visual_tokens(session: SessionId, unit: str, tier: str = Query(description="Tier name"),
                        t: str = Depends(tenant), m: Memory = Depends(memory)):
    return Response(await run(m.token_bytes, session, unit, tier, tenant=t), media_type="application/octet-stream")


SLOT_WAIT_S = 1.0   # a recall waits this long for a free recall slot, then is refused (503)


class RecallsBusy(Exception):
    """Every recall slot stayed taken for ``SLOT_WAIT_S``: answered 503 with Retry-After."""

    def __init__(self, m: Memory):
        self.retry_s = max(1, min(60, int(m.settings.recall_read_s) or 1))
        super().__init__(f"too many recalls at once (OPTIMEM_RECALL_CONCURRENCY = {m.settings.recall_concurrency}); "
                         f"retry in {self.retry_s} s")


def _settle(future: asyncio.Future, result, exc: BaseException | None, slots: asyncio.Semaphore) -> None:
    slots.release()
    if not future.done():   # the request may have been cancelled meanwhile
        future.set_exception(exc) if exc is not None else future.set_result(result)


async def run_recall(request: Request, fn, *args, **kwargs):
    """``fn`` (a recall) in one of the process's recall slots, on one of its recall threads, awaited
    without blocking; ``RecallsBusy`` when no slot frees within ``SLOT_WAIT_S``.

    Never on FastAPI's threadpool: a recall waiting up to ``OPTIMEM_RECALL_READ_S`` for reads holds
    none of its ~40 threads. The threads are started with the app, one per slot, not per recall:
    ``Thread.start`` blocks until the new thread runs, and in a burst of 45 recalls that held the
    event loop 351 ms (127 ms once). On its thread a recall computes in a turn (``COMPUTE``: a few at
    a time, handed on while it waits for reads). A slot is freed when the recall ends, not when its
    request does, so a thread is free for every slot."""
    state, m = request.app.state, request.app.state.memory
    try:
        await asyncio.wait_for(state.recall_slots.acquire(), SLOT_WAIT_S)
    except asyncio.TimeoutError:
        observed.RECALLS_REFUSED.inc()
        raise RecallsBusy(m) from None
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    ctx = contextvars.copy_context()   # the request's log context follows it

    def job():
        try:
            with COMPUTE.held():
                outcome = ctx.run(fn, *args, **kwargs), None
        except BaseException as exc:  # handed to the request, raised there
            outcome = None, exc
        try:
            loop.call_soon_threadsafe(_settle, done, *outcome, state.recall_slots)
        except RuntimeError:   # the loop is closed (the server stopped): no one is waiting
            pass

    state.recall_threads.submit(job)
    return await done


@router.post("/v1/sessions/{session}/recall", response_model=results.Recall, tags=["recall"],
             responses={**ERRORS, 503: {"model": schemas.Problem, "description": "Every recall slot is taken "
                                        "(OPTIMEM_RECALL_CONCURRENCY): retry after the Retry-After seconds"}})
async def recall(session: SessionId, body: schemas.RecallIn, request: Request, t: str = Depends(tenant),
                 m: Memory = Depends(memory)):
    """Recalls run on their own threads, at most ``OPTIMEM_RECALL_CONCURRENCY`` at once per process
    (past that, after a short wait, 503 with Retry-After): a recall waiting for its pages to be read
    (up to ``OPTIMEM_RECALL_READ_S``) never holds a request thread, so /healthz and appends stay fast."""
    try:
        got = await run_recall(request, m.recall, session, body.query, turn=body.turn, since=body.since,
                               until=body.until, role=body.role, limit=body.limit, tenant=t)
    except RecallsBusy as busy:
        return SafeJSON({"detail": str(busy)}, status_code=503, headers={"Retry-After": str(busy.retry_s)})
    observed.RECALLS.inc()
    observed.RECALL_SECONDS.observe(got.seconds)
    observed.RECALL_PAGES.labels("read").inc(got.pages_read)
    observed.RECALL_PAGES.labels("unread").inc(got.pages_unread)
    return got


@router.put("/v1/sessions/{session}/curve", response_model=results.Session, tags=["sessions"], responses=ERRORS)
async def set_curve(session: SessionId, body: schemas.CurveIn, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.set_curve, session, body.curve, tenant=t)


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


def proxied(request: Request) -> bool:
    return request.url.path in PROXY_PATHS


async def optimem_error(_: Request, exc: OptimemError) -> JSONResponse:
    return SafeJSON({"detail": str(exc)}, status_code=exc.status)


async def http_error(request: Request, exc: HTTPException) -> Response:
    """FastAPI's own errors (401, 404 of an unknown path, 405): ``{"detail"}``, OpenAI's shape on the proxy."""
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    if proxied(request):
        kind = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        return SafeJSON(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=headers)
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (not UTF-8 JSON): as malformed JSON, a 422
        return SafeJSON({"detail": f"the body is not JSON in UTF-8 ({exc.detail})"}, status_code=422, headers=headers)
    return SafeJSON({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def where(loc: tuple) -> str:
    """('body', 'turns', 0, 'content') -> 'turns[0].content'; ('query', 'budget') -> 'budget'."""
    parts = list(loc[1:] if len(loc) > 1 and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


PATTERNS = {schemas.SESSION_ID: "session id must be 1-128 characters of letters, digits, '.', '_' or '-'",
            schemas.NOT_BLANK: "must be a non-empty string (not only whitespace)"}


def message(error: dict) -> str:
    if error.get("type") == "string_pattern_mismatch":
        return PATTERNS.get((error.get("ctx") or {}).get("pattern"), str(error.get("msg", "")))
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


def document_errors(app: FastAPI, memory_: Memory) -> dict:
    """The OpenAPI document, with the errors as they are sent: every 422 (and 401) is a ``Problem``, the
    proxy's refusals are OpenAI errors (400, never 422), and tier parameters list this ladder's tiers."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = FastAPI.openapi(app)
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    openai_error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    tiers = memory_.ladder.names()
    mosaics = [t.name for t in memory_.ladder.tiers if t.per_canvas > 1]
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            params = op.get("parameters", [])
            if path in PROXY_PATHS:
                responses.pop("422", None)
                responses.setdefault("400", {"description": "Bad request", "content": openai_error})
                responses["401"] = {"description": "Missing or unknown API key", "content": openai_error}
                continue
            html = path.startswith("/inspect")
            if "422" in responses or params or "requestBody" in op:
                responses["422"] = {"description": "The request is not valid: the detail says what to fix",
                                    "content": dict(problem)}
                if html and path != "/inspect/{session}/curve.png" and "{session}" in path:
                    responses["422"]["content"]["text/html"] = {"schema": {"type": "string"}}
            if html and "{session}" in path and path.endswith("}"):
                responses.setdefault("404", {"description": "No such session",
                                             "content": {"text/html": {"schema": {"type": "string"}}}})
            elif "{session}" in path:
                responses.setdefault("404", {"description": "Not found", "content": problem})
            if any(p.get("name") == "authorization" for p in params) and path != "/healthz":
                responses["401"] = {"description": "Missing or unknown API key (when API keys are set)",
                                    "content": problem}
            for p in params:
                if p.get("name") == "tier" and p.get("in") in ("query", "path"):
                    names = mosaics if "/mosaics/" in path else tiers + (["full"] if "/pages/" in path else [])
                    p["schema"] = {"type": "string", "enum": names}
                    if "/pages/" in path:
                        p["required"] = False
    for name in ("HTTPValidationError", "ValidationError"):
        doc.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = doc
    return doc


_frozen = threading.Event()


def load_reader(m: Memory) -> None:
    """Load the model backend (and warm it) now, beside the starting server, not in the first
    recall: loading imports C extensions that hold the GIL up to ~130 ms at a stretch, and during a
    first burst of recalls that stopped every request ~350 ms (issue 10). A backend that cannot
    load says so again, as a 503, when a recall needs it.

    Then, once per process, what is loaded is moved out of the GC's full collections (``gc.freeze``,
    after a collection so no garbage is kept): they walked all of it (~180k objects, ~100 ms here)
    with every thread stopped, and a burst of recalls set one off."""
    try:
        warm = getattr(m.backend, "warm", None)
        if warm is not None:
            warm()
    except Exception as exc:  # noqa: BLE001  logged; recall reports it to its caller
        log.warning("the %s backend did not load at start: %s", m.settings.backend, exc)
    if not _frozen.is_set():
        _frozen.set()
        gc.collect()
        gc.freeze()


def create_app(m: Memory | None = None) -> FastAPI:
    """An app over ``m`` (opened and closed with the app), or over a Memory from the environment."""
    own = m or Memory()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if own.store is None:
            own.open()
        app.state.memory = own
        threading.Thread(target=load_reader, args=(own,), name="optimem-load-reader", daemon=True).start()
        slots = max(1, own.settings.recall_concurrency)
        COMPUTE.resize(own.settings.recall_compute)
        app.state.recall_slots = asyncio.Semaphore(slots)
        app.state.recall_threads = Threads(slots, name="optimem-recall")   # one per slot: see run_recall
        yield
        app.state.recall_threads.stop()
        own.close(timeout_s=1.0)  # the worker's job in hand is only read-ahead: cut it short, redone later

    app = FastAPI(title="optimem", version=__version__, lifespan=lifespan,
                  description="Optical memory for chatbots: old turns become page images that fade with "
                              "age; recall reads them back.")
    app.add_exception_handler(OptimemError, optimem_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(observe.Observe, tenants=lambda: own.settings.tenants())
    app.include_router(router)
    app.include_router(proxy.router)
    app.include_router(inspector.router)
    app.openapi = lambda: document_errors(app, own)
    return app
