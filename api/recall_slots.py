"""Recall slots: each process runs at most ``OPTIMEM_RECALL_CONCURRENCY`` recalls at once, on threads
started with the app (one per slot), a few computing at a time (``COMPUTE``). Used by the API's
recall route, the proxy's recall tool and the inspector's recall box.
"""
from __future__ import annotations

import asyncio
import contextvars

from fastapi import Request

from optimem.memory import metrics as observed
from optimem.memory.concurrency import COMPUTE
from optimem.memory.service import Memory

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


