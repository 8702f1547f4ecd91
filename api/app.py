"""The FastAPI app: shapes in, Memory calls, shapes out. No memory logic lives here.

Handlers are plain module-level functions on ``router``; ``create_app`` wires the routers, the
life cycle and the one handler that turns an ``OptimemError`` into its HTTP status.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from optimem import __version__
from optimem.api import inspector, proxy, schemas
from optimem.api.auth import tenant
from optimem.api.deps import HttpLinks, links, memory
from optimem.errors import OptimemError
from optimem.memory import jobs, results
from optimem.memory.service import Memory

PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
ERRORS = {404: {"model": schemas.Problem}, 409: {"model": schemas.Problem}, 422: {"model": schemas.Problem}}

router = APIRouter()


def run(fn, *args, **kwargs):
    return run_in_threadpool(fn, *args, **kwargs)  # Redis and the reader block; keep the loop free


@router.get("/healthz", response_model=schemas.Health, tags=["service"])
async def healthz(m: Memory = Depends(memory)):
    return {"status": "ok", "backend": m.backend_name, "family": m.ladder.family,
            "jobs_backlog": await run(jobs.backlog, m.store.r)}


@router.post("/v1/sessions", response_model=results.Session, status_code=201, tags=["sessions"], responses=ERRORS)
async def create_session(body: Optional[schemas.SessionCreate] = None, t: str = Depends(tenant),
                         m: Memory = Depends(memory)):
    body = body or schemas.SessionCreate()
    return await run(m.create_session, body.id, curve=body.curve, keep_source=body.keep_source, tenant=t)


@router.get("/v1/sessions", response_model=schemas.SessionList, tags=["sessions"])
async def list_sessions(t: str = Depends(tenant), m: Memory = Depends(memory)):
    return {"sessions": await run(m.sessions, tenant=t)}


@router.get("/v1/sessions/{session}", response_model=results.Session, tags=["sessions"], responses=ERRORS)
async def get_session(session: str, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.session, session, tenant=t)


@router.delete("/v1/sessions/{session}", status_code=204, tags=["sessions"], responses=ERRORS)
async def delete_session(session: str, t: str = Depends(tenant), m: Memory = Depends(memory)):
    await run(m.delete_session, session, tenant=t)
    return Response(status_code=204)


@router.post("/v1/sessions/{session}/turns", response_model=results.Appended, tags=["turns"], responses=ERRORS)
async def append(session: str, body: schemas.TurnsIn, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.append, session, [turn.model_dump() for turn in body.turns], tenant=t)


@router.get("/v1/sessions/{session}/context", tags=["context"], responses=ERRORS,
            response_model=results.RawContext | results.OpenAIContext | results.EmbeddingsContext)
async def get_context(session: str,
                      format: Literal["raw", "openai", "embeddings"] = Query(
                          "raw", description="raw JSON, OpenAI messages with page images, or cached visual "
                                             "tokens for a DeepSeek-OCR-family decoder"),
                      budget: Optional[int] = Query(None, ge=0, description="Total token budget (text + visual)."),
                      images: Literal["data", "url"] = Query("data", description="Images (or visual tokens) "
                                                             "inline, or as URLs served by optimem"),
                      t: str = Depends(tenant), m: Memory = Depends(memory), to: HttpLinks = Depends(links)):
    # Raw pages always carry their image URL; images=url also links images and tokens in the other formats.
    served = to if images == "url" or format == "raw" else None
    return await run(m.context, session, budget=budget, format=format, links=served, tenant=t)


@router.get("/v1/sessions/{session}/pages/{page}/image", response_class=Response, responses={**PNG, **ERRORS},
            tags=["pages"])
async def page_image(session: str, page: int,
                     tier: Optional[str] = Query(None, description="A tier name, or 'full'; default: its tier now"),
                     t: str = Depends(tenant), m: Memory = Depends(memory)):
    return Response(await run(m.page_image, session, page, tier, tenant=t), media_type="image/png")


@router.get("/v1/sessions/{session}/mosaics/{tier}/{group}/image", response_class=Response,
            responses={**PNG, **ERRORS}, tags=["pages"])
async def mosaic_image(session: str, tier: str, group: int, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return Response(await run(m.mosaic_image, session, tier, group, tenant=t), media_type="image/png")


@router.get("/v1/sessions/{session}/tokens/{unit}", response_class=Response, tags=["pages"],
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "safetensors: one tensor 'tokens' [n_tokens, hidden]; metadata "
                                            "holds shape, dtype, tier, model revision and a sha256"}, **ERRORS})
async def visual_tokens(session: str, unit: str, tier: str = Query(description="Tier name"),
                        t: str = Depends(tenant), m: Memory = Depends(memory)):
    return Response(await run(m.token_bytes, session, unit, tier, tenant=t), media_type="application/octet-stream")


@router.post("/v1/sessions/{session}/recall", response_model=results.Recall, tags=["recall"], responses=ERRORS)
async def recall(session: str, body: schemas.RecallIn, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.recall, session, body.query, turn=body.turn, since=body.since, until=body.until,
                     role=body.role, limit=body.limit, tenant=t)


@router.put("/v1/sessions/{session}/curve", response_model=results.Session, tags=["sessions"], responses=ERRORS)
async def set_curve(session: str, body: schemas.CurveIn, t: str = Depends(tenant), m: Memory = Depends(memory)):
    return await run(m.set_curve, session, body.curve, tenant=t)


async def optimem_error(_: Request, exc: OptimemError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"detail": problems, "errors": jsonable(exc.errors())}, status_code=422)


def jsonable(errors: list[dict]) -> list[dict]:
    """pydantic's error list without the parts JSON can't carry (exception objects in ``ctx``)."""
    return [{k: list(v) if isinstance(v, tuple) else v if isinstance(v, (str, int, float, list, type(None))) else str(v)
             for k, v in e.items() if k != "ctx"} for e in errors]


def create_app(m: Memory | None = None) -> FastAPI:
    """An app over ``m`` (opened and closed with the app), or over a Memory from the environment."""
    own = m or Memory()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if own.store is None:
            own.open()
        app.state.memory = own
        yield
        own.close()

    app = FastAPI(title="optimem", version=__version__, lifespan=lifespan,
                  description="Optical memory for chatbots: old turns become page images that fade with "
                              "age; recall reads them back.")
    app.add_exception_handler(OptimemError, optimem_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    app.include_router(proxy.router)
    app.include_router(inspector.router)
    return app
