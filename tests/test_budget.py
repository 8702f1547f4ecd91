"""The budget rule of ``context.assemble``: pages fade harder to fit, oldest first, and are dropped
only when nothing fainter fits; mosaic canvases cost once; recent text first unless the caller keeps
room for memory. Synthetic pages and turns (fast), plus one check through the HTTP API."""
from __future__ import annotations

import itertools

import pytest

from optimem.memory import context, curves
from optimem.memory.context import PlacedPage, assemble, fade_to_fit, memory_tokens
from optimem.memory.lab.corpus import longest
from optimem.memory.store import PageRecord, TurnRecord
from optimem.model.tiers import DEEPSEEK_OCR, DEEPSEEK_OCR2, OPENAI_TILES, QWEN25_VL

LADDER = DEEPSEEK_OCR2
TURNS_PER_PAGE = 50


def pages(n: int) -> list[PageRecord]:
    return [PageRecord(page=i, first_turn=i * TURNS_PER_PAGE, first_offset=0, last_turn=(i + 1) * TURNS_PER_PAGE - 1,
                       end_offset=0, sealed_at_turn=0, sealed_time=0.0, first_time="", last_time="", text_tokens=1000)
            for i in range(n)]


def turns(n: int, first: int, tokens: int = 100) -> list[TurnRecord]:
    return [TurnRecord(first + i, "user", "x", "", 0, tokens) for i in range(n)]


def placed(n: int, curve, ladder=LADDER, recent: int = 10) -> tuple[list[PlacedPage], int]:
    count = n * TURNS_PER_PAGE + recent
    return context.place(pages(n), curves.load(curve, ladder), ladder, count), count


def order(ladder, built) -> list[int]:
    return [ladder.index(p.tier.name) for p in built.pages]


CURVES = ["default", "keep", "gentle", "power", "aggressive",
          {"kind": "step", "steps": [[0, "g1024"], [120, "v768"], [300, "mosaic4"], [700, "mosaic16"]]},
          {"kind": "step", "steps": [[0, "mosaic4"]]}, {"kind": "step", "steps": [[0, "v768"], [200, "gone"]]}]


CASES = [(LADDER, c) for c in CURVES] + [(ladder, c) for ladder in (DEEPSEEK_OCR, QWEN25_VL, OPENAI_TILES)
                                         for c in CURVES if isinstance(c, str)]  # presets move to every ladder


@pytest.mark.parametrize("ladder,curve", CASES, ids=lambda x: getattr(x, "family", str(x)))
def test_the_rule_holds_at_every_budget(ladder, curve):
    n = 23
    place, count = placed(n, curve, ladder)
    recent = turns(10, count - 10)
    views = context.readable(ladder)
    free = assemble(recent, place)
    assert free.accounting.pages_faded_by_budget == free.accounting.dropped_pages == 0
    for budget in itertools.chain(range(0, 1200, 37), range(1200, 25_000, 411)):
        built = assemble(recent, place, budget, ladder=ladder)
        a = built.accounting
        kept = [p.record.page for p in built.pages]
        visible = [p for p in place if not p.tier.gone]
        assert a.total_tokens <= budget + 1e-6                                   # never over the budget
        assert a.visual_tokens == pytest.approx(memory_tokens([(p.record.page, p.tier) for p in built.pages]), abs=0.01)
        assert a.visual_tokens == pytest.approx(sum(p.charge for p in built.pages), abs=0.05)
        assert kept == [p.record.page for p in visible][a.dropped_pages:]        # only the oldest dropped
        assert a.pages_forgotten == len(place) - len(visible)
        idx = order(ladder, built)
        assert idx == sorted(idx, reverse=True)                                  # older never sharper
        curve_tier = {p.record.page: p.tier for p in visible}
        for p in built.pages:                                                    # never sharper than the curve
            assert p.curve_tier == curve_tier[p.record.page]
            assert ladder.index(p.tier.name) >= ladder.index(p.curve_tier.name)
        assert a.pages_faded_by_budget == sum(p.tier != p.curve_tier for p in built.pages)
        room = budget - a.recent_text_tokens
        if a.pages_faded_by_budget:                                              # fading only when needed
            assert memory_tokens([(p.record.page, p.curve_tier) for p in built.pages]) > room
        if a.dropped_pages:                                                      # dropped: nothing fainter fits
            one_more = visible[a.dropped_pages - 1:]
            assert fade_to_fit(one_more, views, room) is None
            assert memory_tokens([(p.record.page, views[-1]) for p in one_more]) > room


def test_a_budget_that_used_to_drop_pages_now_fades_them():
    """The issue's case: ~2,500 tokens of recent text, a 4k budget, ten pages the curve keeps at crops
    (833 each): the old rule sent one page; now all ten go, at the sharpest tier that fits them all."""
    place, count = placed(10, "keep")
    recent = turns(25, count - 25)
    built = assemble(recent, place, 4000)
    a = built.accounting
    assert a.recent_text_tokens == 2500 and a.pages == 10 and a.dropped_pages == 0
    assert a.pages_faded_by_budget == 10 and {p.tier.name for p in built.pages} == {"v768"}
    assert a.total_tokens == 2500 + 10 * 145
    # with 300 fewer tokens, fading goes on one page at a time, oldest first: older pages go to mosaic4
    built = assemble(recent, place, 3700)
    tiers = [p.tier.name for p in built.pages]
    assert built.accounting.pages == 10 and tiers[0] == "mosaic4" and tiers[-1] == "v768"
    assert built.accounting.total_tokens <= 3700


def test_fading_goes_one_tier_at_a_time_oldest_first():
    place, count = placed(6, "keep")                      # crops: 833 a page
    g, v = LADDER["g1024"].tokens, LADDER["v768"].tokens
    # room for one page of six at g1024 short of all six at g1024: the oldest five fade, the newest stays at crops
    built = assemble([], place, int(5 * g + LADDER["crops"].tokens))
    assert [p.tier.name for p in built.pages] == ["g1024"] * 5 + ["crops"]
    # every page at g1024 before any goes to v768; then v768 from the oldest
    built = assemble([], place, int(4 * g + 2 * v))
    assert [p.tier.name for p in built.pages] == ["v768"] * 2 + ["g1024"] * 4


def test_mosaic_canvases_cost_once_and_a_part_canvas_costs_whole():
    m4, m16 = LADDER["mosaic4"], LADDER["mosaic16"]
    place, _ = placed(5, {"kind": "step", "steps": [[0, "mosaic4"]]})
    free = assemble([], place)
    assert free.accounting.visual_tokens == 2 * m4.canvas_tokens             # 4 + 1 pages: two canvases
    assert [p.charge for p in free.pages] == [m4.canvas_tokens / 4] * 4 + [m4.canvas_tokens]
    # one token short of two canvases: all five share one mosaic16 canvas rather than losing one
    built = assemble([], place, int(2 * m4.canvas_tokens) - 1)
    assert built.accounting.pages == 5 and {p.tier for p in built.pages} == {m16}
    assert built.accounting.visual_tokens == m16.canvas_tokens
    # a canvas can't be split: under one canvas's cost nothing fits at a mosaic tier, so every page goes
    built = assemble([], place, int(m16.canvas_tokens) - 1)
    assert built.accounting.pages == 0 and built.accounting.dropped_pages == 5


def test_a_page_drops_only_when_nothing_fainter_fits_even_when_fainter_costs_more():
    """A lone page at g1024 (257) under 200 tokens: v768 (145) fits, so it fades there. Under 100,
    mosaic4 and mosaic16 still cost a whole canvas (257): nothing fits, so it is dropped."""
    place, _ = placed(1, {"kind": "step", "steps": [[0, "g1024"]]})
    assert [p.tier.name for p in assemble([], place, 200).pages] == ["v768"]
    dropped = assemble([], place, 100)
    assert dropped.pages == [] and dropped.accounting.dropped_pages == 1


def test_recent_text_first_unless_room_is_kept_for_memory():
    place, count = placed(8, "detailed")
    recent = turns(30, count - 30)                            # 3,000 tokens of recent text
    full = assemble(recent, place, 3000)
    assert full.accounting.recent_text_tokens == 3000 and full.pages == []
    assert full.accounting.dropped_pages == 8                 # no room left at all
    kept = assemble(recent, place, 3000, min_memory_tokens=600)
    a = kept.accounting
    assert a.min_memory_tokens == 600 and a.memory_tokens_reserved == 600
    assert a.recent_text_tokens == 2400 and a.dropped_turns == 6  # the oldest turns make room
    assert [t.index for t in kept.turns] == [t.index for t in recent[6:]]
    assert a.pages == 8 and a.visual_tokens <= 600 and a.total_tokens <= 3000
    # no more is kept than the memory needs at its curve tiers; the rest goes back to text
    need = memory_tokens([(p.record.page, p.tier) for p in place])
    roomy = assemble(recent, place, 3000, min_memory_tokens=100_000).accounting
    assert roomy.memory_tokens_reserved == pytest.approx(need, abs=0.01) and roomy.pages_faded_by_budget == 0
    assert roomy.recent_text_tokens == 3000 - 100 * -(-need // 100)
    # the reserve never outgrows the budget
    tiny = assemble(recent, place, 50, min_memory_tokens=10_000).accounting
    assert tiny.recent_text_tokens == 0 and tiny.total_tokens <= 50


def test_old_rule_is_kept_in_the_lab_for_the_baseline():
    from optimem.memory.lab.run import assemble_dropping

    place, count = placed(10, "keep")
    recent = turns(25, count - 25)
    old = assemble_dropping(recent, place, 4000)
    assert old.accounting.pages == 1 and old.accounting.dropped_pages == 9


@pytest.fixture(scope="module")
def chat():
    return longest()[1]


def test_budget_through_the_api_fades_pages_it_used_to_drop(api, chat):
    assert api.post("/v1/sessions", json={"id": "b1", "curve": "keep"}).status_code == 201
    assert api.post("/v1/sessions/b1/turns", json={"turns": chat[:300]}).status_code == 200
    ctx = api.get("/v1/sessions/b1/context").json()
    a, n = ctx["accounting"], len(ctx["pages"])
    assert n >= 2 and all(p["tier"] == p["curve_tier"] == "crops" for p in ctx["pages"])
    budget = a["recent_text_tokens"] + 833                    # the old rule: one page, the rest dropped
    tight = api.get("/v1/sessions/b1/context", params={"budget": budget}).json()
    t = tight["accounting"]
    assert t["pages"] == n and t["dropped_pages"] == 0 and t["pages_faded_by_budget"] >= n - 1
    assert t["total_tokens"] <= budget and t["recent_text_tokens"] == a["recent_text_tokens"]
    tiers = [LADDER.index(p["tier"]) for p in tight["pages"]]
    assert tiers == sorted(tiers, reverse=True) and all(p["curve_tier"] == "crops" for p in tight["pages"])
    images = api.get("/v1/sessions/b1/context", params={"budget": budget, "format": "openai"}).json()
    assert images["accounting"] == t
    # a budget that recent text alone fills: text beyond the floor yields to legible pages (issue 22)
    small = a["recent_text_tokens"]
    yielded = api.get("/v1/sessions/b1/context", params={"budget": small}).json()
    y = yielded["accounting"]
    assert y["pages"] == n + y["pages_made"] and y["recent_text_tokens"] < small and y["total_tokens"] <= small
    assert y["recent_floor_turns"] == 4 and len(yielded["turns"]) >= 4
    assert all(LADDER.index(p["tier"]) <= LADDER.index("mosaic4") for p in yielded["pages"])
    kept = api.get("/v1/sessions/b1/context", params={"budget": small, "min_memory_tokens": 400}).json()["accounting"]
    assert kept["pages"] >= 1 and kept["total_tokens"] <= small and kept["memory_tokens_reserved"] == 400
    assert api.get("/v1/sessions/b1/context", params={"min_memory_tokens": -1}).status_code == 422
