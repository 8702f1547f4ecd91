"""The hot path grows with what changes, not with history (issue 12): context reads the page index
and only the full records of the pages it shows; re-tiering reads only pages that crossed a tier
boundary; read-ahead goes out only where it pays (issue 9 item 4); older sessions without the index
still work (it is built on first use)."""
from __future__ import annotations

import pytest

from optimem.memory import context, curves
from optimem.memory.lab.corpus import longest
from optimem.memory.store import JOBS, SessionKeys, Store
from optimem.model.tiers import DEEPSEEK_OCR2, OPENAI_TILES

pytestmark = pytest.mark.usefixtures("leave_no_jobs")
STEEP = {"kind": "step", "steps": [[0, "crops"], [30, "g1024"], [70, "mosaic4"], [120, "gone"]]}


@pytest.mark.parametrize("ladder", [DEEPSEEK_OCR2, OPENAI_TILES])
@pytest.mark.parametrize("spec", ["default", "detailed", "keep", "gentle", "exponential", "aggressive", "power",
                                  STEEP, {"kind": "step", "steps": [[0, "g1024"], [2.5, "v768"], [7, "gone"]]}])
def test_boundaries_give_every_whole_age_its_tier(spec, ladder):
    if isinstance(spec, dict) and ladder is not DEEPSEEK_OCR2:
        pytest.skip("custom step curves name DeepSeek-OCR 2 tiers")
    curve = curves.load(spec, ladder)
    bounds = context.boundaries(curve, ladder)
    ages = list(range(0, 3000)) + [4999, 5000, 5001, 20_000, 10**6]
    for age in ages:
        expected = curve.tier(age, ladder)
        got = [tier for start, tier in bounds if start <= age][-1]
        assert got == expected, (age, got.name, expected.name)
    gone = context.gone_age(curve, ladder)
    assert gone is None or curve.tier(gone, ladder).gone and not curve.tier(gone - 1, ladder).gone


def full_read(memory, session, tenant, budget):
    """The context path before the page index: every page record placed, then assembled."""
    s = memory._open(session, tenant)
    placed = context.place(memory.store.pages(s.k), s.curve, memory.ladder, s.meta.turns)
    making = context.Making(memory.settings.recent_floor_turns, context.made_pages(   # Memory.context's rule
        s.k.tag, memory.layout, memory.settings.tokenizer, s.curve, memory.ladder, s.meta.turns))
    built = context.assemble(memory.store.text_turns(s.k), placed, budget, ladder=memory.ladder, making=making)
    return context.raw(s.k, s.meta, memory.ladder, built, None).model_dump()


@pytest.fixture
def leave_no_jobs(memory, tenant):
    """These tests keep every job (jobs_max 0) on the shared stream: take this tenant's out after."""
    yield
    r = memory.store.r
    mine = [entry for entry, f in r.xrange(JOBS) if f[b"tenant"].decode() == tenant]
    for i in range(0, len(mine), 500):
        r.xdel(JOBS, *mine[i:i + 500])


@pytest.fixture(scope="module")
def chat():
    return longest()[1]


def test_context_from_the_index_is_the_full_read(memory, tenant, chat, monkeypatch):
    for name, curve in [("steep", STEEP), ("default", "default"), ("gentle", "gentle")]:
        memory.create_session(name, curve=curve, tenant=tenant)
        for i in range(0, 600, 50):
            memory.append(name, chat[i:i + 50], tenant=tenant)
    k = SessionKeys(tenant, "steep")
    total = memory.store.seal_state(k)[1]
    assert total >= 6
    for name in ("steep", "default", "gentle"):
        for budget in (None, 0, 300, 1200, 8000):
            assert memory.context(name, budget=budget, tenant=tenant).model_dump() == \
                full_read(memory, name, tenant, budget), (name, budget)
    # reads no full page record at all: the page index has what the formats show
    asked: list[list[int]] = []
    real = Store.pages_of

    def pages_of(self, k, pages):
        asked.append(list(pages))
        return real(self, k, pages)

    monkeypatch.setattr(Store, "pages", lambda *a: pytest.fail("context read every page record"))
    monkeypatch.setattr(Store, "pages_of", pages_of)
    ctx = memory.context("steep", budget=1200, tenant=tenant)
    assert asked == [] and ctx.pages
    assert ctx.accounting.pages_forgotten >= 1 and len(ctx.pages) < total


def test_an_older_session_without_the_index_gets_one(memory, tenant, chat):
    memory.create_session("old", curve=STEEP, tenant=tenant)
    memory.append("old", chat[:400], tenant=tenant)
    k = SessionKeys(tenant, "old")
    before = memory.context("old", budget=2000, tenant=tenant).model_dump()
    r = memory.store.r
    pages = r.hlen(k.pages)
    r.delete(k.by_turn, k.page_info, k.retiered)   # as a session sealed before the index existed
    assert memory.context("old", budget=2000, tenant=tenant).model_dump() == before
    assert r.zcard(k.by_turn) == r.hlen(k.page_info) == pages
    r.hdel(k.page_info, 0)
    r.zrem(k.by_turn, 0)                            # a partial index is completed too
    assert memory._tier_now(k, 0).gone
    assert r.zcard(k.by_turn) == pages
    memory.append("old", chat[400:460], tenant=tenant)
    assert memory.context("old", budget=2000, tenant=tenant).pages
    assert [p.page for p in memory.pages("old", tenant=tenant)] == list(range(memory.store.seal_state(k)[1]))
    memory.delete_session("old", tenant=tenant)
    assert not r.exists(k.by_turn, k.page_info, k.retiered)


def queued_jobs(r, session) -> list[tuple[str, int, str]]:
    out = []
    for _, f in r.xrange(JOBS):
        if f[b"session"].decode() == session:
            out.append((f[b"kind"].decode(), int(f[b"page"]), f[b"tier"].decode()))
    return out


def test_retier_reads_only_pages_that_crossed_and_sends_what_a_full_pass_would(memory, tenant, chat, monkeypatch):
    """Forget-for-real, turn by turn: after every re-tier, each page the curve keeps is queued at
    the tier its age gives it now (what comparing every page would send), gone pages are not, and
    after the first pass no re-tier reads the whole index or any page record."""
    memory.store.jobs_max = 0
    memory.create_session("ffr", curve=STEEP, keep_source=False, tenant=tenant)
    k = SessionKeys(tenant, "ffr")
    memory.append("ffr", chat[:150], tenant=tenant)
    whole: list[int] = []
    real = Store.page_entries

    def page_entries(self, key, after_turn=None):
        if after_turn is None and key.session == "ffr":
            whole.append(1)
        return real(self, key, after_turn)

    monkeypatch.setattr(Store, "page_entries", page_entries)
    monkeypatch.setattr(Store, "pages", lambda *a: pytest.fail("retier read every page record"))
    from optimem.memory import service
    checked = 0
    for i in range(150, 420):
        got = memory.add("ffr", chat[i]["content"], chat[i]["role"], tenant=tenant)
        if got.sealed_pages or (i + 1) % service.RETIER_EVERY == 0:
            s = memory._open("ffr", tenant)
            now = {p.record.page: p.tier.name for p in context.place(
                memory.store.page_entries_of(k, range(memory.store.seal_state(k)[1])), s.curve, memory.ladder,
                s.meta.turns)}
            queued = memory.store.queued_tiers(k)
            assert {p: t for p, t in queued.items() if now[p] != "gone"} == \
                {p: t for p, t in now.items() if t != "gone"}, i
            checked += 1
    assert checked > 20 and not whole
    sent = queued_jobs(memory.store.r, "ffr")
    assert sent and {kind for kind, _, _ in sent} == {"decode"}   # the CPU reader makes no visual tokens
    assert len(sent) == len(set(sent))                               # no page sent twice at one tier


def test_read_ahead_only_where_it_pays(memory, tenant, chat, monkeypatch):
    memory.store.jobs_max = 0
    memory.create_session("keep", tenant=tenant)                        # keep-source, CPU reader
    memory.create_session("forget", keep_source=False, tenant=tenant)
    memory.append("keep", chat[:300], tenant=tenant)
    memory.append("forget", chat[:300], tenant=tenant)
    assert memory.session("keep", tenant=tenant).pages >= 2
    assert queued_jobs(memory.store.r, "keep") == []                     # found by its source index
    assert {kind for kind, _, _ in queued_jobs(memory.store.r, "forget")} == {"decode"}
    monkeypatch.setattr(type(memory), "encodes", lambda self: True)     # a backend with visual tokens
    memory.create_session("gpu", tenant=tenant)
    memory.append("gpu", chat[:300], tenant=tenant)
    assert {kind for kind, _, _ in queued_jobs(memory.store.r, "gpu")} == {"encode"}


def test_a_curve_change_retiers_every_page(memory, tenant, chat):
    memory.store.jobs_max = 0
    memory.create_session("cc", curve="keep", keep_source=False, tenant=tenant)
    memory.append("cc", chat[:300], tenant=tenant)
    k = SessionKeys(tenant, "cc")
    assert set(memory.store.queued_tiers(k).values()) == {"crops"}
    memory.set_curve("cc", {"kind": "step", "steps": [[0, "v768"], [40, "mosaic16"]]}, tenant=tenant)
    tiers = {p.page: p.tier for p in memory.pages("cc", tenant=tenant)}
    assert memory.store.queued_tiers(k) == tiers


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_row_estimate_never_skips_a_full_page(language):
    """Compaction skips the typesetter when the overflow's estimated rows are surely short of a
    page (compactor.estimated_rows): on real chat, wherever the typesetter would find a full page,
    the estimate is above that mark, so no seal is missed or put off."""
    from optimem import renderer
    from optimem.memory import compactor
    from optimem.memory.lab.corpus import chinese
    from optimem.memory.store import TurnRecord

    chat = longest()[1][:900] if language == "en" else chinese() * 12
    turns = [TurnRecord(i, t["role"], t["content"], t["time"]) for i, t in enumerate(chat)]
    layout = renderer.Layout(page_px=1024, font_px=12, line_spacing=1.15)
    checked = 0
    for start in range(0, len(turns) - 120, 41 if language == "en" else 11):
        for end in range(start + 1, min(len(turns), start + 120)):
            spill = turns[start:end]
            full = renderer.typeset([renderer.TurnText(t.index, t.role, t.content, t.time, t.start) for t in spill],
                                    layout, full_only=True)
            if full:
                assert compactor.estimated_rows(spill, layout) >= compactor.SURELY_SHORT * layout.rows
                checked += 1
                break
    assert checked >= 5
