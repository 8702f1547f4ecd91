"""Calls made at about the same time from many threads, run as one batched call on a lane's thread.

A GPU model is fastest fed a batch at once, but its callers (a model worker's jobs, recall reads)
come one page at a time, each on a thread of its own. A ``Lane`` takes their items, waits a short
``window_s`` after the first for more with the same key (views of one tier, visual tokens of one
size) up to ``max_batch``, and hands them to its ``run`` function together; each caller gets its own
item's result. A lane runs one batch at a time on its own thread, so separate lanes (encodes,
whole-page decodes, one-turn decodes) never wait for each other: a long decode never holds up a
short one behind it.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any


class Lane:
    def __init__(self, name: str, run: Callable[[Hashable, list], list], max_batch: int, window_s: float = 0.005):
        self.name, self._run = name, run
        self.max_batch, self.window_s = max(1, max_batch), window_s
        self._cond = threading.Condition()
        self._pending: dict[Hashable, list[tuple[Any, Future, float]]] = {}   # key -> items, oldest key first
        self._here: list[tuple[Callable[[], Any], Future]] = []              # calls to run on this lane's thread
        self._thread: threading.Thread | None = None
        self.batches: list[tuple[Hashable, int]] = []   # (key, size) of the last batches run: tests, benchmarks

    def call(self, key: Hashable, items: list) -> list:
        """Results for ``items`` (in order), run in batches of ``key`` with other callers' items."""
        now = time.monotonic()
        futures: list[Future] = [Future() for _ in items]
        with self._cond:
            self._pending.setdefault(key, []).extend((item, f, now) for item, f in zip(items, futures))
            self._start()
            self._cond.notify()
        return [f.result() for f in futures]

    def run_here(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on this lane's thread (a warm-up that must happen where the lane runs) and return its result."""
        future: Future = Future()
        with self._cond:
            self._here.append((fn, future))
            self._start()
            self._cond.notify()
        return future.result()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"optimem-lane-{self.name}", daemon=True)
            self._thread.start()

    def _take(self) -> tuple[tuple[Callable[[], Any], Future] | None, Hashable, list[tuple[Any, Future, float]]]:
        """Wait for work: ``(call, None, [])`` for a call to run here, or ``(None, key, batch)`` for the
        oldest key's batch once full or its window is over."""
        with self._cond:
            while True:
                if self._here:
                    return self._here.pop(0), None, []
                if self._pending:
                    key = next(iter(self._pending))
                    items = self._pending[key]
                    wait = items[0][2] + self.window_s - time.monotonic()
                    if len(items) >= self.max_batch or wait <= 0:
                        batch, rest = items[:self.max_batch], items[self.max_batch:]
                        del self._pending[key]
                        if rest:
                            self._pending[key] = rest   # to the back: other keys get their turn
                        return None, key, batch
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _loop(self) -> None:
        while True:
            here, key, batch = self._take()
            if here is not None:
                fn, future = here
                try:
                    future.set_result(fn())
                except BaseException as e:  # noqa: BLE001  handed to the caller
                    future.set_exception(e)
                continue
            try:
                results = self._run(key, [item for item, _, _ in batch])
            except BaseException as e:  # noqa: BLE001  every caller of the batch gets the error
                for _, f, _ in batch:
                    f.set_exception(e)
                continue
            self.batches = (self.batches + [(key, len(batch))])[-64:]
            for (_, f, _), result in zip(batch, results):
                f.set_result(result)
