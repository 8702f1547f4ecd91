"""The forgetting-curve lab: needles land where they say, curves parse, a quick run on a real
conversation (real service, embedded Redis, the CPU reader) writes a report whose numbers add up,
and a quick calibration runs through the ``optimem`` command without the service."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from optimem.api.cli import main as optimem
from optimem.memory.lab import run as lab
from optimem.memory.service import Memory
from optimem.settings import Settings


def test_needles_are_planted_at_the_ages_they_report():
    turns = [{"role": "assistant", "content": f"turn {i}", "time": "2024-01-01T00:00:00Z"} for i in range(400)]
    planted, needles = lab.plant(turns, 6, random.Random(7))
    assert len(planted) == 406 and len(needles) == 6
    assert len({n.age for n in needles}) == 6
    for n in needles:
        assert planted[n.index]["content"] == n.text and n.value in n.text
        assert n.age == len(planted) - 1 - n.index
    again, same = lab.plant(turns, 6, random.Random(7))
    assert again == planted and same == needles  # --seed makes a run repeatable
    assert [t for t in planted if t not in [planted[n.index] for n in needles]] == turns  # order kept


def test_curves_parse_presets_json_and_names(tmp_path):
    memory = Memory(Settings(data_dir=tmp_path, worker=False))  # parsing needs the ladder, not Redis
    spec = '{"kind":"step","steps":[[0,"g1024"],[40,"v768"],[70,"gone"]]}'
    parsed = lab.parse_curves(f"default, lean={spec},{spec}", memory)
    assert [name for name, _ in parsed] == ["default", "lean", "custom3"]
    assert parsed[1][1].spec["steps"][-1] == [70, "gone"]


@pytest.mark.slow
def test_quick_lab_writes_a_report_that_adds_up(tmp_path):
    optimem(["lab", "--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("fidelity_vs_age.png", "tokens_vs_age.png", "frontier.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = report["rows"]
    curves, budgets = report["settings"]["curves"], report["settings"]["budgets"]
    assert budgets
    full = [r for r in rows if r["method"] == "full-text"]
    assert len(full) == 1
    full = full[0]
    assert full["tokens"] == full["text_tokens"] and full["fidelity"] == full["precision"] == 1.0
    assert full["needles"]["found"] == full["needles"]["total"] == len(report["conversations"][0]["needles"]) > 0
    # Every curve with and without each budget, under the rule now and the one before (drop);
    # truncation to what each curve spent, and to each budget.
    assert {(r["curve"], r["budget"]) for r in rows if r["method"] == "curve"} == \
           {(c, b) for c in curves for b in [None] + budgets}
    assert {(r["curve"], r["budget"]) for r in rows if r["method"] == "drop"} == {(c, b) for c in curves for b in budgets}
    assert {(r["curve"], r["budget"]) for r in rows if r["method"] == "truncation"} == \
           {(c, None) for c in curves} | {("", b) for b in budgets}
    by = {(r["method"], r["curve"], r["budget"]): r for r in rows}
    for c in curves:
        for b in budgets:  # fading instead of dropping never sends less of the memory
            now, before = by[("curve", c, b)], by[("drop", c, b)]
            assert now["accounting"]["pages"] >= before["accounting"]["pages"]
            assert now["accounting"]["dropped_pages"] <= before["accounting"]["dropped_pages"]

    for r in rows:
        for key in ("precision", "fidelity", "kept"):
            assert 0.0 <= r[key] <= 1.0, (r["method"], r["curve"], key)
        assert r["fidelity"] <= r["precision"] + 1e-9          # lost content only lowers fidelity
        assert r["tokens"] == pytest.approx(sum(b["tokens"] for b in r["buckets"]), abs=0.05)
        assert r["tokens"] == pytest.approx(sum(t["tokens"] for t in r["by_tier"].values()), abs=0.05)
        assert r["text_tokens"] == sum(b["text_tokens"] for b in r["buckets"])
        # Every method accounts for the whole conversation (page spans count a split turn's overhead twice).
        assert r["text_tokens"] == pytest.approx(full["text_tokens"], rel=0.03)
        assert 0 <= r["needles"]["found"] <= r["needles"]["total"] == full["needles"]["total"]
        if r["budget"] is not None:
            assert r["tokens"] <= r["budget"]
        if r["method"] == "curve":  # the lab's sums agree with the service's own accounting
            a = r["accounting"]
            assert r["tokens"] == pytest.approx(a["total_tokens"], abs=0.05)
            assert a["total_tokens"] == pytest.approx(a["recent_text_tokens"] + a["visual_tokens"], abs=0.05)
            if r["budget"] is None:                            # truncation gets no more than the curve used
                twin = next(t for t in rows if t["method"] == "truncation" and t["curve"] == r["curve"])
                assert twin["tokens"] <= r["tokens"]
        if r["method"] == "truncation":                        # cut text is exact where it is kept
            assert r["precision"] == 1.0 and r["fidelity"] == pytest.approx(r["kept"], abs=1e-3)
            flags = [x["found"] for x in sorted(r["needles"]["each"], key=lambda x: x["age"])]
            assert flags == sorted(flags, reverse=True)        # the newest kept, every older one lost

    tiers = {t["tier"]: t for t in report["tiers"]}
    ladder = [t for t in ("crops", "g1024", "v768", "mosaic4", "mosaic16") if t in tiers]
    compression = [tiers[t]["compression"] for t in ladder]
    assert compression == sorted(compression)                 # fainter tiers hold more per token
    assert tiers[ladder[1]]["precision"] >= 0.9               # the reader reads a sharp page
    assert report["cost"]["decodes"] > 0 and report["cost"]["render_seconds"] > 0
    assert report["best"]["curve"] in curves
    assert "truncation" in lab.budget_table(report)


def test_a_short_jsonl_conversation_that_never_seals_a_page(tmp_path):
    """Everything still fits the recent text: every method keeps it all, exactly, and nothing is read."""
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"role": ("user", "assistant")[i % 2], "content": f"message number {i}"})
                              for i in range(20)))
    optimem(["lab", "--jsonl", str(path), "--needles", "2", "--recent-tokens", "5000", "--curves", "default",
              "--budget", "0", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["conversations"][0]["pages"] == 0 and report["cost"]["decodes"] == 0
    assert {(r["method"], r["budget"]) for r in report["rows"]} == {("full-text", None), ("curve", None),
                                                                    ("truncation", None)}
    for r in report["rows"]:
        assert r["fidelity"] == 1.0 and r["needles"]["found"] == 2


def test_quick_calibration_reads_each_language_back_per_tier(tmp_path, monkeypatch):
    """``optimem lab calibrate --quick``: one short page per language at the default setting, read at
    the two sharpest views (seconds on the CPU reader); every row a precision in [0, 1]."""
    for name in ("OPTIMEM_FAMILY", "OPTIMEM_FONT_PX", "OPTIMEM_LINE_SPACING"):
        monkeypatch.delenv(name, raising=False)
    optimem(["lab", "calibrate", "--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "calibration.json").read_text(encoding="utf-8"))
    settings = Settings()
    assert report["reader"].startswith("rapidocr@") and report["chars"] > 0
    assert report["tiers"] == ["crops", "g1024", "v768"]       # 1024 px (crops and g1024 read alike), 768 px
    rows = report["rows"]
    assert {(r["lang"], r["tier"]) for r in rows} == {(lang, t) for lang in ("en", "zh") for t in report["tiers"]}
    for r in rows:
        assert (r["font_px"], r["line_spacing"]) == (settings.font_px, settings.line_spacing)
        assert 0.0 <= r["precision"] <= 1.0 and r["chars"] > 0 and r["tokens_per_page"] > 0
        assert r["compression"] == pytest.approx(r["tokens_per_page"] / r["visual_tokens"], abs=0.01)
    by = {(r["lang"], r["tier"]): r for r in rows}
    for lang in ("en", "zh"):
        assert by[(lang, "crops")]["precision"] == by[(lang, "g1024")]["precision"]  # one reading, two tiers
        assert by[(lang, "g1024")]["precision"] >= 0.9          # a sharp page reads back, in both languages
    assert {(d["lang"], d["tier"]) for d in report["densest"]} == set(by)
    assert report["recommended"]["font_px"] == settings.font_px


def test_calibrate_never_loads_the_service():
    """The calibration needs a renderer and a reader, not Memory, Redis or the HTTP API."""
    code = ("import sys, optimem.memory.lab.calibrate, optimem.memory.lab.corpus, optimem.memory.lab.plots; "
            "print(sorted(m for m in sys.modules if m.startswith(('optimem.memory.service', 'optimem.api'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_legibility_counts_turns_at_legible_tiers_and_the_new_rule_shows_more(tmp_path):
    """``optimem lab --legible``'s measure on a real (densified) chat, the tier precision given (the
    run measures it with the reader): a turn counts when it is text or on a page at a legible tier."""
    import random

    from optimem.memory.lab import legible

    settings = Settings(data_dir=tmp_path, worker=False, seal_background=False, recent_tokens=600)
    with Memory(settings) as memory:
        planted, needles = lab.plant(legible.dense_chat(160, 6), 4, random.Random(3))
        rep = lab.replay(memory, "dense", "d0", planted, needles)
        curves = lab.parse_curves("default", memory)
        rows = legible.measure(memory, rep, curves, [600, 1000, 100_000], {"crops", "g1024", "v768", "mosaic4"}, 4)
    by = {(r["rule"], r["budget"]): r for r in rows}
    assert {rule for rule, _ in by} == {"legible", "fade", "truncation"}
    for budget in (600, 1000, 100_000):
        now, before, trunc = by[("legible", budget)], by[("fade", budget)], by[("truncation", budget)]
        assert now["legible"] >= before["legible"] >= trunc["legible"] - 1e-9 or budget == 600
        assert now["tokens"] <= budget and now["facts"][1] == len(needles) == 4
    assert by[("legible", 100_000)]["legible"] == 1.0 and by[("legible", 100_000)]["pages_made"] == 0
    tight = by[("legible", 1000)]
    assert tight["pages_made"] >= 1 and tight["legible"] > by[("fade", 1000)]["legible"]
    # a page at a tier that is not legible does not count, though it is in the context
    assert sum(tight["turns_by_tier"].get(t, 0) for t in ("mosaic16",)) == 0 or tight["legible"] < 1
