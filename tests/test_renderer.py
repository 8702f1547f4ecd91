"""The renderer's promises: exact offsets across pages, width-true wrapping, real glyphs or a
visible fallback, boxes that hold every line's ink, deterministic bytes, and views that are
resizes of the one page."""
from __future__ import annotations

import io
import random
import re

import numpy as np
import pytest
from PIL import Image, ImageChops

import renderer
from model.base import LineBox
from renderer import Layout, TurnText, mosaic, scale_lines, typeset, view
from renderer.faces import FALLBACK, faces
from renderer.typeset import PAD

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
    covered = np.zeros_like(ink)
    for line in page.lines:
        x0, y0, x1, y1 = line.box
        covered[y0:y1, x0:x1] = True
        ys, xs = np.nonzero(ink[y0:y1, x0:x1])
        assert (xs.min(), xs.max() + 1) == (PAD, x1 - x0 - PAD), line     # PAD either side
        assert ys.min() <= PAD and ys.max() + 1 >= y1 - y0 - PAD, line
    assert not (ink & ~covered).any(), "ink outside every line box"
    # Where the boxes of consecutive lines overlap there is no ink, so every inked pixel is in
    # exactly one box: its own line's.
    for a, b in zip(page.lines, page.lines[1:]):
        assert not ink[b.box[1]:a.box[3]].any(), (a, b)


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
        ("header", "#0 user"), ("header", "#1 assistant · 2018-05-02")]
    assert typeset([]) == []


def test_header_names_turn_speaker_and_time():
    page = typeset([TurnText(12, "user", "hi", "2018-05-02T19:38:41+02:00")])[0]
    assert page.lines[0] == LineBox(12, page.lines[0].box, "#12 user · 2018-05-02 19:38", "header")


def test_a_speaker_name_too_long_for_a_line_is_cut_to_one_header_line():
    layout = Layout(page_px=256)
    pages = typeset([TurnText(0, "x" * 5000, "body " * 400)], layout)
    assert len(pages) > 1
    for page in pages:
        assert [line.kind for line in page.lines].count("header") == 1
        assert all(line.box[2] <= layout.page_px - layout.margin_px + PAD for line in page.lines)


def test_a_long_turn_splits_across_pages_whose_offsets_chain():
    turns = long_turns()
    pages = typeset(turns)
    assert len(pages) >= 3
    assert [p.full for p in pages] == [True] * (len(pages) - 1) + [False]
    for before, after in zip(pages, pages[1:]):
        if after.first_turn == before.last_turn:
            assert after.first_offset == before.end_offset
            assert after.lines[0].kind == "header" and after.lines[0].text.endswith("(continued)")
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
    pieces = ["word", "W", "i", "中文", "，", "。", "\n", "\n\n", "\t", "  ", " ", "```\n", "x" * 80, "「引」"]
    for seed in range(40):
        rnd = random.Random(seed)
        layout = Layout(page_px=rnd.choice([128, 256, 512]), font_px=rnd.choice([8, 12]),
                        margin_px=rnd.choice([0, 16]))
        turns = []
        for i in range(rnd.randint(1, 5)):
            content = "".join(rnd.choice(pieces) + rnd.choice(["", " "]) for _ in range(rnd.randint(0, 120)))
            turns.append(TurnText(i, "user", content, None, rnd.randint(0, len(content)) if i == 0 else 0))
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


def test_resuming_from_start_offset_skips_the_sealed_part():
    content = "alpha beta gamma\n```\n    kept code\n```\ntail"
    start = content.index("    kept")
    page = typeset([TurnText(3, "user", content, start=start)])[0]
    assert (page.first_turn, page.first_offset, page.end_offset) == (3, start, len(content))
    assert page.lines[0].text == "#3 user (continued)"
    # Still inside the fence, so still code, indentation and all.
    assert [(line.kind, line.text) for line in body(page)] == [
        ("code", "    kept code"), ("code", "```"), ("text", "tail")]


def test_a_header_is_never_left_alone_at_the_foot_of_a_page():
    layout = Layout(page_px=200, font_px=12)          # 10 rows
    first = "\n".join(f"line {i}" for i in range(layout.rows - 2))   # header + 8 rows: 1 row left
    pages = typeset([TurnText(0, "user", first), TurnText(1, "assistant", "next turn")], layout)
    assert len(pages) == 2 and pages[0].full
    assert (pages[0].last_turn, pages[0].end_offset) == (0, len(first))
    assert (pages[1].first_turn, pages[1].first_offset) == (1, 0)
    assert pages[1].lines[0].text == "#1 assistant"


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
