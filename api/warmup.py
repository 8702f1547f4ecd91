"""Start-up warm-up: the model backend loaded beside the starting server, then the loaded objects
moved out of the GC's full collections."""
from __future__ import annotations

import gc
import logging
import threading
import weakref

from optimem.memory.service import Memory

log = logging.getLogger("optimem.api")


_frozen = threading.Event()
_warming: weakref.WeakSet[Memory] = weakref.WeakSet()   # memories whose warm-up is still on


def start(m: Memory) -> threading.Thread:
    """``load_reader`` on a thread beside the starting server; ``warming(m)`` is True until it ends."""
    _warming.add(m)
    thread = threading.Thread(target=load_reader, args=(m,), name="optimem-load-reader", daemon=True)
    thread.start()
    return thread


def warming(m: Memory) -> bool:
    """Whether start-up warm-up (loading the backend; for the GPU backend, compiling it) is still on."""
    return m in _warming


def load_reader(m: Memory) -> None:
    """Load the model backend (and warm it) now, beside the starting server, not in the first
    recall: loading imports C extensions that hold the GIL up to ~130 ms at a stretch, and during a
    first burst of recalls that stopped every request ~350 ms (issue 10). A backend that cannot
    load says so again, as a 503, when a recall needs it.

    Then, once per process, what is loaded is moved out of the GC's full collections (``gc.freeze``,
    after a collection so no garbage is kept): they walked all of it (~180k objects, ~100 ms here)
    with every thread stopped, and a burst of recalls set one off."""
    try:
        warm = getattr(m.backend, "warm", None)
        if warm is not None:
            warm()
    except Exception as exc:  # noqa: BLE001  logged; recall reports it to its caller
        log.warning("the %s backend did not load at start: %s", m.settings.backend, exc)
    finally:
        _warming.discard(m)
    if not _frozen.is_set():
        _frozen.set()
        gc.collect()
        gc.freeze()


