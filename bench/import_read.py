"""Reads right after a bulk import: do they wait for the seal backlog? (issue 25 item 3)

    python bench/import_read.py [--turns 20000] [--recalls 40] [--out bench/import_read.json]

Starts ``optimem serve`` (embedded Redis in a temporary folder, background sealing as by default,
no in-process worker), imports ``--turns`` turns into one session through the HTTP API, 1,000 a
call, each turn carrying a word of its own (``marker<n>``), then at once recalls ``--recalls``
of those words one after another (cold: the first ask of each), then the same words again (warm),
and last one GET of the session's context. Each recall must find its turn. Prints a table and
writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from optimem.memory.lab.corpus import longest

from recall_load import pct, start_server, stop_server, free_port   # noqa: E402  (bench/ is on sys.path)


def turns_for(n: int) -> list[dict]:
    """``n`` turns of the longest real conversation (repeated as needed), turn i carrying ``marker<i>``."""
    chat = longest()[1]
    return [{"role": chat[i % len(chat)]["role"], "content": f"{chat[i % len(chat)]['content']} marker{i}"}
            for i in range(n)]


def seconds(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": round(pct(values, 0.5), 3), "p95_s": round(pct(values, 0.95), 3),
            "max_s": round(max(values), 3), "mean_s": round(statistics.fmean(values), 3)}


def recalls(c: httpx.Client, session: str, wanted: list[int]) -> tuple[list[float], int]:
    times, found = [], 0
    for n in wanted:
        start = time.perf_counter()
        got = c.post(f"/v1/sessions/{session}/recall", json={"query": f"marker{n}", "limit": 3})
        times.append(time.perf_counter() - start)
        got.raise_for_status()
        found += any(h["turn"] == n for h in got.json()["hits"])
    return times, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=20_000)
    ap.add_argument("--recalls", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).with_name("import_read.json")))
    args = ap.parse_args()

    turns = turns_for(args.turns)
    wanted = random.Random(7).sample(range(args.turns), min(args.recalls, args.turns))
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = start_server(Path(data), port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as c:
                c.post("/v1/sessions", json={"id": "big", "curve": "keep"}).raise_for_status()
                start, calls = time.perf_counter(), []
                for i in range(0, len(turns), 1000):
                    t = time.perf_counter()
                    c.post("/v1/sessions/big/turns", json={"turns": turns[i:i + 1000]}).raise_for_status()
                    calls.append(time.perf_counter() - t)
                imported = time.perf_counter() - start
                cold, cold_found = recalls(c, "big", wanted)
                warm, warm_found = recalls(c, "big", wanted)
                t = time.perf_counter()
                c.get("/v1/sessions/big/context").raise_for_status()
                context_s = time.perf_counter() - t
                pages_then = c.get("/v1/sessions/big").json()["pages"]
        finally:
            stop_server(proc)
    result = {"turns": args.turns, "import_s": round(imported, 1), "append_call": seconds(calls),
              "recall_cold": seconds(cold), "recall_warm": seconds(warm),
              "found_cold": f"{cold_found}/{len(wanted)}", "found_warm": f"{warm_found}/{len(wanted)}",
              "context_s": round(context_s, 3), "pages_after_reads": pages_then,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
    print(f"{'turns':>7} {'import s':>9} {'call p95':>9} {'cold p50':>9} {'cold p95':>9} {'cold max':>9} "
          f"{'warm p50':>9} {'warm p95':>9} {'found':>7} {'context s':>10}")
    print(f"{args.turns:>7} {result['import_s']:>9} {result['append_call']['p95_s']:>9} "
          f"{result['recall_cold']['p50_s']:>9} {result['recall_cold']['p95_s']:>9} "
          f"{result['recall_cold']['max_s']:>9} {result['recall_warm']['p50_s']:>9} "
          f"{result['recall_warm']['p95_s']:>9} {result['found_cold']:>7} {result['context_s']:>10}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
