"""The FastAPI app: shapes in, memory service calls, shapes out. No memory logic lives here."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Literal, Optional

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from api import inspector, proxy, schemas
from api.auth import tenant
from memory import jobs
from memory.service import BadRequest, Memory
from memory.store import NotFound
from model.base import ModelUnavailable

PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
ERRORS = {404: {"model": schemas.Problem}, 422: {"model": schemas.Problem}}


def create_app(memory: Memory | None = None) -> FastAPI:
    """An app over ``memory`` (opened and closed with the app), or over a Memory from the environment."""
    own = memory or Memory()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if own.store is None:
            own.open()
        app.state.memory = own
        yield
        own.close()

    app = FastAPI(title="optimem", version="0.1.0", lifespan=lifespan,
                  description="Optical memory for chatbots: old turns become page images that fade with "
                              "age; recall reads them back.")

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ModelUnavailable)
    async def unavailable(_: Request, exc: ModelUnavailable):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": problems, "errors": jsonable(exc.errors())}, status_code=422)

    def run(fn, *args, **kwargs):
        return run_in_threadpool(fn, *args, **kwargs)  # Redis and the reader block; keep the loop free

    @app.get("/healthz", response_model=schemas.Health, tags=["service"])
    async def healthz():
        await run(own.store.r.ping)
        return {"status": "ok", "backend": own.settings.backend if own._backend is None else own._backend.name,
                "family": own.ladder.family, "jobs_backlog": await run(jobs.backlog, own.store.r)}

    @app.post("/v1/sessions", response_model=schemas.Session, status_code=201, tags=["sessions"], responses=ERRORS)
    async def create_session(body: Optional[schemas.SessionCreate] = None, t: str = Depends(tenant)):
        body = body or schemas.SessionCreate()
        return await run(own.create_session, t, body.id, body.curve, body.keep_source)

    @app.get("/v1/sessions", response_model=schemas.SessionList, tags=["sessions"])
    async def list_sessions(t: str = Depends(tenant)):
        return {"sessions": await run(own.list_sessions, t)}

    @app.get("/v1/sessions/{session}", response_model=schemas.Session, tags=["sessions"], responses=ERRORS)
    async def get_session(session: str, t: str = Depends(tenant)):
        return await run(own.session_info, t, session)

    @app.delete("/v1/sessions/{session}", status_code=204, tags=["sessions"], responses=ERRORS)
    async def delete_session(session: str, t: str = Depends(tenant)):
        await run(own.delete_session, t, session)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session}/turns", response_model=schemas.Appended, tags=["turns"], responses=ERRORS)
    async def append(session: str, body: schemas.TurnsIn, t: str = Depends(tenant)):
        return await run(own.append, t, session, [turn.model_dump() for turn in body.turns])

    @app.get("/v1/sessions/{session}/context", tags=["context"], responses=ERRORS,
             response_model=schemas.RawContext | schemas.OpenAIContext | schemas.EmbeddingsContext)
    async def get_context(request: Request, session: str,
                          format: Literal["raw", "openai", "embeddings"] = Query(
                              "raw", description="raw JSON, OpenAI messages with page images, or cached visual "
                                                 "tokens for a DeepSeek-OCR-family decoder"),
                          budget: Optional[int] = Query(None, ge=0, description="Total token budget (text + visual)."),
                          images: Literal["data", "url"] = Query("data", description="Images (or visual tokens) "
                                                                 "inline, or as URLs served by optimem"),
                          t: str = Depends(tenant)):
        return await run(own.context, t, session, budget, format, images, str(request.base_url))

    @app.get("/v1/sessions/{session}/pages/{page}/image", response_class=Response, responses={**PNG, **ERRORS},
             tags=["pages"])
    async def page_image(session: str, page: int,
                         tier: Optional[str] = Query(None, description="A tier name, or 'full'; default: its tier now"),
                         t: str = Depends(tenant)):
        return Response(await run(own.page_image, t, session, page, tier), media_type="image/png")

    @app.get("/v1/sessions/{session}/mosaics/{tier}/{group}/image", response_class=Response,
             responses={**PNG, **ERRORS}, tags=["pages"])
    async def mosaic_image(session: str, tier: str, group: int, t: str = Depends(tenant)):
        return Response(await run(own.mosaic_image, t, session, tier, group), media_type="image/png")

    @app.get("/v1/sessions/{session}/tokens/{unit}", response_class=Response, tags=["pages"],
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "safetensors: one tensor 'tokens' [n_tokens, hidden]; metadata "
                                             "holds shape, dtype, tier, model revision and a sha256"}, **ERRORS})
    async def visual_tokens(session: str, unit: str, tier: str = Query(description="Tier name"),
                            t: str = Depends(tenant)):
        return Response(await run(own.token_bytes, t, session, unit, tier), media_type="application/octet-stream")

    @app.post("/v1/sessions/{session}/recall", response_model=schemas.RecallOut, tags=["recall"], responses=ERRORS)
    async def recall(session: str, body: schemas.RecallIn, t: str = Depends(tenant)):
        return await run(own.recall, t, session, body.query, body.turn, body.since, body.until, body.role, body.limit)

    @app.put("/v1/sessions/{session}/curve", response_model=schemas.Session, tags=["sessions"], responses=ERRORS)
    async def set_curve(session: str, body: schemas.CurveIn, t: str = Depends(tenant)):
        return await run(own.set_curve, t, session, body.curve)

    app.include_router(proxy.router)
    app.include_router(inspector.router)
    return app


def jsonable(errors: list[dict]) -> list[dict]:
    """pydantic's error list without the parts JSON can't carry (exception objects in ``ctx``)."""
    return [{k: list(v) if isinstance(v, tuple) else v if isinstance(v, (str, int, float, list, type(None))) else str(v)
             for k, v in e.items() if k != "ctx"} for e in errors]
