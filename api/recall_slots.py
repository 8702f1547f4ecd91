"""Recall slots: each process runs at most ``OPTIMEM_RECALL_CONCURRENCY`` recalls at once, on threads
started with the app (one per slot), a few computing at a time (``COMPUTE``). Used by the API's
recall route, the proxy's recall tool and the inspector's recall box.
"""
from __future__ import annotations

import asyncio
import contextvars

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from optimem.api.auth import tenant
from optimem.memory import metrics as observed
from optimem.memory.concurrency import COMPUTE
from optimem.memory.quotas import Quotas
from optimem.memory.service import Memory

SLOT_WAIT_S = 1.0   # a recall waits this long for a free recall slot, then is refused (503)


class RecallsBusy(Exception):
    """Every recall slot stayed taken for ``SLOT_WAIT_S``: answered 503 with Retry-After."""
    status = 503

    def __init__(self, m: Memory):
        self.retry_s = max(1, min(60, int(m.settings.recall_read_s) or 1))
        super().__init__(f"too many recalls at once (OPTIMEM_RECALL_CONCURRENCY = {m.settings.recall_concurrency}); "
                         f"retry in {self.retry_s} s")


class TenantRecallsBusy(RecallsBusy):
    """The caller's tenant has its share of recalls running (``OPTIMEM_TENANT_RECALLS``, across every
    process): answered 429 with Retry-After, at once, so it never waits for a slot others need."""
    status = 429

    def __init__(self, m: Memory):
        Exception.__init__(self, f"your tenant has {m.settings.tenant_recalls} recalls running "
                                 "(OPTIMEM_TENANT_RECALLS): retry in 1 s")
        self.retry_s = 1


def quotas(request: Request) -> Quotas:
    """The app's per-tenant caps (made on first use, over the Memory's Redis)."""
    state = request.app.state
    if getattr(state, "quotas", None) is None:
        s = state.memory.settings
        state.quotas = Quotas(state.memory.store.r, s.tenant_recalls, s.tenant_appends_per_s,
                              lease_s=s.recall_read_s + 60)
    return state.quotas


def caller(request: Request) -> str:
    """The tenant of the request's API key (already checked by the route's ``tenant`` dependency)."""
    return tenant(request, request.headers.get("authorization"))


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
    # The tenant's share first, refused at once (429): a tenant past it never queues for a slot.
    who, share = caller(request), quotas(request)
    lease = await run_in_threadpool(share.take_recall, who)
    if lease is None:
        observed.REFUSED.labels("tenant_recalls").inc()
        raise TenantRecallsBusy(m)
    try:
        await asyncio.wait_for(state.recall_slots.acquire(), SLOT_WAIT_S)
    except asyncio.TimeoutError:
        observed.RECALLS_REFUSED.inc()
        observed.REFUSED.labels("recall_slots").inc()
        await run_in_threadpool(share.give_back_recall, who, lease)
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
            share.give_back_recall(who, lease)
        except Exception:  # noqa: BLE001  the lease expires by itself
            pass
        try:
            loop.call_soon_threadsafe(_settle, done, *outcome, state.recall_slots)
        except RuntimeError:   # the loop is closed (the server stopped): no one is waiting
            pass

    state.recall_threads.submit(job)
    return await done


