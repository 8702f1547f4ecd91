"""Forgetting one turn on a sealed page (issue 24): how long ``Memory.forget`` takes.

    python bench/forget.py [--turns 10000] [--forgets 10] [--out bench/forget.json]

One process, the embedded Redis, default settings. A session of real chat is built; for each of
``--forgets`` sealed pages, one of its turns is first read back at two tiers (the default curve's
mosaic4, then g1024: the decoded-text caches hold it), then forgotten: the turn's text leaves the
source and the index, the page's line boxes are painted over (PNG decoded, drawn, encoded again),
its line texts, decoded text and visual tokens are dropped, in one transaction (the Redis file
rewrite that follows runs in the background and is timed apart).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from optimem.memory.lab.common import machine
from optimem.memory.redis_server import EmbeddedRedis
from optimem.memory.service import Memory
from optimem.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import chat  # noqa: E402

TENANT = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10_000)
    parser.add_argument("--forgets", type=int, default=10)
    parser.add_argument("--out", default="bench/forget.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        server = EmbeddedRedis(data / "redis").start()
        memory = Memory(Settings(data_dir=data, redis_url=f"unix://{server.socket}", worker=False)).open()
        try:
            turns = chat(args.turns)
            memory.create_session("s", tenant=TENANT)
            for i in range(0, len(turns), 1000):
                memory.append("s", turns[i:i + 1000], tenant=TENANT)
            memory.settle("s", tenant=TENANT)
            pages = memory.pages("s", tenant=TENANT)
            step = max(1, len(pages) // args.forgets)
            seconds, rewrites = [], []
            for page in pages[::step][:args.forgets]:
                turn = page.turns[len(page.turns) // 2]["index"]
                memory.recall("s", turn=turn, tenant=TENANT)                       # read at mosaic4
                memory.reader.decoded(memory.keys("s", TENANT), page.page, memory.ladder["g1024"])  # and g1024
                started = time.perf_counter()
                memory.forget("s", turn, tenant=TENANT)
                seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                memory.rewrite.wait(600)
                rewrites.append(time.perf_counter() - started)
            info = memory.session("s", tenant=TENANT)
        finally:
            memory.close()
            server.stop()
    result = {"machine": machine(), "turns": args.turns, "pages": info.pages, "forgets": len(seconds),
              "forget_s": {"p50": round(statistics.median(seconds), 3), "max": round(max(seconds), 3)},
              "file_rewrite_s_after": {"p50": round(statistics.median(rewrites), 2), "max": round(max(rewrites), 2)}}
    print(f"\n{args.turns:,} turns, {info.pages:,} pages; {len(seconds)} turns forgotten, each on its own sealed page")
    print(f"forget (one transaction, page repainted):  p50 {result['forget_s']['p50']:.3f} s, "
          f"max {result['forget_s']['max']:.3f} s")
    print(f"then the AOF rewrite and snapshot finished: p50 {result['file_rewrite_s_after']['p50']} s, "
          f"max {result['file_rewrite_s_after']['max']} s (background)")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
