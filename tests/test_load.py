"""Recalls can't starve the service: 45 recalls waiting on unread pages hold none of FastAPI's ~40
request threads, so /healthz and appends stay fast, and every recall answers within its read budget.

bench/recall_load.py is the full figure (45 recalls on the 21-page longest conversation, 60 s budget);
this runs the same code smaller: ``optimem serve`` in a subprocess, the clients here, a short budget.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "recall_load.py"
RECALLS = 45
READ_S = 4


def recall_load():
    spec = importlib.util.spec_from_file_location("recall_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_45_recalls_on_unread_pages_leave_healthz_and_appends_fast():
    before = os.getloadavg()[0]
    out = recall_load().run(recalls=RECALLS, turns=900, read_s=READ_S)
    h, e, a, r = out["healthz"], out["healthz_external"], out["appends"], out["recall_s"]
    print(f"\npages={out['pages']} recalls={out['answered']}/{RECALLS} recall s={r} healthz n={h['n']} "
          f"p50={h['p50_ms']} p99={h['p99_ms']} max={h['max_ms']} ms (own process: p50={e['p50_ms']} "
          f"max={e['max_ms']} ms) appends p99={a['p99_ms']} ms sigterm={out['sigterm_exit_s']} s load={before:.1f}")
    assert out["pages"] >= 10
    assert out["answered"] == RECALLS and not out["errors"]
    assert r["max"] < READ_S + 2.5                       # within the read budget, plus answering it
    assert h["p50_ms"] < 100 and h["max_ms"] < 2000      # never queued behind the recalls (was 109 s)
    assert e["n"] > 0 and e["p50_ms"] < 100 and e["max_ms"] < 2000
    assert a["max_ms"] < 2000
    # The p99 < 100 ms target is a benchmark figure (bench/recall_load.py), not a unit test: on a
    # 2-core machine it depends on what else runs (681 ms once before the reader loaded at start,
    # recalls had threads of their own from the start and GC skipped the loaded modules).
    assert out["sigterm_exit_s"] < 10
