"""What every bench script shares: a free loopback port, the percentile of a list of samples, and
``optimem serve`` started as a process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    """The q-quantile of the values by nearest rank (the smallest value with at least q of them at or
    below it); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def start_serve(env: dict, port: int, *args: str) -> subprocess.Popen:
    """``optimem serve`` as a process on loopback with ``env``; returns once /healthz answers 200."""
    proc = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "serve", "--port", str(port),
                             "--log-level", "warning", *args], env={**os.environ, **env})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"optimem serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("optimem serve did not come up")


def stop_serve(proc: subprocess.Popen) -> float:
    """SIGTERM (SIGKILL after a minute); seconds until it exited."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - start
