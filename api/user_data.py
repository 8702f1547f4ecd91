"""Routes for what users do with their own data: take a session out (export), bring one in
(import), delete everything of their tenant. Shapes and translation only: the work is in
``memory.transfer`` and ``memory.erasure``.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from optimem.api import schemas
from optimem.api.auth import tenant
from optimem.api.deps import memory
from optimem.api.errors import SafeJSON
from optimem.errors import BadRequest, NotFound, SessionExists
from optimem.memory import erasure, metrics as observed, results, transfer
from optimem.memory.service import Memory

NDJSON = "application/x-ndjson"
SessionId = Annotated[str, Path(pattern=schemas.SESSION_ID, max_length=128,
                                description="Session id: 1-128 letters, digits, '.', '_' or '-'.")]
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": schemas.Problem}, 409: {"model": schemas.Problem},
                                           422: {"model": schemas.Problem}}
TOO_MANY: dict[str, Any] = {"model": schemas.Problem, "description": "Past the tenant's fair share (OPTIMEM_TENANT_RECALLS, "
                                                     "OPTIMEM_TENANT_APPENDS_PER_S): retry after Retry-After s"}

router = APIRouter()


def too_many(reason: str, detail: str, wait_s: float) -> SafeJSON:
    """429 with Retry-After (whole seconds, at least 1), counted by reason for /metrics."""
    observed.REFUSED.labels(reason).inc()
    return SafeJSON({"detail": detail}, status_code=429, headers={"Retry-After": str(max(1, round(wait_s + 0.49)))})


class Deleted(BaseModel):
    tenant: str
    deleted: int


@router.delete("/v1/sessions", response_model=Deleted, tags=["sessions"], responses={422: {"model": schemas.Problem}})
async def delete_all_sessions(all: bool = Query(False, description="Must be true: deletes every session of "
                                                                   "your tenant."),
                              confirm: str = Query("", max_length=256, description="Your tenant's name, "
                                                   "as a check that you mean it."),
                              t: str = Depends(tenant), m: Memory = Depends(memory)):
    """Delete every session of the caller's tenant (the API key's), and nothing of another tenant's."""
    if not all or confirm != t:
        raise BadRequest(f"to delete every session of your tenant, send all=true&confirm={t}")
    return {"tenant": t, "deleted": await run_in_threadpool(erasure.delete_tenant, m, t)}


@router.delete("/v1/sessions/{session}/turns/{turn}", response_model=results.Forgotten, tags=["turns"],
               responses=ERRORS)
async def forget_turn(session: SessionId, turn: int, t: str = Depends(tenant), m: Memory = Depends(memory)):
    """Forget one turn for real: its text leaves the source, the text index, the page's pixels and
    every cache of that page; the turn keeps its number, role and time (an empty, marked turn)."""
    return await run_in_threadpool(m.forget, session, turn, tenant=t)


@router.delete("/v1/sessions/{session}/turns", response_model=results.Forgotten, tags=["turns"], responses=ERRORS)
async def forget_turns(session: SessionId,
                       first: int = Query(alias="from", description="The first turn to forget."),
                       last: int = Query(alias="to", description="The last turn to forget (included)."),
                       t: str = Depends(tenant), m: Memory = Depends(memory)):
    """Forget turns ``from``..``to`` (both included) for real, as one turn is."""
    return await run_in_threadpool(m.forget, session, first, last, tenant=t)


@router.get("/v1/sessions/{session}/export", response_class=StreamingResponse, tags=["sessions"], responses={
    200: {"content": {NDJSON: {"schema": {"type": "string"}}},
          "description": "JSON Lines: a header (format, version, curve, keep_source), every turn in order, "
                         "a last line with the count; each line carries a checksum"}, **ERRORS})
async def export_session(session: SessionId, t: str = Depends(tenant), m: Memory = Depends(memory)):
    """The session as JSON Lines, streamed (memory holds 1,000 turns at a time, not the session)."""
    lines = await run_in_threadpool(transfer.export, m, session, tenant=t)
    return StreamingResponse(lines, media_type=NDJSON,
                             headers={"Content-Disposition": f'attachment; filename="{session}.jsonl"'})


@router.post("/v1/sessions/{session}/import", response_model=results.Session, status_code=201, tags=["sessions"],
             responses=ERRORS, openapi_extra={"requestBody": {"required": True, "content": {
                 NDJSON: {"schema": {"type": "string", "description": "A file GET .../export made"}}}}})
async def import_session(session: SessionId, request: Request, t: str = Depends(tenant),
                         m: Memory = Depends(memory)):
    """Build a session (this id) from an export. The body is checked line by line while it is spooled
    to a temporary file; a file cut short or edited is refused (422 naming the line) before anything
    is written, so nothing is half-imported."""
    try:
        await run_in_threadpool(m.session, session, tenant=t)
    except NotFound:
        pass
    else:
        raise SessionExists(f"session {session!r} already exists")
    checker = transfer.Checker(m)
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(checker.feed, chunk)
        checked = await run_in_threadpool(checker.finish)
    except BaseException:
        checker.close()
        raise
    try:
        return await run_in_threadpool(transfer.replay, m, checked, session, tenant=t)
    finally:
        checked.close()

