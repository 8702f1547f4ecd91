"""The CPU reader reads typeset pages back, line by line with their turns, and a faded page worse.

Pages are drawn here with Pillow (DejaVu Sans 12 px on 1024 px, laid out and boxed the way the
renderer does it), so these tests pin the reader, not the renderer.
"""
from __future__ import annotations

import re
import sys
import threading

import pytest
from PIL import Image, ImageDraw, ImageFont
from rapidfuzz.distance import Levenshtein

from optimem.model.base import Backend, LineBox, ModelUnavailable, PageView
from optimem.model.rapidocr_backend import RapidOcrBackend
from optimem.model.tiers import DEEPSEEK_OCR2

pytestmark = pytest.mark.slow

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
PAGE_PX = DEEPSEEK_OCR2.page_px

TURNS = [
    ("user", ["Can you remind me what we decided about the Lisbon trip in March?",
              "I think it was the 14th to the 21st, but my notes say otherwise."]),
    ("assistant", ["You booked flight TP 1351 leaving at 07:40 and the hotel near Rossio.",
                   "The total came to 1,284 euros for two people, breakfast included.",
                   "Your sister joins on the 17th and stays until the end of the week."]),
    ("user", ["Perfect. What was the name of the restaurant my colleague recommended?"]),
    ("assistant", ["It was Cervejaria Ramiro, famous for seafood; book two days ahead.",
                   "They close on Mondays, so plan it for Tuesday evening instead."]),
    ("user", ["Thanks! Also add a reminder to renew my passport before February 2."]),
]


def typeset(turns=TURNS, font_px: int = 12) -> tuple[Image.Image, list[LineBox]]:
    """One page as the renderer lays it out: each turn's grey header ("user 10:02:") starts the
    row its first line goes on; a box around each line's ink, 2 px wider, listed in reading order."""
    font = ImageFont.truetype(FONT, font_px)
    image = Image.new("L", (PAGE_PX, PAGE_PX), 255)
    draw = ImageDraw.Draw(image)
    lines, y = [], 40

    def put(x: int, text: str, turn: int, kind: str, ink: int) -> int:
        draw.text((x, y), text, font=font, fill=ink)
        x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
        lines.append(LineBox(turn, (x0 - 2, y0 - 2, x1 + 2, y1 + 2), text, kind))
        return x1

    for turn, (role, texts) in enumerate(turns):
        x = put(24, f"{role} 10:{turn:02d}:", turn, "header", 110) + font_px
        for text in texts:
            put(x, text, turn, "text", 0)
            x, y = 24, y + round(font_px * 1.3)
    return image, lines


def view(image: Image.Image, lines: list[LineBox], px: int, keep_boxes: bool = True) -> PageView:
    tier = next(t for t in DEEPSEEK_OCR2.tiers if t.px == px)
    k = px / PAGE_PX
    shrunk = image if px == PAGE_PX else image.resize((px, px), Image.Resampling.LANCZOS)
    boxes = [LineBox(l.turn, tuple(round(v * k) for v in l.box), l.text, l.kind) for l in lines]
    return PageView(shrunk, tier, boxes if keep_boxes else [])


def cer(decoded: str, source: str) -> float:
    a, b = re.sub(r"\s+", "", decoded), re.sub(r"\s+", "", source)
    return Levenshtein.distance(a, b) / len(b)


def source_of(lines: list[LineBox]) -> str:
    return "\n".join(l.text for l in lines)


def rows_of(lines: list[LineBox]) -> list[LineBox]:
    """The page's rows: a header and the first line of its turn share one, and detection reads
    them as one piece."""
    rows: list[LineBox] = []
    for line in lines:
        if rows and abs(rows[-1].box[1] - line.box[1]) < 4:
            last = rows[-1]
            rows[-1] = LineBox(last.turn, (last.box[0], last.box[1], line.box[2], line.box[3]),
                               f"{last.text} {line.text}", last.kind)
        else:
            rows.append(line)
    return rows


def assert_turns_right(decoded, lines: list[LineBox]) -> None:
    """Every decoded line carries the turn of the typeset line it reads as."""
    for got in decoded.lines:
        best = min(lines, key=lambda l: Levenshtein.normalized_distance(got.text, l.text))
        assert Levenshtein.normalized_distance(got.text, best.text) < 0.1, got.text
        assert got.turn == best.turn, (got.text, got.turn, best.turn)


@pytest.fixture(scope="module")
def page():
    return typeset()


@pytest.fixture(scope="module")
def lines_reader():
    return RapidOcrBackend(mode="lines")


@pytest.fixture(scope="module")
def page_reader():
    return RapidOcrBackend(mode="page")


@pytest.fixture(scope="module")
def read_by_lines(page, lines_reader):
    """The page read with line crops at 1024 px and at 256 px (a mosaic16 cell), in one call."""
    image, lines = page
    engine = lines_reader._load()
    original = engine._load_det_model

    def no_detection():
        raise AssertionError("lines mode ran text detection")

    engine._load_det_model = no_detection       # lines mode must not detect
    try:
        return lines_reader.decode([view(image, lines, 1024), view(image, lines, 256)])
    finally:
        engine._load_det_model = original


def body_of(lines: list[LineBox]) -> list[LineBox]:
    """The turns' text lines: what a whole-page read in lines mode reads (headers are metadata)."""
    return [l for l in lines if l.kind != "header"]


def test_line_crops_read_the_page_back_at_1024(page, read_by_lines):
    _, lines = page
    sharp = read_by_lines[0]
    assert cer(sharp.text, source_of(body_of(lines))) < 0.02
    assert len(sharp.lines) == len(body_of(lines))
    assert sharp.text == "\n".join(l.text for l in sharp.lines)
    assert all(0.5 <= l.score <= 1.0 for l in sharp.lines)
    assert sharp.seconds > 0


def test_line_crops_keep_each_lines_turn_in_page_order(page, read_by_lines):
    _, lines = page
    sharp = read_by_lines[0]
    assert_turns_right(sharp, lines)
    assert [l.turn for l in sharp.lines] == [l.turn for l in body_of(lines)]


def test_header_boxes_are_not_read_unless_asked(page, lines_reader):
    """The header prefix ("user 10:02:") is metadata every reader of decoded text strips again:
    lines mode spends no OCR on it by default; ``headers=True`` reads it (its own cache key)."""
    image, lines = page
    with_headers = RapidOcrBackend(mode="lines", headers=True)
    got = with_headers.decode([view(image, lines, 1024)])[0]
    assert len(got.lines) == len(lines) and cer(got.text, source_of(lines)) < 0.02
    assert [l.turn for l in got.lines] == [l.turn for l in lines]
    assert with_headers.revision != lines_reader.revision and not lines_reader.headers
    from optimem.memory.fragments import strip_header
    heads = {l.turn: [l.text] for l in lines if l.kind == "header"}
    stripped = [x for x in (strip_header({"text": l.text}, heads[l.turn]) for l in got.lines) if x]
    assert cer("\n".join(x["text"] for x in stripped), source_of(body_of(lines))) < 0.02   # same body


def test_batched_crops_come_back_in_reading_order(page):
    """Crops batched by similar width are read out of order, and put back in the renderer's order."""
    image, lines = page
    got = RapidOcrBackend(mode="lines", batch=4).decode([view(image, lines, 1024)])[0]
    assert [l.turn for l in got.lines] == [l.turn for l in body_of(lines)]
    assert cer(got.text, source_of(body_of(lines))) < 0.02


def test_a_page_shrunk_to_a_mosaic16_cell_reads_much_worse(page, read_by_lines):
    """The forgetting is real: 256 px of a 12 px-font page is mostly unreadable."""
    _, lines = page
    sharp, faded = (cer(d.text, source_of(body_of(lines))) for d in read_by_lines)
    assert faded > 0.3
    assert faded > 10 * max(sharp, 0.005)


def test_page_mode_detects_and_attributes_lines_to_turns(page, page_reader):
    image, lines = page
    got = page_reader.decode([view(image, lines, 1024)])[0]
    assert cer(got.text, source_of(lines)) < 0.02
    assert_turns_right(got, rows_of(lines))
    assert [l.turn for l in got.lines] == sorted(l.turn for l in got.lines)   # top to bottom


def test_page_mode_places_text_under_no_box_where_it_stands(page, page_reader):
    """Text the boxes do not cover (here: turns 1 and 3 lost their boxes) still reads in page
    order, between the boxed lines, with no turn."""
    image, lines = page
    kept = [l for l in lines if l.turn not in (1, 3)]
    got = page_reader.decode([PageView(image, DEEPSEEK_OCR2["g1024"], kept)])[0]
    rows = rows_of(lines)
    order = [min(range(len(rows)), key=lambda i: Levenshtein.distance(l.text, rows[i].text)) for l in got.lines]
    assert order == list(range(len(rows)))
    assert [l.turn for l in got.lines] == [None if r.turn in (1, 3) else r.turn for r in rows]


def test_without_line_boxes_lines_mode_falls_back_to_detection(page, lines_reader):
    image, lines = page
    got = lines_reader.decode([view(image, lines, 1024, keep_boxes=False)])[0]
    assert cer(got.text, source_of(lines)) < 0.02
    assert all(l.turn is None for l in got.lines)
    rows = rows_of(lines)       # read top to bottom: every row is found, in order
    order = [min(range(len(rows)), key=lambda i: Levenshtein.distance(l.text, rows[i].text)) for l in got.lines]
    assert order == list(range(len(rows)))


def test_an_empty_page_reads_as_nothing(lines_reader):
    blank = PageView(Image.new("L", (512, 512), 255), DEEPSEEK_OCR2["mosaic4"], [])
    boxed = PageView(Image.new("L", (512, 512), 255), DEEPSEEK_OCR2["mosaic4"], [LineBox(0, (10, 10, 200, 24))])
    for got in lines_reader.decode([blank, boxed]):
        assert got.text == "" and got.lines == []


def test_encode_says_visual_tokens_need_deepseek(lines_reader, page):
    with pytest.raises(NotImplementedError, match="OPTIMEM_BACKEND=deepseek-ocr2"):
        lines_reader.encode([view(*page, 1024)])


def test_meets_the_backend_interface_and_names_its_models(lines_reader, page_reader):
    assert isinstance(lines_reader, Backend)
    assert lines_reader.name == "rapidocr"
    assert lines_reader.ladder is DEEPSEEK_OCR2
    assert lines_reader.mode == "lines"        # the measured winner is the default
    assert "PP-OCRv6_det_small" in lines_reader.revision and "PP-OCRv6_rec_small" in lines_reader.revision
    assert lines_reader.revision != page_reader.revision    # modes read differently: separate caches
    assert not lines_reader._load().use_cls                 # the angle classifier flips lines: off


def test_the_engine_loads_once_under_concurrent_first_use():
    reader = RapidOcrBackend()
    start = threading.Barrier(4)
    engines = []

    def first_use():
        start.wait()
        engines.append(reader._load())

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(engines) == 4 and all(e is engines[0] for e in engines)


def test_a_missing_rapidocr_is_model_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr", None)     # import rapidocr now raises ImportError
    with pytest.raises(ModelUnavailable, match="rapidocr"):
        RapidOcrBackend()


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="lines"):
        RapidOcrBackend(mode="fast")


def test_ocr_threads_reach_the_recogniser_and_its_threads_do_not_spin(tmp_path):
    """OPTIMEM_OCR_THREADS sets the recogniser's threads (0: every core, at most 4); its threads
    sleep between runs (spinning ones took the cores another job needed: bench/RESULTS.md)."""
    import os

    from optimem.model.backends import load
    from optimem.settings import Settings

    cores = min(len(os.sched_getaffinity(0)), 4)
    assert load(Settings.from_env({}, data_dir=tmp_path)).threads == cores
    reader = load(Settings.from_env({"OPTIMEM_OCR_THREADS": "1"}, data_dir=tmp_path))
    assert reader.threads == 1
    options = reader._load().text_rec.session.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
