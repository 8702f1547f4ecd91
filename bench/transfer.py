"""Export and import of a long session (issue 24): turns a second and the memory they take.

    python bench/transfer.py [--turns 100000] [--out bench/transfer.json]

One process, the embedded Redis, default settings (pages sealed past 2,000 recent tokens, just after
each append). A session of real chat is built 1,000 turns a call (the same-run baseline: the build
rate of ``make bench``), exported to a file (``memory.transfer.export``, what
``GET /v1/sessions/{id}/export`` streams) and imported as a new session (``transfer.import_file``:
the check pass, then the replay through ``Memory.append``, what ``POST .../import`` does after
spooling the body). RSS is sampled every 20 ms; the table gives the peak over what the process held
before each step. The copy's pages are compared with the original's, byte for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from optimem.memory import transfer
from optimem.memory.lab.common import machine
from optimem.memory.redis_server import EmbeddedRedis
from optimem.memory.service import Memory
from optimem.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import chat  # noqa: E402

TENANT = "bench"


class Peak:
    """The peak RSS of this process over a block, above what it held when the block began."""

    def __init__(self):
        self.process = psutil.Process()

    def __enter__(self) -> "Peak":
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def mb(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


def page_digests(memory: Memory, session: str, pages: int) -> list[str]:
    k = memory.keys(session, TENANT)
    out = []
    for first in range(0, pages, 200):
        out += [hashlib.sha256(png).hexdigest() for png in memory.store.pngs(k, range(first, min(pages, first + 200)))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--out", default="bench/transfer.json")
    args = parser.parse_args()

    turns = chat(args.turns)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        server = EmbeddedRedis(data / "redis").start()
        memory = Memory(Settings(data_dir=data, redis_url=f"unix://{server.socket}", worker=False)).open()
        try:
            memory.create_session("orig", tenant=TENANT)
            with Peak() as build_rss:
                started = time.perf_counter()
                for i in range(0, len(turns), 1000):
                    memory.append("orig", turns[i:i + 1000], tenant=TENANT)
                memory.settle("orig", tenant=TENANT)
                build_s = time.perf_counter() - started
            del turns
            path = data / "orig.jsonl"
            with Peak() as export_rss, open(path, "wb") as f:
                started = time.perf_counter()
                for line in transfer.export(memory, "orig", tenant=TENANT):
                    f.write(line)
                export_s = time.perf_counter() - started
            with Peak() as import_rss:
                started = time.perf_counter()
                copy = transfer.import_file(memory, path, "copy", tenant=TENANT)
                import_s = time.perf_counter() - started
            orig = memory.session("orig", tenant=TENANT)
            same = (orig.turns, orig.pages, orig.text_turns_from) == (copy.turns, copy.pages, copy.text_turns_from) \
                and page_digests(memory, "orig", orig.pages) == page_digests(memory, "copy", copy.pages)
            n = args.turns
            result = {"machine": machine(), "turns": n, "pages": orig.pages,
                      "file_mb": round(path.stat().st_size / 2**20, 1),
                      "build": {"s": round(build_s, 1), "turns_per_s": round(n / build_s), "rss_peak_mb": build_rss.mb},
                      "export": {"s": round(export_s, 2), "turns_per_s": round(n / export_s),
                                 "rss_peak_mb": export_rss.mb},
                      "import": {"s": round(import_s, 1), "turns_per_s": round(n / import_s),
                                 "rss_peak_mb": import_rss.mb},
                      "same_pages_byte_for_byte": same}
        finally:
            memory.close()
            server.stop()
    print(f"\n{n:,} turns, {result['pages']:,} pages, export file {result['file_mb']} MB")
    print(f"{'step':<8} {'seconds':>8} {'turns/s':>9} {'RSS peak over start':>20}")
    for step in ("build", "export", "import"):
        row = result[step]
        print(f"{step:<8} {row['s']:>8} {row['turns_per_s']:>9,} {row['rss_peak_mb']:>17} MB")
    print(f"copy's pages the same, byte for byte: {same}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
