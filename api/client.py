"""HTTP clients for an optimem service, with the embedded ``Memory``'s verbs and typed results::

    import optimem
    with optimem.Client("http://127.0.0.1:8000", api_key="k1") as memory:
        memory.create_session("alice")
        memory.add("alice", "My locker code is 4817.")
        print(memory.recall("alice", query="locker code").hits[0].text)

``AsyncClient`` has the same verbs, awaited (``async with optimem.AsyncClient(url) as memory``).
Over HTTP the API key decides the tenant, so no verb takes one. A refusal raises the matching
``optimem.errors`` class (``NotFound``, ``SessionExists``, ``BadRequest``, ``ModelUnavailable``,
else ``OptimemError``) with the server's message and ``.status``; network failures stay ``httpx`` errors.

Each verb is written once, as a ``_Call`` (what to send, and how to read the answer); the two
clients only differ in how they send it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO, Any, AsyncIterator, Callable, Generic, Iterator, Literal, Optional, TypeVar, Union
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from optimem.errors import BadRequest, ModelUnavailable, NotFound, OptimemError, SessionExists
from optimem.memory.results import (Appended, EmbeddingsContext, Forgotten, OpenAIContext, RawContext, Recall,
                                    Session)

__all__ = ["Client", "AsyncClient", "Context"]

T = TypeVar("T")
Format = Literal["raw", "openai", "embeddings"]
Context = Union[RawContext, OpenAIContext, EmbeddingsContext]
CONTEXTS: dict[str, type[BaseModel]] = {"raw": RawContext, "openai": OpenAIContext, "embeddings": EmbeddingsContext}
ERRORS: dict[int, type[OptimemError]] = {400: BadRequest, 404: NotFound, 409: SessionExists, 422: BadRequest,
                                         503: ModelUnavailable}
NDJSON = "application/x-ndjson"
CHUNK = 1 << 16     # bytes an export or import is read and sent in
DEFAULT_TIMEOUT = 120.0  # a recall may read unread pages for up to OPTIMEM_RECALL_READ_S (60 s) first


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request, and how its successful answer becomes a result."""
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Optional[dict[str, Any]] = None
    json: Any = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in (("params", self.params), ("json", self.json)) if v is not None}

    def result(self, response: httpx.Response) -> T:
        if response.is_error:
            raise error(response)
        return self.read(response)


def error(response: httpx.Response) -> OptimemError:
    """The optimem error for a refused request: its class by status, the server's ``detail`` as message."""
    try:
        detail: Any = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text
    if isinstance(detail, list):  # request validation: [{"loc": [...], "msg": ...}, ...]
        detail = "; ".join(".".join(str(p) for p in e.get("loc", ())) + f": {e.get('msg')}" if isinstance(e, dict)
                           else str(e) for e in detail)
    exc = ERRORS.get(response.status_code, OptimemError)(str(detail or f"HTTP {response.status_code}"))
    exc.status = response.status_code
    return exc


def _model(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda r: cls.model_validate(r.json())  # type: ignore[attr-defined]


def _s(session: str) -> str:
    return f"/v1/sessions/{quote(session, safe='')}"


class _Calls:
    """The verbs as requests, shared by ``Client`` and ``AsyncClient``; no I/O here."""

    @staticmethod
    def create_session(session: str | None, curve: Any, keep_source: bool) -> _Call[Session]:
        body = {k: v for k, v in (("id", session), ("curve", curve)) if v is not None}
        return _Call("POST", "/v1/sessions", _model(Session), json={**body, "keep_source": keep_source})

    @staticmethod
    def session(session: str) -> _Call[Session]:
        return _Call("GET", _s(session), _model(Session))

    @staticmethod
    def sessions() -> _Call[list[str]]:
        return _Call("GET", "/v1/sessions", lambda r: list(r.json()["sessions"]))

    @staticmethod
    def delete_session(session: str) -> _Call[None]:
        return _Call("DELETE", _s(session), lambda r: None)

    @staticmethod
    def set_curve(session: str, curve: Any) -> _Call[Session]:
        return _Call("PUT", _s(session) + "/curve", _model(Session), json={"curve": curve})

    @staticmethod
    def append(session: str, turns: list[dict[str, Any]]) -> _Call[Appended]:
        return _Call("POST", _s(session) + "/turns", _model(Appended), json={"turns": list(turns)})

    @staticmethod
    def add(session: str, content: str, role: str, time: str | None) -> _Call[Appended]:
        turn = {"role": role, "content": content, **({"time": time} if time is not None else {})}
        return _Calls.append(session, [turn])

    @staticmethod
    def context(session: str, budget: int | None, format: Format, images: str) -> _Call[Context]:
        if format not in CONTEXTS:
            raise BadRequest(f"format must be one of {', '.join(CONTEXTS)}, got {format!r}")
        params = {"format": format, "images": images, **({"budget": budget} if budget is not None else {})}
        return _Call("GET", _s(session) + "/context", _model(CONTEXTS[format]), params=params)  # type: ignore[arg-type]

    @staticmethod
    def recall(session: str, query: str | None, turn: int | str | None, since: str | None, until: str | None,
               role: str | None, limit: int) -> _Call[Recall]:
        body = {k: v for k, v in dict(query=query, turn=turn, since=since, until=until, role=role).items()
                if v is not None}
        return _Call("POST", _s(session) + "/recall", _model(Recall), json={**body, "limit": limit})

    @staticmethod
    def page_image(session: str, page: int, tier: str | None) -> _Call[bytes]:
        return _Call("GET", f"{_s(session)}/pages/{int(page)}/image", lambda r: r.content,
                     params={"tier": tier} if tier is not None else None)

    @staticmethod
    def health() -> _Call[dict[str, Any]]:
        return _Call("GET", "/healthz", lambda r: dict(r.json()))

    @staticmethod
    def forget(session: str, turn: int, last: int | None) -> _Call[Forgotten]:
        if last is None:
            return _Call("DELETE", f"{_s(session)}/turns/{int(turn)}", _model(Forgotten))
        return _Call("DELETE", f"{_s(session)}/turns", _model(Forgotten), params={"from": int(turn), "to": int(last)})

    @staticmethod
    def delete_all_sessions(tenant: str) -> _Call[int]:
        return _Call("DELETE", "/v1/sessions", lambda r: int(r.json()["deleted"]),
                     params={"all": "true", "confirm": tenant})


Source = Union[str, "os.PathLike[str]", IO[bytes]]
Sink = Union[str, "os.PathLike[str]", IO[bytes]]


def _opened(target: Source | Sink, mode: str) -> tuple[IO[bytes], bool]:
    """A binary file for a path (ours to close) or the file given (the caller's)."""
    if isinstance(target, (str, os.PathLike)):
        return open(target, mode), True
    return target, False


def _header(f: IO[bytes]) -> dict[str, Any]:
    """The header line of an export (the session id and turn count), the file left where it was."""
    at = f.tell()
    first = f.readline()
    f.seek(at)
    try:
        header = json.loads(first)
    except ValueError:
        raise BadRequest("line 1: not JSON: not an optimem export") from None
    return header if isinstance(header, dict) else {}


def _chunks(f: IO[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """The file in pieces; ``progress(n)`` with the newlines (turns, roughly) each piece holds."""
    while chunk := f.read(CHUNK):
        if progress:
            progress(chunk.count(b"\n"))
        yield chunk


class _Base:
    def __init__(self, base_url: str, api_key: str | None, timeout: float | httpx.Timeout | None,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None,
                 http: httpx.Client | httpx.AsyncClient | None, kind: type) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = http is None
        self.http = http if http is not None else kind(transport=transport, timeout=timeout)

    def _args(self, call: _Call[Any]) -> dict[str, Any]:
        return dict(method=call.method, url=self.base_url + call.path, headers=self.headers, **call.kwargs)


class Client(_Base):
    """A blocking client for an optimem service. ``timeout`` (seconds) applies to the httpx client it makes;
    pass ``transport=``, or ``http=`` an httpx client to use instead (e.g. Starlette's ``TestClient(app)``
    for an in-process app; it is not closed here)."""

    http: httpx.Client

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, http: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key, timeout, transport, http, httpx.Client)

    def _do(self, call: _Call[T], **extra: Any) -> T:
        args = self._args(call)
        args["headers"] = {**args["headers"], **extra.pop("headers", {})}
        return call.result(self.http.request(**args, **extra))

    def close(self) -> None:
        """Close the connection pool (unless the httpx client was passed in)."""
        if self._own:
            self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def create_session(self, session: str | None = None, *, curve: Any = None, keep_source: bool = True) -> Session:
        """A new session (id generated when ``None``); ``SessionExists`` if the id is taken."""
        return self._do(_Calls.create_session(session, curve, keep_source))

    def session(self, session: str) -> Session:
        return self._do(_Calls.session(session))

    def sessions(self) -> list[str]:
        return self._do(_Calls.sessions())

    def delete_session(self, session: str) -> None:
        return self._do(_Calls.delete_session(session))

    def set_curve(self, session: str, curve: Any) -> Session:
        return self._do(_Calls.set_curve(session, curve))

    def append(self, session: str, turns: list[dict[str, Any]]) -> Appended:
        """Append turns ``{"role", "content", "time"?}``; ``.sealed_pages`` lists the pages this sealed."""
        return self._do(_Calls.append(session, turns))

    def add(self, session: str, content: str, role: str = "user", *, time: str | None = None) -> Appended:
        return self._do(_Calls.add(session, content, role, time))

    def context(self, session: str, *, budget: int | None = None, format: Format = "raw",
                images: Literal["data", "url"] = "data") -> Context:
        """``RawContext``, ``OpenAIContext`` or ``EmbeddingsContext``, by ``format``."""
        return self._do(_Calls.context(session, budget, format, images))

    def recall(self, session: str, query: str | None = None, *, turn: int | str | None = None,
               since: str | None = None, until: str | None = None, role: str | None = None,
               limit: int = 5) -> Recall:
        return self._do(_Calls.recall(session, query, turn, since, until, role, limit))

    def page_image(self, session: str, page: int, tier: str | None = None) -> bytes:
        """The page as PNG, at ``tier`` (a tier name or 'full'; default: its tier now)."""
        return self._do(_Calls.page_image(session, page, tier))

    def health(self) -> dict[str, Any]:
        return self._do(_Calls.health())

    def forget(self, session: str, turn: int, last: int | None = None) -> Forgotten:
        """Forget turns ``turn``..``last`` (one turn without ``last``) for real: their text leaves every
        store, page pixel and cache; their numbers stay."""
        return self._do(_Calls.forget(session, turn, last))

    def delete_all_sessions(self, tenant: str) -> int:
        """Delete every session of your tenant (``tenant``: its name, as a check); how many were deleted."""
        return self._do(_Calls.delete_all_sessions(tenant))

    def export_session(self, session: str, out: Sink, *, progress: Callable[[int], None] | None = None) -> int:
        """Write the session's export (JSON Lines) to ``out`` (a path or a binary file), streamed;
        ``progress(n)`` as lines arrive. Returns the bytes written."""
        f, own = _opened(out, "wb")
        written = 0
        try:
            with self.http.stream("GET", self.base_url + _s(session) + "/export", headers=self.headers) as r:
                if r.is_error:
                    r.read()
                    raise error(r)
                for chunk in r.iter_bytes(CHUNK):
                    f.write(chunk)
                    written += len(chunk)
                    if progress:
                        progress(chunk.count(b"\n"))
        finally:
            if own:
                f.close()
        return written

    def import_session(self, source: Source, session: str | None = None, *,
                       progress: Callable[[int], None] | None = None) -> Session:
        """Build a session from an export (a path or a binary file), streamed up; ``session``: its id
        (default: the exported session's). A file cut short or edited is refused (``BadRequest``
        naming the line) and nothing is imported."""
        f, own = _opened(source, "rb")
        try:
            sid = session or str(_header(f).get("session") or "")
            if not sid:
                raise BadRequest("line 1: no session id in the header: pass session=")
            return self._do(_Call("POST", _s(sid) + "/import", _model(Session)), content=_chunks(f, progress),
                            headers={"content-type": NDJSON})
        finally:
            if own:
                f.close()


class AsyncClient(_Base):
    """``Client``'s verbs, awaited; over ``httpx.AsyncClient`` (``transport=httpx.ASGITransport(app)`` works)."""

    http: httpx.AsyncClient

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key, timeout, transport, http, httpx.AsyncClient)

    async def _do(self, call: _Call[T], **extra: Any) -> T:
        args = self._args(call)
        args["headers"] = {**args["headers"], **extra.pop("headers", {})}
        return call.result(await self.http.request(**args, **extra))

    async def close(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def create_session(self, session: str | None = None, *, curve: Any = None,
                             keep_source: bool = True) -> Session:
        return await self._do(_Calls.create_session(session, curve, keep_source))

    async def session(self, session: str) -> Session:
        return await self._do(_Calls.session(session))

    async def sessions(self) -> list[str]:
        return await self._do(_Calls.sessions())

    async def delete_session(self, session: str) -> None:
        return await self._do(_Calls.delete_session(session))

    async def set_curve(self, session: str, curve: Any) -> Session:
        return await self._do(_Calls.set_curve(session, curve))

    async def append(self, session: str, turns: list[dict[str, Any]]) -> Appended:
        return await self._do(_Calls.append(session, turns))

    async def add(self, session: str, content: str, role: str = "user", *, time: str | None = None) -> Appended:
        return await self._do(_Calls.add(session, content, role, time))

    async def context(self, session: str, *, budget: int | None = None, format: Format = "raw",
                      images: Literal["data", "url"] = "data") -> Context:
        return await self._do(_Calls.context(session, budget, format, images))

    async def recall(self, session: str, query: str | None = None, *, turn: int | str | None = None,
                     since: str | None = None, until: str | None = None, role: str | None = None,
                     limit: int = 5) -> Recall:
        return await self._do(_Calls.recall(session, query, turn, since, until, role, limit))

    async def page_image(self, session: str, page: int, tier: str | None = None) -> bytes:
        return await self._do(_Calls.page_image(session, page, tier))

    async def health(self) -> dict[str, Any]:
        return await self._do(_Calls.health())

    async def forget(self, session: str, turn: int, last: int | None = None) -> Forgotten:
        return await self._do(_Calls.forget(session, turn, last))

    async def delete_all_sessions(self, tenant: str) -> int:
        return await self._do(_Calls.delete_all_sessions(tenant))

    async def export_session(self, session: str, out: Sink, *,
                             progress: Callable[[int], None] | None = None) -> int:
        """As ``Client.export_session``; the file is written as the bytes arrive."""
        f, own = _opened(out, "wb")
        written = 0
        try:
            async with self.http.stream("GET", self.base_url + _s(session) + "/export", headers=self.headers) as r:
                if r.is_error:
                    await r.aread()
                    raise error(r)
                async for chunk in r.aiter_bytes(CHUNK):
                    f.write(chunk)
                    written += len(chunk)
                    if progress:
                        progress(chunk.count(b"\n"))
        finally:
            if own:
                f.close()
        return written

    async def import_session(self, source: Source, session: str | None = None, *,
                             progress: Callable[[int], None] | None = None) -> Session:
        """As ``Client.import_session``."""
        f, own = _opened(source, "rb")

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in _chunks(f, progress):
                yield chunk

        try:
            sid = session or str(_header(f).get("session") or "")
            if not sid:
                raise BadRequest("line 1: no session id in the header: pass session=")
            return await self._do(_Call("POST", _s(sid) + "/import", _model(Session)), content=chunks(),
                                  headers={"content-type": NDJSON})
        finally:
            if own:
                f.close()
