"""``renderer.typeset`` in a child process, for the sealer (``memory/sealer.py``).

Laying out a page is tens of milliseconds of pure Python; on the sealer thread it holds the GIL
against the requests it runs behind (an append that overlapped a typeset took 3-13 ms instead of
0.8). The child (``python -m optimem.memory.typesetter``, started on first use) takes pickled
``(turns, layout, full_only)`` frames on stdin and answers with the pages on stdout; it exits when
its stdin closes, so it never outlives the process that started it. One call at a time; if the
child dies it is started again once, then typesetting falls back to this process (slower for the
requests beside it, never a lost seal).
"""
from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import threading
from typing import IO, Any

from optimem import renderer

log = logging.getLogger("optimem.typesetter")
FRAME = struct.Struct("!Q")


def send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME.pack(len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        raise EOFError("the typesetter closed its pipe")
    size = FRAME.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the typesetter closed its pipe mid-answer")
    return pickle.loads(data)


class Typesetter:
    """Callable like ``renderer.typeset``; the work happens in the child process."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def __call__(self, turns: list[renderer.TurnText], layout: renderer.Layout,
                 full_only: bool = False) -> list[renderer.Page]:
        with self._lock:
            for _ in range(2):
                try:
                    to_child, from_child = self._pipes()
                    send(to_child, (turns, layout, full_only))
                    ok, result = receive(from_child)
                except (OSError, EOFError, pickle.PickleError):
                    log.warning("the typesetter process failed; starting it again", exc_info=True)
                    self._stop()
                    continue
                if not ok:
                    raise result          # the renderer's own error, raised here as if in-process
                return result
        log.warning("typesetting in-process: the typesetter process keeps failing")
        return renderer.typeset(turns, layout, full_only)

    def start(self) -> None:
        """Start the child now (it imports the renderer and loads fonts), so the first seal does
        not pay for that while a read may be waiting for it."""
        with self._lock:
            self._started()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen([sys.executable, "-m", "optimem.memory.typesetter"],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self._child

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        """The running child's stdin and stdout (started if need be)."""
        child = self._started()
        if child.stdin is None or child.stdout is None:   # never: both are opened as PIPE above
            raise OSError("the typesetter process has no pipes")
        return child.stdin, child.stdout

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            try:
                if child.stdin is not None:
                    child.stdin.close()     # the child's loop ends at EOF
                child.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The child's loop: typeset each request until stdin closes."""
    while True:
        try:
            turns, layout, full_only = receive(inp)
        except EOFError:
            return
        answer: tuple[bool, list[renderer.Page] | Exception]
        try:
            answer = (True, renderer.typeset(turns, layout, full_only))
        except Exception as exc:  # noqa: BLE001  sent back and raised in the parent
            answer = (False, exc)
        send(out, answer)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
