"""Real servers on loopback for tests that drive optimem the way a chatbot or a browser does."""
from __future__ import annotations

import importlib.util
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app, timeout: float = 20.0) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a thread on 127.0.0.1; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def wait_for(condition, timeout: float = 10.0, every: float = 0.05):
    """Poll until ``condition()`` is truthy (and return it), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"not true after {timeout} s: {condition}"
            return value
        time.sleep(every)



def _bench_common():
    """bench/common.py (bench/ is scripts, not a package): its ``start_serve``/``stop_serve``."""
    spec = importlib.util.spec_from_file_location("optimem_bench_common", Path(__file__).resolve().parents[1]
                                                  / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_common = _bench_common()
start_serve = _common.start_serve     # optimem serve as a process; returns once /healthz is 200
stop_serve = _common.stop_serve       # SIGTERM (SIGKILL after a minute)
