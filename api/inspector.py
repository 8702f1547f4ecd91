"""The memory inspector: a web page that shows what a session's model sees and why.

Each page of memory as the model sees it now (at its tier) beside its source text, the recent turns
still kept as text, the forgetting curve with the session's pages on it, the token accounting, and
a recall box, and a button on each turn that forgets it for real (an admin key's right, as
``DELETE /v1/sessions/{session}/turns/{turn}``). Plain HTML from one Jinja2 template; the same API
keys as the JSON API (a browser sends its key as the Basic auth password: see api.auth).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.responses import HTMLResponse, RedirectResponse, Response  # noqa: E402
from fastapi.templating import Jinja2Templates  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from optimem.api.auth import ADMIN, allows, scope_of, tenant  # noqa: E402
from optimem.errors import BadRequest, ModelUnavailable, NotFound  # noqa: E402
from optimem.api.deps import HttpLinks  # noqa: E402
from optimem.api.recall_slots import RecallsBusy, run_recall  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402

router = APIRouter(tags=["inspector"])
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
PAGES_SHOWN = 100     # newest pages on one screen; older ones are summarised
TURNS_SHOWN = 300     # newest text turns on one screen (a bulk import's backlog is thousands until sealed)
RECALL_LIMIT = 8


def _render(request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, "inspector.html", context, status_code=status_code)


def _error(request: Request, status: int, message: str) -> HTMLResponse:
    return _render(request, status, view="error", status=status, message=message)


def page_sources(page: dict, sources: dict[int, dict]) -> list[dict]:
    """The exact text a page holds, turn by turn (a span may be part of a turn)."""
    out = []
    for span in page["turns"]:
        source = sources.get(span["index"])
        if source:
            out.append({"index": span["index"], "role": span["role"], "time": span["time"],
                        "text": source["content"][span["start"]:span["end"]], "partial":
                        span["start"] > 0 or span["end"] < len(source["content"])})
    return out


def session_view(memory: Memory, t: str, session: str, base_url: str) -> dict[str, Any]:
    """Everything the session page shows but the recall. Blocking (Redis)."""
    links = HttpLinks(base_url)
    info = memory.session(session, tenant=t).model_dump()
    ctx = memory.context(session, links=links, tenant=t).model_dump()
    pages = [p.model_dump() for p in memory.pages(session, links=links, tenant=t)]
    shown = pages[-PAGES_SHOWN:]
    sources: dict[int, dict] = {}
    if info["keep_source"]:
        sources = memory.sources(session, [span["index"] for p in shown for span in p["turns"]], tenant=t)
    for page in shown:
        page["source"] = page_sources(page, sources) if info["keep_source"] else None
    accounting = ctx["accounting"]
    return {"view": "session", "info": info, "turns": ctx["turns"][-TURNS_SHOWN:],
            "hidden_turns": max(0, len(ctx["turns"]) - TURNS_SHOWN), "pages": shown,
            "hidden_pages": len(pages) - len(shown), "accounting": accounting,
            "full_text_tokens": accounting["text_tokens_replaced"] + accounting["recent_text_tokens"]
            + sum(p["text_tokens"] for p in pages if p["tier"] == "gone"),
            "unit": info["curve"].get("unit", "turns")}


def horizon(memory: Memory, spec: dict) -> float:
    """An age by which the curve has shown its shape: past its last step, or where it reaches its faintest tier."""
    if spec["kind"] == "step":
        last = spec["steps"][-1][0]
        return last * 1.2 if last > 0 else 100.0
    curve, faintest = memory.curve(spec), memory.ladder.tiers[-1]
    age = 1.0
    while age < 1e9 and curve.tier(age, memory.ladder) != faintest:
        age *= 1.5
    return age * 1.1


def curve_png(memory: Memory, spec: dict, pages: list[dict]) -> bytes:
    """Visual tokens a page costs against its age under the session's curve, with its pages as points."""
    curve = memory.curve(spec)
    seconds = curve.unit == "seconds"
    scale = 3600.0 if seconds else 1.0   # seconds are plotted in hours
    top = max([horizon(memory, spec)] + [p["age"] * 1.1 for p in pages])
    ages = [top * i / 600 for i in range(601)]
    tokens = [curve.tier(age, memory.ladder).tokens for age in ages]
    fig = Figure(figsize=(7.2, 3.3), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([a / scale for a in ages], tokens, drawstyle="steps-post", color="#3867d6", label="curve")
    if pages:
        ax.scatter([p["age"] / scale for p in pages], [p["visual_tokens"] for p in pages], color="#eb3b5a",
                   zorder=3, s=22, label="this session's pages")
        if len(pages) <= 12:
            for p in pages:
                ax.annotate(str(p["page"]), (p["age"] / scale, p["visual_tokens"]), textcoords="offset points",
                            xytext=(3, 4), fontsize=7, color="#eb3b5a")
    tiers = sorted(memory.ladder.tiers, key=lambda t: t.tokens)
    ax.set_yscale("symlog", linthresh=10)  # tiers span 0 to ~1000 tokens; each should get its own height
    ax.set_yticks([t.tokens for t in tiers], [f"{t.name} {round(t.tokens, 1):g}" for t in tiers], fontsize=7)
    ax.set_xscale("symlog", linthresh=10 / scale if seconds else 10)  # a young page and the far end both show
    ax.set_xlim(0, top / scale)
    ax.minorticks_off()
    ax.set_xlabel(f"age ({'hours' if seconds else 'turns'} since the page's last turn)")
    ax.set_ylabel("visual tokens per page")
    ax.set_title(f"forgetting curve ({memory.ladder.family})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


@router.get("/inspect", response_class=HTMLResponse)
async def sessions(request: Request, t: str = Depends(tenant)) -> HTMLResponse:
    """The caller's sessions, each a link to its inspector page."""
    memory: Memory = request.app.state.memory

    def load() -> list[dict]:
        out = []
        for session in memory.sessions(tenant=t):
            try:
                out.append(memory.session(session, tenant=t).model_dump())
            except NotFound:
                continue  # deleted meanwhile
        return out

    return _render(request, view="sessions", sessions=await run_in_threadpool(load))


@router.get("/inspect/{session}", response_class=HTMLResponse)
async def inspect(request: Request, session: str, t: str = Depends(tenant),
                  q: Optional[str] = Query(None, max_length=2000, description="Recall query"),
                  forgotten: Optional[int] = Query(None, ge=0, description="A turn just forgotten (the page "
                                                                            "says so)")) -> HTMLResponse:
    """One session: its pages at their tiers, recent turns, curve, accounting and recall."""

    memory: Memory = request.app.state.memory
    query = (q or "").strip()
    try:
        view = await run_in_threadpool(session_view, memory, t, session, str(request.base_url))
    except NotFound as exc:
        return _error(request, 404, str(exc))
    except BadRequest as exc:
        return _error(request, 422, str(exc))
    recall, recall_error = None, None
    if query:   # the way the API's recall runs: in a recall slot, on a recall thread, never on the threadpool
        try:
            recall = (await run_recall(request, memory.recall, session, query, limit=RECALL_LIMIT,
                                       tenant=t)).model_dump()
        except (BadRequest, ModelUnavailable, RecallsBusy) as exc:
            recall_error = str(exc)
        except NotFound as exc:   # deleted meanwhile
            return _error(request, 404, str(exc))
    can_forget = allows(scope_of(memory.settings.scopes(), request.headers.get("authorization")), ADMIN)
    return _render(request, session=session, query=query, recall=recall, recall_error=recall_error,
                   forgotten=forgotten, can_forget=can_forget, **view)


def _from_this_site(request: Request) -> bool:
    """A form posted by a page of this server, not by another site riding on the browser's saved key
    (cross-site request forgery): browsers say where a POST comes from in Sec-Fetch-Site and Origin."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


@router.post("/inspect/{session}/forget", response_class=RedirectResponse, status_code=303,
             responses={303: {"description": "Forgotten: back to the session's page, which says so"}})
async def forget(request: Request, session: str, t: str = Depends(tenant),
                 turn: str = Form("", max_length=20, description="The turn to forget (its number).")) -> Response:
    """The inspector's forget button: one turn forgotten for real, as ``DELETE
    /v1/sessions/{session}/turns/{turn}`` does, then back to the session's page."""
    if not _from_this_site(request):
        raise HTTPException(403, "a forget must come from the inspector's own page (this one came from another site)")
    if not turn.strip().isdigit():
        return _error(request, 422, f"turn must be a turn number, got {turn!r}")
    memory: Memory = request.app.state.memory
    try:
        await run_in_threadpool(memory.forget, session, int(turn), tenant=t)
    except NotFound as exc:
        return _error(request, 404, str(exc))
    except BadRequest as exc:
        return _error(request, 422, str(exc))
    back = request.url_for("inspect", session=session).include_query_params(forgotten=int(turn))
    return RedirectResponse(str(back.path) + "?" + back.query + f"#turn-{int(turn)}", status_code=303)


@router.get("/inspect/{session}/curve.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "PNG image"}})
async def curve(request: Request, session: str, t: str = Depends(tenant)) -> Response:
    """The session's forgetting curve, with its pages where their ages put them."""
    memory: Memory = request.app.state.memory

    def draw() -> bytes:
        info = memory.session(session, tenant=t)
        return curve_png(memory, info.curve, [p.model_dump() for p in memory.pages(session, tenant=t)])

    return Response(await run_in_threadpool(draw), media_type="image/png")
