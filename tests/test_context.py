"""``context``'s placing rules: which page goes at which tier under which budget, the floor of recent
turns that always stays text, the text that moves onto pages made for the context when the memory
would otherwise fade below legible (issue 22), and the accounting of what moved. Synthetic pages and
turns through ``context.assemble`` (fast), real typesetting for the made pages, and ``Memory.context``
on a real session for the cache and the formats."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from optimem import renderer
from optimem.memory import context, context_pages, curves
from optimem.memory.context import Making, assemble, legible_cost, made_pages
from optimem.memory.lab.corpus import conversations
from optimem.memory.service import Memory
from optimem.memory.store import PageRecord, TurnRecord
from optimem.model.tiers import DEEPSEEK_OCR2 as LADDER
from optimem.settings import Settings
from tests.tiny_deepseek import tiny_deepseek_dir  # noqa: F401  (session fixture)

TURNS_PER_PAGE = 50
LAYOUT = renderer.Layout(page_px=LADDER.page_px, font_px=12, line_spacing=1.15)
M4 = LADDER["mosaic4"]


def pages(n: int) -> list[PageRecord]:
    return [PageRecord(page=i, first_turn=i * TURNS_PER_PAGE, first_offset=0, last_turn=(i + 1) * TURNS_PER_PAGE - 1,
                       end_offset=0, sealed_at_turn=0, sealed_time=0.0, first_time="", last_time="", text_tokens=1000)
            for i in range(n)]


def text_turns(n: int, first: int, words: int = 60) -> list[TurnRecord]:
    """``n`` turns of real-looking text (~``words`` words each) numbered from ``first``."""
    body = " ".join(f"word{i % 97}" for i in range(words))
    return [TurnRecord(first + i, ("user", "assistant")[i % 2], f"turn {first + i}: {body}", "2024-01-01T00:00:00Z",
                       0, 100) for i in range(n)]


def setting(n_pages: int, n_turns: int, curve="default", floor: int = 4, session: str = "t"):
    count = n_pages * TURNS_PER_PAGE + n_turns
    c = curves.load(curve, LADDER)
    placed = context.place(pages(n_pages), c, LADDER, count)
    turns = text_turns(n_turns, n_pages * TURNS_PER_PAGE)
    making = Making(floor, made_pages(session, LAYOUT, "cl100k_base", c, LADDER, count))
    return placed, turns, making


def test_the_faintest_legible_tier_is_mosaic4():
    assert LADDER.faintest_legible.name == "mosaic4"      # mosaic16 reads 23% of characters: not legible


def test_no_budget_or_no_floor_keeps_recent_text_first():
    placed, turns, making = setting(40, 30)
    free = assemble(turns, placed, None, ladder=LADDER, making=making)
    assert len(free.turns) == 30 and free.accounting.pages_made == 0 and free.accounting.turns_moved_to_pages == 0
    before = assemble(turns, placed, 3000, ladder=LADDER)          # without a floor: the rule before
    assert before.accounting.recent_floor_turns is None and before.accounting.pages_made == 0
    assert before.accounting.recent_text_tokens == 3000 and before.pages == []


def test_text_stays_when_pages_are_legible_anyway():
    """Room for every page at mosaic4 beside all the text: nothing moves, nothing is typeset."""
    placed, turns, making = setting(8, 20)
    drawn = context_pages.CACHE.typeset_pages
    built = assemble(turns, placed, 2000 + 2 * int(M4.canvas_tokens), ladder=LADDER, making=making)
    a = built.accounting
    assert a.recent_text_tokens == 2000 and a.pages_made == 0 and a.recent_floor_turns == 4
    assert {p.tier for p in built.pages} == {M4} and context_pages.CACHE.typeset_pages == drawn


def test_text_yields_to_keep_pages_legible_and_moves_onto_made_pages():
    """40 pages at mosaic4 need 10 canvases (2,570 tokens); 3,000 tokens of text and a 4k budget:
    before, the pages faded to mosaic16; now old text moves onto pages made for the context."""
    placed, turns, making = setting(40, 30, session="yield")
    budget = 4000
    before = assemble(turns, placed, budget, ladder=LADDER)
    assert before.accounting.recent_text_tokens == 3000 and any(p.tier.name == "mosaic16" for p in before.pages)
    built = assemble(turns, placed, budget, ladder=LADDER, making=making)
    a = built.accounting
    assert a.total_tokens <= budget
    assert all(LADDER.index(p.tier.name) <= LADDER.index("mosaic4") for p in built.pages)   # every page legible
    made = [p for p in built.pages if p.png is not None]
    assert made and a.pages_made == len(made) and a.pages == 40 + len(made) and a.dropped_pages == 0
    assert [p.record.page for p in made] == list(range(40, 40 + len(made)))   # numbered after the sealed pages
    # every turn is either on a page or text, none lost, text is the newest and contiguous
    on_pages = {s["index"] for p in made for s in p.record.turns}
    shown = {t.index for t in built.turns}
    assert on_pages | shown == {t.index for t in turns} and a.dropped_turns == 0
    assert [t.index for t in built.turns] == list(range(turns[-1].index - len(built.turns) + 1, turns[-1].index + 1))
    assert a.turns_moved_to_pages == len(on_pages)
    assert a.text_tokens_moved == sum(p.record.text_tokens for p in made)
    assert a.text_tokens_replaced == 40 * 1000 + a.text_tokens_moved
    # the most text that leaves the memory legible: one more turn of text would not fit
    room = budget - a.recent_text_tokens
    assert legible_cost([p for p in built.pages], context.readable(LADDER), M4) <= room
    assert a.recent_text_tokens + 100 + a.visual_tokens > budget or len(built.turns) == 30


def legible_turns(built) -> int:
    limit = LADDER.index("mosaic4")
    return len(built.turns) + sum(p.record.last_turn - p.record.first_turn + 1 for p in built.pages
                                  if LADDER.index(p.tier.name) <= limit)


def test_the_floor_always_stays_text_and_a_budget_too_small_for_legible_pages_shows_the_most_it_can():
    """A budget too small for the memory even at mosaic4: the floor stays text; of all text, only the
    floor, and the moves between, the context shows the one with the most turns legible."""
    placed, turns, making = setting(40, 30, floor=6, session="floor")
    built = assemble(turns, placed, 1200, ladder=LADDER, making=making)
    a = built.accounting
    assert [t.index for t in built.turns][-6:] == [t.index for t in turns[-6:]] and a.total_tokens <= 1200
    all_text = assemble(turns, placed, 1200, ladder=LADDER)
    only_floor = assemble(turns[-6:], placed + [p for p in making.pages(turns[:-6], 40)], 1200, ladder=LADDER)
    assert legible_turns(built) >= max(legible_turns(all_text), legible_turns(only_floor))
    order = [LADDER.index(p.tier.name) for p in built.pages]
    assert order == sorted(order, reverse=True)                           # older never sharper
    # a floor larger than the budget keeps the newest turns that fit, nothing else
    tiny = assemble(turns, placed, 250, ladder=LADDER, making=making)
    assert [t.index for t in tiny.turns] == [t.index for t in turns[-2:]] and tiny.accounting.total_tokens <= 250


def test_text_a_budget_would_cut_goes_onto_pages_even_with_no_page_sealed_yet():
    """No sealed page, 30 turns (3,000 tokens) in a 1,500-token budget: before, the oldest 15 turns
    were left out; now they are on a made page (64 tokens at mosaic4) and the text keeps the rest."""
    _, turns, making = setting(0, 30, session="nosealed")
    before = assemble(turns, [], 1500, ladder=LADDER)
    assert before.accounting.dropped_turns == 15
    built = assemble(turns, [], 1500, ladder=LADDER, making=making)
    a = built.accounting
    assert a.dropped_turns == 0 and a.pages_made >= 1 and a.total_tokens <= 1500
    on_pages = {s["index"] for p in built.pages for s in p.record.turns}
    assert on_pages | {t.index for t in built.turns} == {t.index for t in turns}
    assert {p.tier.name for p in built.pages} == {"mosaic4"} and len(built.turns) >= 12


def test_a_curve_that_forgets_at_once_moves_nothing():
    placed, turns, making = setting(10, 30, curve={"kind": "step", "steps": [[0, "mosaic4"], [1, "gone"]]},
                                    session="gone")
    built = assemble(turns, placed, 1000, ladder=LADDER, making=making)
    assert built.accounting.pages_made == 0 and built.accounting.recent_text_tokens == 1000


def test_made_pages_are_cached_and_only_the_last_is_typeset_again_after_an_append():
    turns = text_turns(60, 0, words=80)
    cache = context_pages._Cache(64)
    first = context_pages.make("s", turns, LAYOUT, 5, 100, cache=cache)
    drawn = cache.typeset_pages
    assert len(first) >= 2 and drawn == len(first) and [m.record.page for m in first] == list(range(5, 5 + len(first)))
    again = context_pages.make("s", turns, LAYOUT, 5, 100, cache=cache)
    assert cache.typeset_pages == drawn and [m.png for m in again] == [m.png for m in first]
    more = context_pages.make("s", turns + text_turns(1, 60, words=80), LAYOUT, 5, 101, cache=cache)
    assert cache.typeset_pages - drawn <= 2                       # the partial page (and what it spills into)
    assert [m.png for m in more[:len(first) - 1]] == [m.png for m in first[:-1]]
    # the pages are what the compactor would seal: the same typesetting of the same turns
    sealed = renderer.typeset([renderer.TurnText(t.index, t.role, t.content, t.time) for t in turns], LAYOUT)
    assert [p.png for p in sealed] == [m.png for m in first]
    # a changed turn (forgotten, say) is typeset again from its page on
    changed = list(turns)
    changed[0] = TurnRecord(0, "user", "[forgotten]", turns[0].time, 0, 5)
    drawn = cache.typeset_pages
    context_pages.make("s", changed, LAYOUT, 5, 100, cache=cache)
    assert cache.typeset_pages > drawn


@pytest.fixture(scope="module")
def dense_chat() -> list[dict]:
    """Real chat, six chitchat turns to a turn (~90 tokens each): 400 turns fill ~35 pages."""
    raw = [t for _, c in conversations(limit=200) for t in c]
    return [{"role": ("user", "assistant")[i % 2], "content": " ".join(t["content"] for t in raw[i * 6:(i + 1) * 6]),
             "time": raw[i * 6]["time"]} for i in range(400)]


def test_memory_context_moves_text_onto_made_pages_and_sends_them_inline(tmp_path: Path, dense_chat):
    with Memory(Settings(data_dir=tmp_path, worker=False, seal_background=False, recent_floor_turns=5)) as m:
        m.create_session("s")
        m.append("s", dense_chat)
        free = m.context("s")
        budget = int(free.accounting.visual_tokens) + 600
        tight = m.context("s", budget=budget)
        a = tight.accounting
        assert a.recent_floor_turns == 5 and a.pages_made >= 1 and a.total_tokens <= budget
        assert len(tight.turns) >= 5 and a.recent_text_tokens < free.accounting.recent_text_tokens
        made = [p for p in tight.pages if p.made_for_context]
        assert len(made) == a.pages_made and all(p.image_url is None for p in made)
        assert all(LADDER.index(p.tier) <= LADDER.index("mosaic4") for p in tight.pages)
        # nothing moved: a second call draws no page
        drawn = context_pages.CACHE.typeset_pages
        again = m.context("s", budget=budget)
        assert context_pages.CACHE.typeset_pages == drawn and again.accounting == a
        # openai: the canvas holding a made page comes inline and shows it
        images = m.context("s", budget=budget, format="openai")
        assert images.accounting == a
        parts = [part for msg in images.messages if isinstance(msg["content"], list) for part in msg["content"]
                 if part["type"] == "image_url"]
        assert len(parts) == -(-len(tight.pages) // 4) and all(p["image_url"]["url"].startswith("data:") for p in parts)
        last = Image.open(io.BytesIO(base64.b64decode(parts[-1]["image_url"]["url"].split(",", 1)[1])))
        assert last.size == (1024, 1024)
        n = made[0].page % 4                       # the made page's cell holds ink (the page), not blank canvas
        box = ((n % 2) * 512, (n // 2) * 512, (n % 2) * 512 + 512, (n // 2) * 512 + 512)
        assert last.convert("L").crop(box).getextrema()[0] < 100


def test_embeddings_encode_a_canvas_holding_a_made_page_now_and_inline(redis_server, tmp_path, tiny_deepseek_dir,
                                                                       dense_chat):
    """The GPU format: a made page is not stored, so its canvas's visual tokens are encoded for the
    context (not cached) and come inline even when the caller wants links."""
    from tests.conftest import settings_for
    from optimem.model.visual_tokens import VisualTokens

    settings = settings_for(redis_server, tmp_path, backend="deepseek-ocr2", model_path=str(tiny_deepseek_dir),
                            device="cpu", dtype="bfloat16", recent_tokens=2000)

    class Links:
        def page(self, session, page, tier):
            return f"/p/{page}/{tier}"

        def mosaic(self, session, tier, group):
            return f"/m/{tier}/{group}"

        def tokens(self, session, unit, tier):
            return f"/t/{unit}/{tier}"

    with Memory(settings) as m:
        m.create_session("e")
        m.append("e", dense_chat[:120])
        free = m.context("e")
        budget = int(free.accounting.visual_tokens) + 500
        ctx = m.context("e", budget=budget, format="embeddings", links=Links())
        assert ctx.accounting.pages_made >= 1
        made_units = [i for i in ctx.images if i.tokens_url is None]
        assert made_units and all(i.safetensors_base64 for i in made_units)
        tokens = VisualTokens.from_bytes(base64.b64decode(made_units[-1].safetensors_base64))
        assert tokens.n_tokens == made_units[-1].n_tokens == 257
        assert m.store.cached_tokens(m.keys("e", "default"), made_units[-1].unit, made_units[-1].tier,
                                     m.backend.revision) is None        # not cached: the page is not stored


def test_a_seal_backlog_is_not_typeset_on_a_context_call():
    """After a bulk import thousands of turns wait for the sealer. A context call makes pages only
    from the recent-text window's worth of them (``reach_tokens``); the rest wait for their seal."""
    placed, _, _ = setting(8, 0, session="backlog")
    count = 8 * TURNS_PER_PAGE + 3000
    c = curves.load("default", LADDER)
    backlog = text_turns(3000, 8 * TURNS_PER_PAGE)                      # 300,000 tokens unsealed
    bounded = Making(4, made_pages("backlog", LAYOUT, "cl100k_base", c, LADDER, count), reach_tokens=6000)
    drawn = context_pages.CACHE.typeset_pages
    built = assemble(backlog, placed, 4000, ladder=LADDER, making=bounded)
    made = context_pages.CACHE.typeset_pages - drawn
    assert 0 < made <= 10                                   # 6,000 tokens of text: a few pages, not ~300
    assert built.accounting.pages_made >= 1 and built.accounting.total_tokens <= 4000
    assert [t.index for t in built.turns] == list(range(built.turns[0].index, count))   # newest text, in order
