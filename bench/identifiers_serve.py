"""Exact identifiers through the real service (issue 14): one command, a table and JSON.

    python bench/identifiers_serve.py [--seeds 14,15,16,17] [--curve detailed] [--out bench/identifiers_serve.json]

Starts ``optimem serve`` (embedded Redis in a temporary folder, default settings; the sessions on
the default curve or ``--curve``),
appends the identifier benchmark's planted conversation (``memory/lab/identifiers.py``: the longest
chitchat conversation with 72 generated identifiers as user turns) through the API, waits for its
pages to be sealed, then recalls each planted turn by number (``POST .../recall {"turn": n}``) and
checks that the identifier is in what was read back: exact read-back per tier the turn sits at
(``text`` for turns still recent), as a user of the API would get it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port  # noqa: E402
from recall_load import start_server, stop_server  # noqa: E402

from optimem.memory.lab import identifiers  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.lab.corpus import longest  # noqa: E402


def one_seed(url: str, seed: int, curve: str | None) -> dict:
    client = httpx.Client(base_url=url, timeout=300)
    session = f"ids-{seed}"
    client.post("/v1/sessions", json={"id": session, **({"curve": curve} if curve else {})}).raise_for_status()
    planted = identifiers.generate(seed)
    turns = identifiers.plant(longest()[1], planted)
    for i in range(0, len(turns), 100):
        batch = [{k: t[k] for k in ("role", "content", "time") if t.get(k)} for t in turns[i:i + 100]]
        client.post(f"/v1/sessions/{session}/turns", json={"turns": batch}).raise_for_status()
    tiers: dict[str, list[int]] = {}
    misses = []
    for item in planted:
        reply = client.post(f"/v1/sessions/{session}/recall", json={"turn": item.index})
        reply.raise_for_status()
        hit = (reply.json().get("hits") or [{}])[0]     # recall waits for sealing to settle first
        ok = identifiers.exact(item.value, hit.get("text", ""))
        counts = tiers.setdefault(hit.get("tier", "?"), [0, 0])
        counts[0] += ok
        counts[1] += 1
        if not ok:
            misses.append({"tier": hit.get("tier"), "kind": item.kind, "value": item.value, "read": hit.get("text")})
    return {"seed": seed, "tiers": tiers, "misses": misses}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="14,15,16,17")
    parser.add_argument("--curve", default=None, help="a curve preset for the sessions (default: the service's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "identifiers_serve.json")
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = start_server(Path(data), port, OPTIMEM_WORKER="1")
        try:
            results = []
            for seed in (int(s) for s in args.seeds.split(",")):
                start = time.perf_counter()
                results.append(one_seed(f"http://127.0.0.1:{port}", seed, args.curve))
                print(f"seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        finally:
            stop_server(proc)
    total: dict[str, list[int]] = {}
    print(f"{'seed':>4}  exact read-back per tier (through optimem serve)")
    for r in results:
        print(f"{r['seed']:>4}  " + "  ".join(f"{t} {c[0]}/{c[1]}" for t, c in r["tiers"].items()))
        for t, c in r["tiers"].items():
            total[t] = [a + b for a, b in zip(total.get(t, [0, 0]), c)]
    print(" all  " + "  ".join(f"{t} {c[0]}/{c[1]} ({c[0] / c[1]:.1%})" for t, c in total.items()))
    for r in results:
        for m in r["misses"]:
            print(f"  miss seed {r['seed']} {m['tier']} {m['kind']} {m['value']!r}: {m['read']!r}")
    args.out.write_text(json.dumps({"machine": machine(), "curve": args.curve, "results": results, "total": total}, ensure_ascii=False, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
