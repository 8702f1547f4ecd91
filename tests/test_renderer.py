"""The renderer's promises: exact offsets across pages, width-true wrapping, real glyphs or a
visible fallback, boxes that hold every line's ink, deterministic bytes, and views that are
resizes of the one page. Headers are short prefixes on the row of a turn's first line, with a box
of their own beside the body's, and the date only where it changes: a page of chitchat holds
about twice the turns it would with a header row per turn."""
from __future__ import annotations

import io
import random
import re

import numpy as np
import pytest
from PIL import Image, ImageChops

from optimem import renderer
from optimem.model.base import LineBox
from optimem.renderer import Layout, TurnText, mosaic, scale_lines, typeset, view
from optimem.renderer.faces import FALLBACK, IDENT_FACES, faces
from optimem.renderer.transcript import Record
from optimem.renderer.typeset import HEADER_INK, PAD
from optimem.renderer.wrap import wrap

PROSE = ("Sure! Here's how the cache works: each page is keyed by session, page and tier, and the value "
         "is the decoded text. If the reader changes, the key changes too, so stale text is never served. "
         "We measured 4.5 s per page on 2 cores; see https://example.com/docs/v2/cache?x=1 for details. ")
CODE = "```python\ndef f(x):\n    if x:\n\treturn {'a': x * 2}\n```\n"
ZH = "我们在两核的机器上测量了每页的识别时间，大约四点五秒。缓存的键包含会话、页码和层级，所以不会读到过期的文本。"


def image(page: renderer.Page) -> Image.Image:
    return Image.open(io.BytesIO(page.png))


def body(page: renderer.Page) -> list:
    return [line for line in page.lines if line.kind != "header"]


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def rows(page: renderer.Page, layout: Layout = Layout()) -> list[list[LineBox]]:
    """The page's boxes grouped by the row they are drawn on, top to bottom: boxes come row by row,
    and a box whose ink's middle lies inside the previous box's height is on its row (rows that hold
    an identifier are taller than the pitch, so rows are not found by dividing by it)."""
    out: list[list[LineBox]] = []
    for line in page.lines:
        middle = (line.box[1] + line.box[3]) / 2
        if out and out[-1][-1].box[1] < middle < out[-1][-1].box[3]:
            out[-1].append(line)
        else:
            out.append([line])
    return out


def assert_each_inked_pixel_in_one_box(page: renderer.Page, layout: Layout = Layout()) -> None:
    """Boxes hold all the ink, and where they overlap (rows above and below) there is none: a
    reader cropping a box sees its own line's ink only. Boxes side by side never overlap."""
    ink = np.array(image(page)) < 255
    covered = np.zeros(ink.shape, dtype=int)
    for line in page.lines:
        x0, y0, x1, y1 = line.box
        covered[y0:y1, x0:x1] += 1
    assert not (ink & (covered == 0)).any(), "ink outside every line box"
    assert not (ink & (covered > 1)).any(), "ink in two boxes"
    for row in rows(page, layout):
        assert [line.kind for line in row][1:] in ([], ["text"]), row
        assert all(a.box[2] <= b.box[0] and a.turn == b.turn for a, b in zip(row, row[1:])), row


def chitchat(count: int | None = None) -> list[TurnText]:
    from optimem.memory.lab.corpus import longest
    return [TurnText(i, t["role"], t["content"], t["time"]) for i, t in enumerate(longest()[1][:count])]


def long_turns() -> list[TurnText]:
    mixed = (PROSE * 6 + "\n\n" + CODE + ZH * 4 + "\n") * 8
    return [TurnText(0, "user", "short opener", "2018-05-02T19:38:00Z"),
            TurnText(1, "assistant", mixed, "2018-05-02T19:39:10Z"),
            TurnText(2, "user", PROSE * 3)]


def test_same_turns_give_same_bytes_cold_or_warm():
    turns = long_turns()
    first = typeset(turns)
    faces.cache_clear()          # a fresh process: no cached widths or word images
    second = typeset(turns)
    assert [p.png for p in first] == [p.png for p in second]
    assert [p.lines for p in first] == [p.lines for p in second]
    assert image(first[0]).mode == "L" and image(first[0]).size == (1024, 1024)


def test_wrapping_follows_pixel_width_not_character_count():
    layout = Layout()
    wide = typeset([TurnText(0, "user", "WWWW " * 400)], layout)[0]
    narrow = typeset([TurnText(0, "user", "iiii " * 400)], layout)[0]
    w_chars, i_chars = len(body(wide)[0].text), len(body(narrow)[0].text)
    assert i_chars > 2 * w_chars
    for page in (wide, narrow):
        lines = body(page)
        assert len(lines) > 3
        # Full lines come close to the right margin: wrapping fills the width, not a char count.
        assert all(line.box[2] > layout.page_px - layout.margin_px - 60 for line in lines[:-1])


@pytest.mark.parametrize("font_px", [8, 10, 12, 16])
def test_no_line_box_leaves_the_margins(font_px):
    layout = Layout(font_px=font_px)
    content = PROSE * 5 + "x" * 900 + "\n" + ZH * 10 + "\n```\n" + "    " + "code_" * 300 + "\n```"
    pages = typeset([TurnText(0, "user", content), TurnText(1, "assistant", "W" * 3000)], layout)
    for page in pages:
        for line in page.lines:
            x0, y0, x1, y1 = line.box
            assert x0 >= layout.margin_px - PAD and y0 >= layout.margin_px - PAD
            assert x1 <= layout.page_px - layout.margin_px + PAD
            assert y1 <= layout.page_px - layout.margin_px + PAD


def test_a_word_longer_than_the_line_is_cut_between_characters():
    word = "".join(chr(ord("a") + i % 26) for i in range(3000))
    lines = body(typeset([TurnText(0, "user", word)])[0])
    assert len(lines) >= 3
    assert "".join(line.text for line in lines) == word


def test_boxes_hold_all_the_ink_tightly_and_none_of_the_neighbours():
    layout = Layout()
    turns = [TurnText(0, "user", "gjpqy ÁÉÍ bdfhkl " * 60 + "\n" + ZH * 3 + "\n" + CODE)]
    page = typeset(turns, layout)[0]
    ink = np.array(image(page)) < 255
    for line in page.lines:
        x0, y0, x1, y1 = line.box
        ys, xs = np.nonzero(ink[y0:y1, x0:x1])
        assert (xs.min(), xs.max() + 1) == (PAD, x1 - x0 - PAD), line     # PAD either side
        assert ys.min() <= PAD and ys.max() + 1 >= y1 - y0 - PAD, line
    assert_each_inked_pixel_in_one_box(page)


def test_cjk_gets_real_glyphs_and_breaks_between_characters():
    layout = Layout()
    page = typeset([TurnText(0, "user", "中" * 300 + "，中文。" * 40)], layout)[0]
    lines = body(page)
    assert len(lines) > 2 and lines[0].text.startswith("中中中")
    assert FALLBACK not in "".join(line.text for line in lines)
    # Closing punctuation never starts a line.
    assert not any(line.text[0] in "，。" for line in lines)
    # The ideograph is drawn with its own glyph, not the fallback square.
    cjk = typeset([TurnText(0, "user", "中")])[0]
    missing = typeset([TurnText(0, "user", "\ue000")])[0]
    assert body(missing)[0].text == FALLBACK
    crop = lambda p: image(p).crop(body(p)[0].box)
    assert crop(cjk).size != crop(missing).size or ImageChops.difference(crop(cjk), crop(missing)).getbbox()


def test_fenced_code_keeps_its_indentation_in_a_monospace_face():
    page = typeset([TurnText(0, "assistant", "Here:\n" + CODE + "Done.")])[0]
    kinds = [(line.kind, line.text) for line in body(page)]
    assert kinds == [("text", "Here:"), ("code", "```python"), ("code", "def f(x):"),
                     ("code", "    if x:"), ("code", "    return {'a': x * 2}"), ("code", "```"),
                     ("text", "Done.")]
    boxes = {line.text: line.box for line in body(page)}
    indent = boxes["    if x:"][0] - boxes["def f(x):"][0]
    assert indent == pytest.approx(4 * faces(12).width(" ", "code"), abs=2)


def test_unknown_and_control_characters_fall_back_without_crashing():
    content = "thumbs \U0001F44D\U0001F3FD up, private \ue000\ud800, bell\x07 nul\x00 zero\u200bwidth\r\nnext line\vend"
    page = typeset([TurnText(0, "user", content)])[0]
    texts = [line.text for line in body(page)]
    assert texts == [f"thumbs {FALLBACK} up, private {FALLBACK}{FALLBACK}, bell nul zerowidth", "next line", "end"]
    assert page.end_offset == len(content)


def test_empty_and_blank_turns_are_a_header_alone():
    pages = typeset([TurnText(0, "user", ""), TurnText(1, "assistant", " \n\n\t\n", "2018-05-02")])
    assert len(pages) == 1 and not pages[0].full
    assert [(line.kind, line.text) for line in pages[0].lines] == [
        ("header", "user:"), ("header", "2018-05-02 assistant:")]
    assert [len(row) for row in rows(pages[0])] == [1, 1]
    assert typeset([]) == []


def test_header_is_a_prefix_on_the_row_of_the_first_line():
    layout = Layout()
    page = typeset([TurnText(12, "user", "hi", "2018-05-02T19:38:41+02:00"),
                    TurnText(13, "assistant", "how are you doing?", "2018-05-02T19:39:02+02:00")], layout)[0]
    assert [(line.turn, line.text, line.kind) for line in page.lines] == [
        (12, "2018-05-02 19:38 user:", "header"), (12, "hi", "text"),        # no "#12": the box knows
        (13, "assistant 19:39:", "header"), (13, "how are you doing?", "text")]
    assert [len(row) for row in rows(page)] == [2, 2]
    for head, text in rows(page):
        assert head.box[0] == layout.margin_px - PAD or head.box[0] == layout.margin_px - PAD + 1
        assert head.box[2] <= text.box[0]                 # side by side, never overlapping
        assert text.box[0] - head.box[2] < 3 * layout.font_px
        assert abs(head.box[3] - text.box[3]) <= 4        # on one baseline
    # The prefix is drawn in gray, the body in black.
    pixels = np.array(image(page))
    for line in page.lines:
        x0, y0, x1, y1 = line.box
        darkest = pixels[y0:y1, x0:x1].min()
        assert darkest == HEADER_INK if line.kind == "header" else darkest < HEADER_INK // 2, line


def test_the_date_is_written_only_where_it_changes_and_atop_every_page():
    layout = Layout(page_px=512)
    n = layout.rows + 4                           # one day's turns run onto a second page
    day = [TurnText(i, "user" if i % 2 else "assistant", f"turn {i}", f"2018-05-02T19:{i:02d}:00Z")
           for i in range(n)]
    turns = day + [TurnText(n, "user", "next day", "2018-05-03T08:00:00Z"),
                   TurnText(n + 1, "user", "no time"), TurnText(n + 2, "user", "later", "2018-05-03T09:30:00Z"),
                   TurnText(n + 3, "user", "same day", "2018-05-03"), TurnText(n + 4, "user", "again", "2018-05-03")]
    pages = typeset(turns, layout)
    assert len(pages) == 2 and pages[1].first_turn == layout.rows
    heads = [[line.text for line in page.lines if line.kind == "header"] for page in pages]
    who = lambda i: "user" if i % 2 else "assistant"
    assert heads[0] == ["2018-05-02 19:00 assistant:"] + [f"{who(i)} 19:{i:02d}:" for i in range(1, layout.rows)]
    assert heads[1] == [f"2018-05-02 19:{layout.rows:02d} {who(layout.rows)}:"] + [
        f"{who(i)} 19:{i:02d}:" for i in range(layout.rows + 1, n)] + [
        "2018-05-03 08:00 user:", "user:", "2018-05-03 09:30 user:", "user:", "user:"]
    assert [line.text for line in body(pages[1])][-2:] == ["same day", "again"]


def test_a_turn_opening_with_code_keeps_its_header_on_a_row_of_its_own():
    layout = Layout()
    page = typeset([TurnText(0, "assistant", CODE + "That is all.", "2018-05-02T19:38:00Z")], layout)[0]
    assert [len(row) for row in rows(page)] == [1, 1, 1, 1, 1, 1, 1]
    assert [(line.kind, line.text) for line in page.lines][:3] == [
        ("header", "2018-05-02 19:38 assistant:"), ("code", "```python"), ("code", "def f(x):")]
    assert page.lines[1].box[1] >= page.lines[0].box[3] - PAD      # on the next row
    boxes = {line.text: line.box for line in page.lines}
    assert boxes["def f(x):"][0] <= layout.margin_px                # at the margin, not after the header
    indent = boxes["    if x:"][0] - boxes["def f(x):"][0]
    assert indent == pytest.approx(4 * faces(12).width(" ", "code"), abs=2)


def test_a_first_line_wraps_in_the_room_the_header_leaves():
    layout = Layout(ident="off")    # PROSE's URL, set larger as an identifier, would wrap whole and leave a gap
    page = typeset([TurnText(0, "assistant", PROSE * 3, "2018-05-02T19:38:00Z")], layout)[0]
    (head, first), second = rows(page, layout)[:2]
    assert (head.kind, first.kind, second[0].kind) == ("header", "text", "text")
    right = layout.page_px - layout.margin_px + PAD
    assert right - 60 < first.box[2] <= right and right - 60 < second[0].box[2] <= right
    assert second[0].box[0] <= layout.margin_px                      # later lines take the full width
    assert len(first.text) < len(second[0].text)
    # A first word that fits a full row but not beside the header starts the next row.
    word = "W" * 30
    lines = wrap(Record("text", 0, 5, word + " tail"), faces(12), 370, first_width=200)
    assert [(line.start, line.text) for line in lines] == [(5, ""), (5, word), (36, "tail")]
    page = typeset([TurnText(0, "assistant", word, "2018-05-02T19:38:00Z")], Layout(page_px=512))[0]
    assert [len(row) for row in rows(page)] == [1, 1]
    assert page.lines[1].text == word and page.end_offset == len(word)
    # A word longer than a full row is cut between characters from beside the header on.
    page = typeset([TurnText(0, "assistant", "W" * 100, "2018-05-02T19:38:00Z")], Layout(page_px=512))[0]
    assert [len(row) for row in rows(page)] == [2, 1, 1]
    assert "".join(line.text for line in body(page)) == "W" * 100


def test_a_page_of_real_chat_holds_many_turns():
    layout = Layout(page_px=1024, font_px=12)
    turns = chitchat()
    pages = typeset(turns, layout)
    full = [page for page in pages if page.full]
    counts = [page.last_turn - page.first_turn + 1 for page in full]
    assert counts[0] >= 55 and sum(counts) / len(counts) >= 55, counts     # a header row per turn: ~30
    # Most rows carry a turn's header and its whole text.
    assert sum(len(row) == 2 for row in rows(full[0])) >= 50
    for page in full[:3]:
        assert_each_inked_pixel_in_one_box(page)


def test_a_speaker_name_too_long_for_a_line_is_cut_to_one_header_line():
    layout = Layout(page_px=256)
    pages = typeset([TurnText(0, "x" * 5000, "body " * 400)], layout)
    assert len(pages) > 1
    for page in pages:
        assert [line.kind for line in page.lines].count("header") == 1
        assert len(rows(page)[0]) == 1          # no room left beside it: the body starts below
        assert all(line.box[2] <= layout.page_px - layout.margin_px + PAD for line in page.lines)


def test_a_long_turn_splits_across_pages_whose_offsets_chain():
    turns = long_turns()
    pages = typeset(turns)
    assert len(pages) >= 3
    assert [p.full for p in pages] == [True] * (len(pages) - 1) + [False]
    for before, after in zip(pages, pages[1:]):
        if after.first_turn == before.last_turn:
            assert after.first_offset == before.end_offset
            assert after.lines[0].kind == "header" and after.lines[0].text.endswith("(cont.):")
            if turns[after.first_turn].time:        # a page opens dated (when its turn has a time)
                assert after.lines[0].text.startswith("2018-05-02 ")
        else:
            assert before.end_offset == len(turns[before.last_turn].content)
            assert (after.first_turn, after.first_offset) == (before.last_turn + 1, 0)
    # The spans of every turn, page by page, add up to its whole content ...
    pieces: dict[int, list[str]] = {t.index: [] for t in turns}
    for page in pages:
        for index in range(page.first_turn, page.last_turn + 1):
            start = page.first_offset if index == page.first_turn else 0
            end = page.end_offset if index == page.last_turn else len(turns[index].content)
            pieces[index].append(turns[index].content[start:end])
    assert all("".join(pieces[t.index]) == t.content for t in turns)
    # ... and what each page shows of a turn is exactly its span, less whitespace.
    for page in pages:
        shown = "".join(line.text for line in body(page) if line.turn == 1)
        if page.first_turn <= 1 <= page.last_turn:
            start = page.first_offset if page.first_turn == 1 else 0
            end = page.end_offset if page.last_turn == 1 else len(turns[1].content)
            assert squeeze(shown) == squeeze(turns[1].content[start:end].replace("\t", " "))


def test_random_transcripts_chain_exactly_and_stay_inside_the_margins():
    pieces = ["word", "W", "i", "中文", "，", "。", "\n", "\n\n", "\t", "  ", " ", "```\n", "x" * 80, "「引」",
              "QX-4817-A2B", "ann.lee42@ex.com", "https://x.io/f/Ab3Zq0l", "+1 415-555-0132", "O0Il1rnmB8S5"]
    for seed in range(40):
        rnd = random.Random(seed)
        # Every identifier setting, taller identifier rows included: offsets chain, ink stays in its box.
        layout = Layout(page_px=rnd.choice([128, 256, 512]), font_px=rnd.choice([8, 12]),
                        margin_px=rnd.choice([0, 16]), ident=sorted(IDENT_FACES)[seed % len(IDENT_FACES)])
        turns = []
        for i in range(rnd.randint(1, 5)):
            content = "".join(rnd.choice(pieces) + rnd.choice(["", " "]) for _ in range(rnd.randint(0, 120)))
            when = rnd.choice([None, "2018-05-02T19:38:00Z", "2018-05-03T08:00:00Z", "2018-05-03"])
            turns.append(TurnText(i, rnd.choice(["user", "assistant"]), content, when,
                                  rnd.randint(0, len(content)) if i == 0 else 0))
        pages = typeset(turns, layout)
        assert (pages[0].first_turn, pages[0].first_offset) == (0, turns[0].start)
        assert (pages[-1].last_turn, pages[-1].end_offset) == (turns[-1].index, len(turns[-1].content))
        for a, b in zip(pages, pages[1:]):
            if a.last_turn == b.first_turn:
                assert a.end_offset == b.first_offset, seed
            else:
                assert a.end_offset == len(turns[a.last_turn].content) and b.first_offset == 0, seed
        for page in pages:
            for t in range(page.first_turn, page.last_turn + 1):
                start = page.first_offset if t == page.first_turn else turns[t].start
                end = page.end_offset if t == page.last_turn else len(turns[t].content)
                shown = "".join(line.text for line in body(page) if line.turn == t)
                assert squeeze(shown) == squeeze(turns[t].content[start:end]), seed
            for line in page.lines:
                assert layout.margin_px - PAD <= line.box[0] and line.box[2] <= layout.page_px - layout.margin_px + PAD
                assert layout.margin_px - PAD <= line.box[1] and line.box[3] <= layout.page_px - layout.margin_px + PAD
            assert_each_inked_pixel_in_one_box(page, layout)


def test_resuming_from_start_offset_skips_the_sealed_part():
    content = "alpha beta gamma\n```\n    kept code\n```\ntail"
    start = content.index("    kept")
    page = typeset([TurnText(3, "user", content, start=start)])[0]
    assert (page.first_turn, page.first_offset, page.end_offset) == (3, start, len(content))
    assert page.lines[0].text == "user (cont.):"
    # Still inside the fence, so still code, indentation and all (under the header, not beside it).
    assert [(line.kind, line.text) for line in body(page)] == [
        ("code", "    kept code"), ("code", "```"), ("text", "tail")]


def test_a_header_is_never_left_alone_at_the_foot_of_a_page():
    layout = Layout(page_px=200, font_px=12)          # 10 rows
    first = "\n".join(f"line {i}" for i in range(layout.rows - 1))   # 9 rows, header inline: 1 row left
    # A turn opening with code needs two rows (header, then code): it goes to the next page ...
    pages = typeset([TurnText(0, "user", first), TurnText(1, "assistant", "```\ncode\n```")], layout)
    assert len(pages) == 2 and pages[0].full
    assert (pages[0].last_turn, pages[0].end_offset) == (0, len(first))
    assert (pages[1].first_turn, pages[1].first_offset) == (1, 0)
    assert [line.text for line in pages[1].lines][:2] == ["assistant:", "```"]
    # ... while a prose turn takes the last row with its header beside it.
    pages = typeset([TurnText(0, "user", first), TurnText(1, "assistant", "next turn")], layout)
    assert len(pages) == 1 and [line.text for line in pages[0].lines][-2:] == ["assistant:", "next turn"]


def test_a_turn_continued_on_a_new_page_goes_on_beside_its_header():
    layout = Layout(page_px=512)
    # (Plain words: a long URL set in the identifier face may not fit beside the header; then it
    # takes the next row whole, as any first word too wide for the room left.)
    content = PROSE.replace("https://example.com/docs/v2/cache?x=1", "the docs") * 30
    pages = typeset([TurnText(7, "assistant", content, "2018-05-02T19:38:00Z")], layout)
    assert len(pages) > 2
    for before, after in zip(pages, pages[1:]):
        head, text = rows(after)[0]
        assert head.text == "2018-05-02 19:38 assistant (cont.):" and text.kind == "text"
        assert after.first_offset == before.end_offset
        assert content[after.first_offset:].startswith(text.text)
    # Code goes on under the continued header, each line as it was, indentation and all.
    code = "```\n" + "".join(f"    line_{i} = {i}\n" for i in range(80)) + "```"
    pages = typeset([TurnText(7, "assistant", "Code:\n" + code, "2018-05-02T19:38:00Z")], layout)
    assert len(pages) > 2
    for page in pages[1:]:
        assert [len(row) for row in rows(page)][:2] == [1, 1]
        head, first = page.lines[:2]
        assert head.text == "2018-05-02 19:38 assistant (cont.):" and first.kind == "code"
        assert re.fullmatch(r"    line_\d+ = \d+|```", first.text)
    assert [line.text for page in pages for line in body(page)][1:] == code.split("\n")


def test_a_layout_without_room_for_two_lines_is_refused():
    with pytest.raises(ValueError):
        Layout(page_px=40, font_px=12, margin_px=10)


def test_a_view_is_a_resize_of_the_one_page():
    page = typeset(long_turns())[0]
    full = image(page)
    same = view(page.png, 1024)
    assert same.size == (1024, 1024) and not ImageChops.difference(same, full).getbbox()
    for px in (768, 512, 256):
        small = view(page.png, px)
        assert small.size == (px, px) and small.mode == "L"
        assert small.tobytes() == full.resize((px, px), Image.Resampling.LANCZOS).tobytes()


def test_scaled_line_boxes_still_hold_their_ink():
    page = typeset([TurnText(0, "user", PROSE * 4)])[0]
    small = np.array(view(page.png, 512)) < 250
    lines = scale_lines(page.lines, 1024, 512)
    assert len(lines) == len(page.lines)
    assert [line.text for line in lines] == [line.text for line in page.lines]
    covered = np.zeros_like(small)
    for big, line in zip(page.lines, lines):
        assert line.box[0] == big.box[0] // 2 and line.box[3] == -(-big.box[3] // 2)
        x0, y0, x1, y1 = line.box
        covered[y0:y1, x0:x1] = True
    assert not (small & ~covered).any()
    assert scale_lines(page.lines, 1024, 1024) == page.lines


@pytest.mark.parametrize("per_canvas,grid", [(4, 2), (16, 4)])
def test_mosaic_packs_views_row_by_row_and_leaves_empty_cells_white(per_canvas, grid):
    cell = 1024 // grid
    views = [Image.new("L", (cell, cell), 10 + i) for i in range(per_canvas - 1)]
    canvas = mosaic(views, per_canvas, 1024)
    assert canvas.size == (1024, 1024)
    for n in range(per_canvas):
        x, y = (n % grid) * cell + cell // 2, (n // grid) * cell + cell // 2
        assert canvas.getpixel((x, y)) == (10 + n if n < per_canvas - 1 else 255)
    with pytest.raises(ValueError):
        mosaic(views + views, per_canvas, 1024)


def test_mosaic_of_real_pages_shows_each_page_in_its_cell():
    pngs = [p.png for p in typeset(long_turns())][:3]
    canvas = mosaic([view(png, 512) for png in pngs], 4, 1024)
    for n, png in enumerate(pngs):
        x, y = (n % 2) * 512, (n // 2) * 512
        assert canvas.crop((x, y, x + 512, y + 512)).tobytes() == view(png, 512).tobytes()


@pytest.mark.slow
def test_the_cpu_reader_reads_a_page_back():
    from rapidfuzz.distance import Levenshtein
    from rapidocr import RapidOCR

    reader = RapidOCR(params={"Global.use_cls": False})
    page = typeset([TurnText(0, "user", PROSE * 2, "2018-05-02T19:38:00Z"),
                    TurnText(1, "assistant", ZH * 2)])[0]
    read = reader(np.array(view(page.png, 1024)))         # grayscale straight in
    got, want = squeeze("".join(read.txts)), squeeze("".join(line.text for line in page.lines))
    assert Levenshtein.normalized_distance(got, want) < 0.02


def test_full_only_leaves_out_the_unfinished_last_page():
    from optimem.memory.lab.corpus import longest

    turns = [TurnText(i, t["role"], t["content"], t["time"]) for i, t in enumerate(longest()[1][:150])]
    every = typeset(turns)
    full = typeset(turns, full_only=True)
    assert not every[-1].full and [p.png for p in full] == [p.png for p in every[:-1]]
