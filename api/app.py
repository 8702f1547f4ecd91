"""The FastAPI app: shapes in, Memory calls, shapes out. No memory logic lives here.

Handlers are plain module-level functions on ``router``; ``create_app`` wires the routers, the
life cycle and the one handler that turns an ``OptimemError`` into its HTTP status.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from pydantic import Field
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from optimem._version import __version__
from optimem.api import inspector, openapi, proxy, schemas
from optimem.api import metrics as observe
from optimem.api.auth import api_key, tenant
from optimem.api.deps import HttpLinks, links, memory
from optimem.api.errors import SafeJSON, http_error, invalid_request, optimem_error
from optimem.api.recall_slots import RecallsBusy, run_recall
from optimem.api import warmup
from optimem.errors import OptimemError
from optimem.memory import metrics as observed, results
from optimem.memory.concurrency import COMPUTE, Threads
from optimem.memory.service import Memory

PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
ERRORS = {404: {"model": schemas.Problem}, 409: {"model": schemas.Problem}, 422: {"model": schemas.Problem}}
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
    warming: Optional[bool] = Field(None, description="True while the backend loads and warms up at start "
                                                      "(the GPU backend compiles then); left out after.")


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, tags=["service"])
async def healthz(request: Request,
                  authorization: Optional[str] = Header(None, description="Bearer API key: with keys set, "
                                                                          "the backlog is shown only to callers "
                                                                          "with a valid key")):
    """Liveness, for anyone; the global job backlog, its age and the shed jobs only for a valid key
    when API keys are set."""
    m: Memory = request.app.state.memory   # not Depends(memory): a sync dependency is a thread hop
    health = {"status": "ok", "backend": m.backend_name, "family": m.ladder.family,
              "warming": warmup.warming(m) or None}
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


def create_app(m: Memory | None = None) -> FastAPI:
    """An app over ``m`` (opened and closed with the app), or over a Memory from the environment."""
    own = m or Memory()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if own.store is None:
            own.open()
        app.state.memory = own
        warmup.start(own)   # /healthz says "warming": true until it is done
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
    app.openapi = lambda: openapi.document(app, own)
    return app
