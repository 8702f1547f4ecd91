"""The GPU benchmark's prepared device command must not fail on the day a device is lent: every row
of ``bench/gpu.py`` runs here with the tiny model on the CPU (speed figures mean nothing here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_lever_of_the_gpu_bench_runs_with_the_tiny_model(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    failed = [(r["row"], r["status"]) for r in report["rows"] if r["status"] != "ok"]
    assert not failed, failed
    levers = {r["lever"] for r in report["rows"]}
    assert {"pixels", "compile", "static cache", "one turn", "lanes", "warm-up", "views", "worker"} <= levers
    assert report["device_views_pixels_differing_from_pil"] == {"v768": 0, "mosaic4": 0, "mosaic16": 0}
    assert report["compiled_vs_eager_tokens"]["max_abs_diff"] == 0.0


def test_the_gpu_bench_dry_run_counts_the_full_model_on_any_machine():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "total 3,389.1M" in done.stdout
