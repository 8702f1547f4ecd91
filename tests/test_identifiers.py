"""Identifiers in prose (issue 14): the recogniser finds each kind and leaves chat prose alone, the
typesetter sets what it finds in the identifier face and everything else as before, line boxes
still hold the exact source text, and the benchmark's generator and plumbing are deterministic."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from optimem.memory.lab import identifiers as bench
from optimem.model.base import Decoded, DecodedLine
from optimem.renderer import Layout, TurnText, typeset
from optimem.renderer.faces import IDENT_DEFAULT, IDENT_FACES, MONO, SERIF, Ident, faces
from optimem.renderer.identifiers import find
from optimem.renderer.transcript import Record
from optimem.renderer.wrap import wrap

LAB = dict(page_px=1024, font_px=12, line_spacing=1.15)


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def found(text: str) -> list[str]:
    return [text[a:b] for a, b in find(text)]


def test_the_recogniser_finds_every_generated_identifier_whole():
    planted = bench.generate(seed=3, per_kind=10)
    assert {p.kind for p in planted} == set(bench.KINDS) and any(p.cjk for p in planted)
    for p in planted:
        assert found(p.text) == [p.value], (p.kind, p.text)


@pytest.mark.parametrize("text, want", [
    ("my code is QX-4817-A2B.", ["QX-4817-A2B"]),
    ("mail j.okafor42@mail.example.org, thanks", ["j.okafor42@mail.example.org"]),
    ("see https://ex.com/a?b=1).", ["https://ex.com/a?b=1"]),
    ("call +1 415-555-0132 now or (212) 555-0187", ["+1 415-555-0132", "(212) 555-0187"]),
    ("hash 9f3a0c7be21d and key O0Il1rnmB8S5", ["9f3a0c7be21d", "O0Il1rnmB8S5"]),
    ("我的订单号是QX-4817-A2B。", ["QX-4817-A2B"]),
    ("born 2018-05-02, account 4417523", ["2018-05-02", "4417523"]),
])
def test_the_recogniser_finds_each_kind(text, want):
    assert found(text) == want


@pytest.mark.parametrize("text", [
    "at 5:30pm on the 3rd we played 90s music", "it was 19:38 and 3.5 stars, 100 people",
    "I have an mp3 and a ps4, covid19 was rough", "I ran 10k in 45 mins, 2x faster", "I'm 25 and she is 1990 born",
    "hello! how are you doing today? www is not a url", "a.b@c", "我们在两核的机器上测量了时间。",
])
def test_prose_is_left_alone(text):
    assert found(text) == []


def test_identifier_spans_are_set_in_the_identifier_face_and_prose_as_before():
    face = faces(12, IDENT_DEFAULT)
    text = "the locker code is QX-4817-A2B, thanks"
    line, = wrap(Record("text", 0, 0, text), face, 2000)
    assert [line.text[a:b] for a, b in line.marks] == ["QX-4817-A2B"]
    assert wrap(Record("code", 0, 0, text), face, 2000)[0].marks == ()         # code is mono already
    assert wrap(Record("text", 0, 0, text), faces(12, "off"), 2000)[0].marks == ()

    def page(content: str, ident: str) -> tuple[np.ndarray, list]:
        p = typeset([TurnText(0, "user", content, "2018-05-02T19:38:00Z")], Layout(**LAB, ident=ident))[0]
        return np.array(Image.open(io.BytesIO(p.png))), p.lines

    plain = "no identifiers on this line, just chat about the weather"
    assert (page(plain, "off")[0] == page(plain, IDENT_DEFAULT)[0]).all()       # prose: same pixels
    before, lines = page(text, "off")
    after, lines_after = page(text, IDENT_DEFAULT)
    assert [line.text for line in lines] == [line.text for line in lines_after]
    body = next(line for line in lines if line.kind == "text")
    x0, y0, x1, y1 = body.box
    # The identifier's row may sit a few pixels lower (it is ``lead`` px taller); the header and the
    # prose before the identifier on it are the same ink, moved down alike; the identifier is not.
    cut = round(x0 + face.width("the locker code is ", "text")) - 2
    lead = IDENT_FACES[IDENT_DEFAULT].lead
    moved = [dy for dy in range(lead + 1) if (after[y0 + dy:y1 + dy, :cut] == before[y0:y1, :cut]).all()]
    assert moved and not (after[y0 + moved[0]:y1 + moved[0], cut:] == before[y0:y1, cut:]).all()


def test_line_boxes_still_hold_the_exact_source_text():
    planted = bench.generate(seed=5, per_kind=4)
    turns = bench.plant([{"role": "assistant", "content": "ok, noted " * 20, "time": "2018-05-02T19:38:00Z"}] * 40,
                        planted)
    pages = typeset([TurnText(i, t["role"], t["content"], t["time"]) for i, t in enumerate(turns)],
                    Layout(page_px=512, font_px=12, line_spacing=1.15))
    assert len(pages) > 1
    for p in planted:
        text = "".join(line.text for page in pages for line in page.lines if line.turn == p.index and line.kind == "text")
        assert squeeze(text) == squeeze(p.text)


def test_every_identifier_face_is_shipped_and_the_layout_refuses_unknown_ones():
    for entry in IDENT_FACES.values():
        if entry is not None:
            for path in (entry.path, *(alt for alt, _ in entry.alts)):
                assert path.is_file() and "fonts" in path.parts
    with pytest.raises(ValueError):
        Layout(ident="comic")


def test_generation_and_typesetting_are_deterministic():
    a, b = bench.generate(seed=9), bench.generate(seed=9)
    assert [(p.kind, p.value, p.text) for p in a] == [(p.kind, p.value, p.text) for p in b]
    assert [p.value for p in bench.generate(seed=10)] != [p.value for p in a]
    turns = [TurnText(i, "user", p.text, None) for i, p in enumerate(a[:20])]
    assert [p.png for p in typeset(turns, Layout(**LAB))] == [p.png for p in typeset(turns, Layout(**LAB))]


class SourceReader:
    """Reads back exactly what each line box says: the benchmark's plumbing, without OCR."""
    name = "source"

    def decode(self, views):
        return [Decoded("", [DecodedLine(line.text, 1.0, line.turn) for line in view.lines]) for view in views]


def test_the_benchmark_scores_a_perfect_reader_perfect():
    report = bench.run(IDENT_DEFAULT, per_kind=2, tiers=["g1024", "mosaic4"], prose_pages=1,
                       capacity_conversations=3, backend=SourceReader())
    assert set(report["views"]) == {"1024", "512"}
    for view in report["views"].values():
        assert view["exact"] == 1.0 and view["prose_precision"] == 1.0
        assert all(k["exact"] == k["of"] == 2 for k in view["kinds"].values())
    assert report["capacity"]["tokens_per_page"] > 0
    assert "setting" in bench.table([report])


def read_back(reader, texts: list[str], px: int, ident: str = IDENT_DEFAULT) -> dict[int, str]:
    """What the CPU reader makes of each text, one user turn each on one lab-layout page, at view ``px``."""
    turns = [TurnText(i, "user", t, "2018-05-02T19:38:00Z") for i, t in enumerate(texts)]
    page = typeset(turns, Layout(**LAB, ident=ident))[0]
    return bench.read_turns(reader, [page], set(range(len(texts))), px, 1024, bench.DEEPSEEK_OCR2)[0]


def test_the_cpu_reader_reads_identifiers_back_exactly_at_full_size(reader):
    values = ["QX-4817-A2B", "maya.okafor87@fastmail.com", "https://drive.example.com/f/8Kq2Zr0x",
              "+1 415-555-0132", "9f3a0c7be21d", "我的订单号是ORD-58213-ZK，别忘了。"]
    got = read_back(reader, [f"keep this: {v}" if i < 5 else v for i, v in enumerate(values)], 1024)
    for i, v in enumerate(values):
        value = found(v)[0] if i == 5 else v
        assert bench.exact(value, got.get(i, "")), (value, got.get(i))


def test_a_row_that_holds_an_identifier_is_taller_and_the_rest_keep_the_pitch():
    lead = IDENT_FACES[IDENT_DEFAULT].lead if IDENT_FACES[IDENT_DEFAULT] else 0
    content = ["just chat", "the locker code is QX-4817-A2B", "more chat", "and more"]
    turns = [TurnText(i, "user", c, "2018-05-02T19:38:00Z") for i, c in enumerate(content)]

    def tops(ident: str) -> list[int]:
        page = typeset(turns, Layout(**LAB, ident=ident))[0]
        return [line.box[1] for line in page.lines if line.kind == "header"]

    off, on = tops("off"), tops(IDENT_DEFAULT)
    assert on[0] == off[0]
    assert 0 <= on[1] - off[1] <= lead          # the identifier's row: its baseline a little lower ...
    assert on[2] - off[2] == on[3] - off[3] == lead     # ... and ``lead`` px taller; the rows after keep the pitch


def test_identifier_rows_cost_page_room_only_where_there_are_identifiers():
    lay = Layout(**LAB, ident=IDENT_DEFAULT)
    chat = [TurnText(i, "user", "no identifiers here, just chat " * 3, "2018-05-02T19:38:00Z") for i in range(200)]
    plain_off = typeset(chat, Layout(**LAB, ident="off"))
    assert [(p.first_turn, p.last_turn) for p in typeset(chat, lay)] == [(p.first_turn, p.last_turn) for p in plain_off]
    dense = [TurnText(i, "user", f"my code is QX-{4000 + i}-A2B", "2018-05-02T19:38:00Z") for i in range(200)]
    pages = typeset(dense, lay)
    per_page = plain_off[0].last_turn + 1
    if lay.lead:        # every row taller: fewer rows a page, and every one of them still on it
        assert pages[0].last_turn + 1 == int((lay.page_px - 2 * lay.margin_px) / (lay.pitch + lay.lead) + 1e-9)
        assert pages[0].last_turn + 1 < per_page
    for page in pages:
        assert max(line.box[3] for line in page.lines) <= lay.page_px - lay.margin_px + 2
    assert lay.fits(lay.rows, 0) and not lay.fits(lay.rows + 1, 0)
    assert lay.fits(lay.rows, lay.rows) == (lay.lead == 0)


def test_off_pages_keep_the_fixed_grid():
    """With identifiers set as prose, a page is the grid it always was: ``rows`` rows of ``pitch``."""
    lay = Layout(**LAB, ident="off")
    assert lay.lead == 0
    chat = [TurnText(i, "user", f"my code is QX-{4000 + i}-A2B", "2018-05-02T19:38:00Z") for i in range(200)]
    page = typeset(chat, lay)[0]
    assert page.last_turn + 1 == lay.rows
    heads = [line.box for line in page.lines if line.kind == "header"]
    assert all(abs(box[1] - heads[0][1] - n * lay.pitch) < 1.01 for n, box in enumerate(heads))


def test_the_default_sets_identifiers_six_pixels_larger_in_serif_with_the_monospaces_l_and_0_on_taller_rows():
    # Chosen by bench/identifiers.py on seeds 20-23, confirmed on held-out seeds 14-17 (see faces.IDENT_FACES).
    assert IDENT_DEFAULT == "serif+6_r8+mono_l0" and IDENT_FACES[IDENT_DEFAULT] == Ident(SERIF, 6, 8, ((MONO, "l0"),))
    assert Layout().ident == IDENT_DEFAULT and Layout().lead == 8 and Layout(ident="off").lead == 0
    face = faces(12)
    assert face.fonts[3].size == face.fonts[4].size == 18
    mono, serif = face.glyph("l", "ident")[1], face.glyph("I", "ident")[1]
    assert face.fonts[mono].path.endswith("DejaVuSansMono.ttf") and face.glyph("0", "ident")[1] == mono
    assert face.fonts[serif].path.endswith("DejaVuSerif.ttf") and {face.glyph(c, "ident")[1] for c in "1O5S8B"} == {serif}
    assert face.glyph("l", "text")[1] == face.glyph("0", "text")[1] == 0      # prose keeps the body face


def test_real_chitchat_loses_almost_no_page_capacity():
    """Identifier rows are rare in real chat, and a page's grid has slack for one taller row: pages
    hold what they did (issue 14 allows 5% fewer tokens a page; real chitchat loses well under 1%)."""
    from optimem.memory.lab import corpus
    turns = [t for _, chat in corpus.conversations(limit=60) for t in chat]
    texts = [TurnText(i, t["role"], t["content"], t.get("time")) for i, t in enumerate(turns)]
    pages = {ident: typeset(texts, Layout(**LAB, ident=ident)) for ident in ("off", IDENT_DEFAULT)}
    edges = {ident: [(p.last_turn, p.end_offset) for p in got] for ident, got in pages.items()}
    assert len(edges["off"]) > 20 and sum(a != b for a, b in zip(*edges.values())) <= len(edges["off"]) // 4
    before, after = (bench.tokens_per_page(texts, pages[ident]) for ident in ("off", IDENT_DEFAULT))
    assert after >= 0.99 * before, (before, after)


def test_the_cpu_reader_reads_identifiers_back_exactly_in_the_mosaic_cell(reader):
    values = ["QX-4817-A2B", "maya.okafor87@fastmail.com", "+1 415-555-0132", "ORD-58213-ZK", "(212) 555-0187"]
    got = read_back(reader, [f"keep this: {v}" for v in values], 512)
    for i, v in enumerate(values):
        assert bench.exact(v, got.get(i, "")), (v, got.get(i))


def test_an_l_among_digits_and_a_zero_beside_letters_read_back_exactly(reader):
    # Confusable-glyph strings the previous default (DejaVu Serif's own l and 0) read back wrong at
    # full size: an l after a digit came back as 1, a 0 beside letters as O.
    values = ["0lS8m8Bl1O", "1SB85OBl", "nB0l0mnm8", "S5B1rl5l", "5n0m1BlO"]
    got = read_back(reader, [f"the wifi password is {v}" for v in values], 1024)
    assert [v for i, v in enumerate(values) if not bench.exact(v, got.get(i, ""))] == []


def test_the_picture_shows_each_setting_at_both_sizes(tmp_path):
    text = ("the locker code is QX-4817-A2B",)
    bench.picture(["off"], tmp_path / "one.png", texts=text)
    bench.picture(["off", IDENT_DEFAULT], tmp_path / "two.png", texts=text)
    one, two = (np.array(Image.open(tmp_path / name).convert("L")) for name in ("one.png", "two.png"))
    assert one.shape[1] == two.shape[1] == 560 and two.shape[0] > one.shape[0]
    assert np.array_equal(two[:one.shape[0]], one)              # "off" first, as drawn alone ...
    assert not np.array_equal(two[one.shape[0]:2 * one.shape[0]], one)   # ... then the default, set otherwise
