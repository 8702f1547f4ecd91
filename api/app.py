"""The FastAPI app: shapes in, Memory calls, shapes out. No memory logic lives here.

Handlers are plain module-level functions on ``router``; ``create_app`` wires the routers, the
life cycle and the one handler that turns an ``OptimemError`` into its HTTP status.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Literal, Optional

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from optimem._version import __version__
from optimem.api import inspector, mcp_http, openapi, proxy, schemas, upstream, user_data
from optimem.api import metrics as observe
from optimem.api.admission import Admission
from optimem.api.auth import tenant, tenant_of
from optimem.api.deps import HttpLinks, links, memory
from optimem.api.errors import SafeJSON, http_error, invalid_request, optimem_error
from optimem.api.recall_slots import RecallsBusy, quotas, run_recall
from optimem.api import warmup
from optimem.errors import OptimemError
from optimem.memory import metrics as observed, results
from optimem.memory.concurrency import COMPUTE, Threads
from optimem.memory.service import Memory

PNG: schemas.Responses = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
ERRORS: schemas.Responses = {404: {"model": schemas.Problem}, 409: {"model": schemas.Problem},
                     422: {"model": schemas.Problem}}
SessionId = Annotated[str, Path(pattern=schemas.SESSION_ID, max_length=128,
                                description="Session id: 1-128 letters, digits, '.', '_' or '-'.")]

router = APIRouter()
log = logging.getLogger("optimem.api")
STORE_PING_S = 2.0   # /healthz waits this long for Redis to answer a PING before saying the store is down


def run(fn, *args, **kwargs):
    return run_in_threadpool(fn, *args, **kwargs)  # Redis and the reader block; keep the loop free


class Health(schemas.Health):
    store: Optional[str] = Field(None, description="Why the store is unavailable (with status 503 only).")
    jobs_oldest_s: Optional[float] = Field(None, description="Age in seconds of the oldest job waiting or in "
                                                             "progress (0: none). Shown like jobs_backlog.")
    jobs_shed: Optional[int] = Field(None, description="Read-ahead jobs dropped, oldest first, because the job "
                                                       "stream was full (OPTIMEM_JOBS_MAX), since the store was "
                                                       "created. Shown like jobs_backlog.")
    warming: Optional[bool] = Field(None, description="True while the backend loads and warms up at start "
                                                      "(the GPU backend compiles then); left out after.")


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["service"],
            responses={503: {"model": Health, "description": "The store (Redis) does not answer: status "
                                                             "'store unavailable'"}})
async def healthz(request: Request,
                  authorization: Optional[str] = Header(None, description="Bearer API key: with keys set, "
                                                                          "the backlog is shown only to callers "
                                                                          "with a valid key")):
    """Liveness and the store, for anyone (503 when Redis does not answer a PING within 2 s); the global
    job backlog, its age and the shed jobs only for a valid key when API keys are set."""
    m: Memory = request.app.state.memory   # not Depends(memory): a sync dependency is a thread hop
    health = {"status": "ok", "backend": m.backend_name, "family": m.ladder.family,
              "warming": warmup.warming(m) or None}
    down = await store_down(m)
    if down:
        return SafeJSON({**health, "status": "store unavailable", "store": down}, status_code=503)
    if tenant_of(m.settings.tenants(), authorization) is not None:
        health["jobs_backlog"], health["jobs_oldest_s"], health["jobs_shed"] = await run(m.store.jobs_state)
    return health


async def store_down(m: Memory) -> str | None:
    """Why Redis does not answer a PING within STORE_PING_S (None: it does). A hung Redis leaves its
    thread waiting, not the request."""
    started = time.monotonic()
    try:
        with anyio.fail_after(STORE_PING_S):
            await anyio.to_thread.run_sync(m.store.r.ping, abandon_on_cancel=True)
    except TimeoutError:
        return f"Redis did not answer a PING within {STORE_PING_S:g} s"
    except Exception as exc:   # redis-py's ConnectionError, or any other way a PING fails
        return f"Redis did not answer a PING ({type(exc).__name__}: {exc}) after {time.monotonic() - started:.1f} s"
    return None


@router.get("/metrics", response_class=Response, tags=["service"],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
async def prometheus_metrics(_: str = Depends(tenant), m: Memory = Depends(memory)):
    """Prometheus metrics of this process (requests per route, appends, seals, recalls, page reads,
    cache lookups) and the job stream (backlog, oldest age, shed). With API keys set, any valid key
    may read them (they are global, not per tenant)."""
    store = m.store
    state = await run(store.jobs_state)
    return Response(observe.scrape(state, store.jobs_max), media_type=observe.CONTENT_TYPE)


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


@router.post("/v1/sessions/{session}/turns", response_model=results.Appended, tags=["turns"],
             responses={**ERRORS, 429: user_data.TOO_MANY})
async def append(session: SessionId, body: schemas.TurnsIn, request: Request, t: str = Depends(tenant),
                 m: Memory = Depends(memory)):
    wait_s = await run(quotas(request).take_append, t)
    if wait_s is not None:   # the tenant's fair share (OPTIMEM_TENANT_APPENDS_PER_S, across processes)
        return user_data.too_many("tenant_appends", f"your tenant sent {m.settings.tenant_appends_per_s} appends "
                                  "this second (OPTIMEM_TENANT_APPENDS_PER_S)", wait_s)
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
async def token_file(session: SessionId, unit: str, tier: str = Query(description="Tier name"),
                        t: str = Depends(tenant), m: Memory = Depends(memory)):
    return Response(await run(m.token_bytes, session, unit, tier, tenant=t), media_type="application/octet-stream")


@router.post("/v1/sessions/{session}/recall", response_model=results.Recall, tags=["recall"],
             responses={**ERRORS, 429: user_data.TOO_MANY,
                        503: {"model": schemas.Problem, "description": "Every recall slot is taken "
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
        return SafeJSON({"detail": str(busy)}, status_code=busy.status, headers={"Retry-After": str(busy.retry_s)})
    observed.RECALLS.inc()
    observed.RECALL_SECONDS.observe(got.seconds)
    observed.RECALL_PAGES.labels("read").inc(got.pages_read)
    observed.RECALL_PAGES.labels("unread").inc(got.pages_unread)
    return got


@router.put("/v1/sessions/{session}/curve", response_model=results.Session, tags=["sessions"], responses=ERRORS)
async def set_curve(session: SessionId, body: schemas.CurveIn, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.set_curve, session, body.curve, tenant=t)


def create_app(m: Memory | None = None) -> FastAPI:
    """An app over ``m`` (opened and closed with the app), or over a Memory from the environment.
    ValueError (naming the variable) when a setting the app needs is malformed: OPTIMEM_API_KEYS."""
    own = m or Memory()
    own.settings.tenants()   # parsed and checked now, not at the first request

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not own.is_open:
            own.open()
        app.state.memory = own
        warmup.start(own)   # /healthz says "warming": true until it is done
        slots = max(1, own.settings.recall_concurrency)
        COMPUTE.resize(own.settings.recall_compute)
        app.state.recall_slots = asyncio.Semaphore(slots)
        app.state.recall_threads = Threads(slots, name="optimem-recall")   # one per slot: see run_recall
        app.state.upstream = upstream.open_client(own.settings)          # one pooled client to the model
        try:
            yield
        finally:
            await app.state.upstream.aclose()
            app.state.recall_threads.stop()
            own.close(timeout_s=1.0)  # the worker's job in hand is only read-ahead: cut it short, redone later

    app = FastAPI(title="optimem", version=__version__, lifespan=lifespan,
                  description="Optical memory for chatbots: old turns become page images that fade with "
                              "age; recall reads them back.")
    # Starlette annotates a handler as taking any Exception, though it calls each only with the
    # class it was registered for: a handler typed for its own class is refused (starlette#2417).
    app.add_exception_handler(OptimemError, optimem_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_middleware(Admission, settings=lambda: own.settings)        # key and body size, before any parsing
    app.add_middleware(observe.Observe, tenants=lambda: own.settings.tenants())
    app.include_router(router)
    app.include_router(user_data.router)
    app.include_router(proxy.router)
    app.include_router(inspector.router)
    app.include_router(mcp_http.router())   # MCP at /mcp, with its session manager's life cycle
    app.openapi = lambda: openapi.document(app, own)  # type: ignore[method-assign]  # FastAPI's documented way
    return app
