"""Crash: kill -9 the server, its embedded redis-server, or both, at random points during appends;
restart; is every acknowledged turn still there?

    python bench/crash.py [--trials 20] [--seed 7] [--out bench/crash.json]

One data folder for every trial (each restart adopts what the last one left). Per trial: start
``optimem serve`` (worker on), 4 clients append real turns (``longest()``; 1, 5 or 20 turns a call,
so seals happen mid-burst) to their own sessions, and after a random 0.3-3 s the victim is killed
with SIGKILL: the server (trials 0, 3, 6, ...), the embedded redis-server (1, 4, ...) or both (2, 5, ...).
When only Redis died the server is stopped (SIGTERM) as an operator would. Then the service is
restarted and each session checked in-process: it holds at least the acknowledged turns, and every
stored turn's text is covered exactly once, by sealed pages and then by the text still kept.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port  # noqa: E402
from recall_load import start_server, stop_server  # noqa: E402

from optimem.memory.lab.corpus import longest  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402
from optimem.memory.store import SessionKeys  # noqa: E402
from optimem.settings import Settings  # noqa: E402

CLIENTS = 4
BATCH = (1, 5, 20, 1)


def lost_or_broken(memory: Memory, sid: str, acked: int, conversation: list[dict]) -> list[str]:
    """Problems with one session: fewer turns than acknowledged, or a turn's text not covered once."""
    k = SessionKeys("default", sid)
    try:
        stored = memory.store.meta(k).turns
    except Exception as exc:  # noqa: BLE001
        return [f"{sid}: {exc}"]
    problems = [f"{sid}: {stored} turns stored < {acked} acknowledged"] if stored < acked else []
    covered: dict[int, list] = {i: [] for i in range(stored)}
    for page in memory.store.pages(k):
        for span in page.turns:
            covered.setdefault(span["index"], []).append((span["start"], span["end"]))
    for turn in memory.store.text_turns(k):
        covered.setdefault(turn.index, []).append((turn.start, len(turn.content)))
    for index, spans in covered.items():
        spans.sort()
        want = len(conversation[index % len(conversation)]["content"])
        ok = spans and spans[0][0] == 0 and all(b == c for (_, b), (c, _) in zip(spans, spans[1:])) \
            and spans[-1][1] == want
        if not ok:
            problems.append(f"{sid}: turn {index} spans {spans[:4]} (length {want})")
    return problems


def trial(data_dir: Path, n: int, rng: random.Random, acked: dict[str, int], conversation: list[dict]) -> dict:
    victim = ("server", "redis", "both")[n % 3]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data_dir, port, OPTIMEM_WORKER="1", OPTIMEM_RECENT_TOKENS="300")
    stop = threading.Event()
    calls = {"ok": 0, "failed": 0}

    def client(i: int):
        sid = f"c{i}"
        with httpx.Client(base_url=url, timeout=30) as c:
            if c.get(f"/v1/sessions/{sid}").status_code == 404:
                c.post("/v1/sessions", json={"id": sid})
            while not stop.is_set():
                first = acked[sid]
                size = BATCH[i % len(BATCH)]
                turns = [conversation[(first + j) % len(conversation)] for j in range(size)]
                try:
                    got = c.post(f"/v1/sessions/{sid}/turns", json={"turns": turns})
                except httpx.TransportError:
                    calls["failed"] += 1
                    return
                if got.status_code != 200:
                    calls["failed"] += 1
                    return
                body = got.json()
                assert body["first_index"] == first, (sid, body, first)   # one writer per session
                acked[sid] = first + size
                calls["ok"] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    delay = rng.uniform(0.3, 3.0)
    time.sleep(delay)
    redis_pid = int((data_dir / "redis" / "redis.pid").read_text().strip())
    if victim in ("server", "both"):
        os.kill(proc.pid, signal.SIGKILL)
    if victim in ("redis", "both"):
        os.kill(redis_pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(timeout=40)
    if victim == "redis":
        stop_server(proc)
    proc.wait(timeout=60)
    if victim == "server":   # the redis-server lives on and is adopted by the next start
        pass
    # restart, then check in-process against the restarted store
    port = free_port()
    proc = start_server(data_dir, port, OPTIMEM_WORKER="0", OPTIMEM_RECENT_TOKENS="300")
    try:
        memory = Memory(Settings(data_dir=data_dir, recent_tokens=300, worker=False)).open()
        try:
            problems = [p for sid in acked for p in lost_or_broken(memory, sid, acked[sid], conversation)]
            stored = {sid: memory.store.meta(SessionKeys("default", sid)).turns for sid in acked}
        finally:
            memory.close(stop_server=False)
    finally:
        stop_server(proc)
    for sid, count in stored.items():   # an append that landed but whose answer was lost counts as sent
        acked[sid] = max(acked[sid], count)
    return {"trial": n, "killed": victim, "after_s": round(delay, 2), "appends_ok": calls["ok"],
            "acknowledged_turns_total": sum(acked.values()), "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="bench/crash.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    conversation = longest()[1]
    acked = {f"c{i}": 0 for i in range(CLIENTS)}
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="optimem-crash-") as tmp:
        for n in range(args.trials):
            row = trial(Path(tmp), n, rng, acked, conversation)
            rows.append(row)
            print(f"trial {n:>2}: killed {row['killed']:<6} after {row['after_s']:>4} s, appends ok "
                  f"{row['appends_ok']:>4}, acknowledged turns so far {row['acknowledged_turns_total']:>6}, "
                  f"problems {len(row['problems'])}", flush=True)
    lost = sum(len(r["problems"]) for r in rows)
    out = {"trials": rows, "trials_n": len(rows), "acknowledged_turns": sum(acked.values()), "problems": lost,
           "killed": {v: sum(r["killed"] == v for r in rows) for v in ("server", "redis", "both")},
           "seconds": round(time.monotonic() - started, 1),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}
    print(f"{len(rows)} trials ({out['killed']}), {out['acknowledged_turns']} acknowledged turns, "
          f"{lost} lost or broken, {out['seconds']} s")
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "trials"}))


if __name__ == "__main__":
    main()
