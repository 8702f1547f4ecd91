"""Memory's verbs for one caller, whichever way memory is reached: the embedded ``Memory`` bound to a
tenant, or an HTTP ``Client`` (whose API key is its tenant). The agent adapters (the MCP server,
the LangChain history and retriever) are written once against ``Verbs``; none computes memory.
Also what they share of a recall's answer: hits as read back (never the kept source: a model
knows only what the faded pages still say), and a note that says plainly when nothing was found.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, Union

from pydantic import BaseModel, Field

from optimem.api.client import Client, Format
from optimem.errors import NotFound, SessionExists
from optimem.memory.results import Appended, Forgotten, RawContext, Recall
from optimem.memory.service import DEFAULT_TENANT, Memory


class Verbs(Protocol):
    """The verbs the adapters use, with the ``Client``'s signatures (no tenant: it is bound)."""

    def create_session(self, session: str | None = None) -> Any: ...
    def sessions(self) -> list[str]: ...
    def delete_session(self, session: str) -> None: ...
    def forget(self, session: str, turn: int, last: int | None = None) -> Forgotten: ...
    def append(self, session: str, turns: list[dict[str, Any]]) -> Appended: ...
    def context(self, session: str, *, budget: int | None = None, format: Format = "raw") -> Any: ...
    def page_image(self, session: str, page: int, tier: str | None = None) -> bytes: ...
    def recall(self, session: str, query: str | None = None, *, turn: int | str | None = None,
               since: str | None = None, until: str | None = None, role: str | None = None,
               limit: int = 5) -> Recall: ...


class Embedded:
    """An embedded ``Memory`` as one tenant sees it."""

    def __init__(self, memory: Memory, tenant: str = DEFAULT_TENANT):
        self.memory, self.tenant = memory, tenant

    def create_session(self, session: str | None = None):
        return self.memory.create_session(session, tenant=self.tenant)

    def sessions(self) -> list[str]:
        return self.memory.sessions(tenant=self.tenant)

    def delete_session(self, session: str) -> None:
        self.memory.delete_session(session, tenant=self.tenant)

    def forget(self, session: str, turn: int, last: int | None = None) -> Forgotten:
        return self.memory.forget(session, turn, last, tenant=self.tenant)

    def append(self, session: str, turns: list[dict[str, Any]]) -> Appended:
        return self.memory.append(session, turns, tenant=self.tenant)

    def context(self, session: str, *, budget: int | None = None, format: Format = "raw"):
        return self.memory.context(session, budget=budget, format=format, tenant=self.tenant)

    def page_image(self, session: str, page: int, tier: str | None = None) -> bytes:
        return self.memory.page_image(session, page, tier, tenant=self.tenant)

    def recall(self, session: str, query: str | None = None, *, turn: int | str | None = None,
               since: str | None = None, until: str | None = None, role: str | None = None,
               limit: int = 5) -> Recall:
        return self.memory.recall(session, query, turn=turn, since=since, until=until, role=role, limit=limit,
                                  tenant=self.tenant)


MemoryLike = Union[Memory, Client, Embedded]


def verbs(memory: MemoryLike, tenant: str = DEFAULT_TENANT) -> Verbs:
    """``memory`` as ``Verbs``: a ``Memory`` is bound to ``tenant``; a ``Client`` already is (its key)."""
    if isinstance(memory, Memory):
        return Embedded(memory, tenant)
    if isinstance(memory, (Client, Embedded)):
        return memory
    raise TypeError(f"expected an optimem.Memory or optimem.Client, got {type(memory).__name__}")


def append_creating(v: Verbs, session: str, turns: list[dict[str, Any]]) -> Appended:
    """Append, creating the session on first use (as the proxy does): an agent names a session and talks."""
    try:
        return v.append(session, turns)
    except NotFound:
        try:
            v.create_session(session)
        except SessionExists:
            pass    # another caller created it first
        return v.append(session, turns)


def raw_context(v: Verbs, session: str, budget: int | None) -> RawContext:
    got = v.context(session, budget=budget, format="raw")
    return got if isinstance(got, RawContext) else RawContext.model_validate(got)


# -- a recall, as agents get it ------------------------------------------------------------
class Found(BaseModel):
    turn: int
    role: str
    time: str
    text: str = Field(description="The turn as read back from its page now (empty: the page has faded out).")
    page: Optional[int] = Field(description="Page it was read from; null while the turn is still recent text.")
    tier: str = Field(description="How sharp the page is now ('text' for recent turns).")
    age: float = Field(description="In the curve's unit: turns since the page's last turn, or seconds.")
    confidence: float


class Recalled(BaseModel):
    session: str
    found: int = Field(description="Number of hits.")
    hits: list[Found]
    note: str = Field(description="What was found, or plainly that nothing was.")
    pages_read: int
    pages_unread: int = Field(description="Pages not searched yet (unread and past the read budget): ask again later.")


def _found(hit) -> Found:
    return Found(turn=hit.turn, role=hit.role, time=hit.time, text=hit.text, page=hit.page, tier=hit.tier,
                 age=hit.age, confidence=round(hit.confidence, 3))


def asked(**what: Any) -> str:
    """What a recall asked for, in words: "query 'locker' and role 'user'"."""
    return " and ".join(f"{k} {v!r}" for k, v in what.items() if v is not None) or "nothing"


def recalled(got: Recall, asked: str) -> Recalled:
    hits = [_found(h) for h in got.hits]
    if hits:
        note = f"{len(hits)} turn(s) found for {asked}."
    else:
        note = f"Nothing found in session {got.session!r} for {asked}."
    if got.pages_unread:
        note += f" {got.pages_unread} page(s) could not be searched yet (not read in time): ask again later."
    return Recalled(session=got.session, found=len(hits), hits=hits, note=note, pages_read=got.pages_read,
                    pages_unread=got.pages_unread)


def recall_text(r: Recalled) -> str:
    lines = [r.note]
    for h in r.hits:
        where = "recent text" if h.page is None else f"page {h.page}, tier {h.tier}"
        said = h.text.strip() or "(this page has faded out: its words cannot be read back)"
        lines.append(f"[turn {h.turn} | {h.role} | {h.time} | {where} | age {h.age:g} | "
                     f"confidence {h.confidence:.2f}]\n{said}")
    return "\n\n".join(lines)
