"""The dotted zero's probability gathered before the CTC decode (``model.ctc_zeros``): a frame the
zero-like characters win together goes to their best one; a frame one character clearly wins, or
that a zero-like character wins already, is left alone."""
from __future__ import annotations

import numpy as np

from optimem.model.ctc_zeros import ZeroAwareDecode, gather_zeros
from optimem.model.rapidocr_backend import RapidOcrBackend

CHARS = ["blank", "0", "@", "θ", "O", "1"]
ZEROS = np.array([1, 2, 3])


def frames(*rows: dict[str, float]) -> np.ndarray:
    out = np.zeros((1, len(rows), len(CHARS)), dtype=np.float32)
    for f, row in enumerate(rows):
        for c, p in row.items():
            out[0, f, CHARS.index(c)] = p
    return out


def test_a_frame_the_zero_like_characters_win_together_goes_to_their_best():
    preds = frames({"blank": 0.34, "@": 0.32, "0": 0.18, "1": 0.16},    # a dropped zero ("1lVO1bz")
                   {"O": 0.41, "@": 0.29, "θ": 0.2, "1": 0.1})           # a zero read O
    got = gather_zeros(preds, ZEROS)
    assert [CHARS[i] for i in got.argmax(-1)[0]] == ["@", "@"]
    assert [CHARS[i] for i in preds.argmax(-1)[0]] == ["blank", "O"]      # the input is not changed


def test_frames_one_character_wins_clearly_are_left_alone():
    preds = frames({"O": 0.98, "0": 0.01, "@": 0.01}, {"@": 0.6, "0": 0.3, "blank": 0.1},
                   {"blank": 0.9, "0": 0.05, "θ": 0.05}, {"1": 0.7, "0": 0.3})     # 0.3, twice, is not 0.7
    assert gather_zeros(preds, ZEROS) is preds


def test_the_reader_gathers_zeros_only_for_a_face_with_the_dotted_zero():
    on, off = RapidOcrBackend(), RapidOcrBackend(ident="off")
    assert isinstance(on._load()._load_rec_model().postprocess_op, ZeroAwareDecode)
    assert not isinstance(off._load()._load_rec_model().postprocess_op, ZeroAwareDecode)
    assert on.revision != off.revision


def test_a_line_with_greek_letters_is_decoded_as_it_was():
    chars = CHARS + ["α"]
    preds = np.zeros((2, 2, len(chars)), dtype=np.float32)
    preds[:, 0, chars.index("O")], preds[:, 0, chars.index("θ")], preds[:, 0, chars.index("0")] = 0.4, 0.35, 0.25
    preds[0, 1, chars.index("α")] = 1.0       # a Greek line: its Θ read as O stays as read
    preds[1, 1, chars.index("1")] = 1.0
    got = gather_zeros(preds, ZEROS, skip_ids=np.array([chars.index("α")]))
    assert [chars[i] for i in got[0].argmax(-1)] == ["O", "α"]
    assert [chars[i] for i in got[1].argmax(-1)] == ["θ", "1"]


def test_only_views_as_small_as_a_mosaic_cell_are_decoded_with_zeros_gathered():
    from optimem.memory import reading
    from optimem.model.tiers import DEEPSEEK_OCR2
    from optimem.renderer import Layout, TurnText, typeset

    page = typeset([TurnText(0, "user", "the code is 2O04057O and 0Ov1flbbt", "2018-05-02T19:38:00Z")],
                   Layout(page_px=1024, font_px=12, line_spacing=1.15))[0]
    reader = RapidOcrBackend()
    decoder = reader._load()._load_rec_model().postprocess_op
    for name, gathered in (("g1024", False), ("v768", False), ("mosaic4", True), ("g1024", False)):
        tier = DEEPSEEK_OCR2[name]
        reader.decode([reading.page_view(page.png, page.lines, tier, 1024)])
        assert decoder.active is gathered, name


def test_recall_at_mosaic4_gives_back_zeros_the_recogniser_all_but_lost(memory, redis_server, tmp_path, tenant):
    """Through Memory.recall, as a user asks for an old turn: without gathering, the reader took
    both zeros of this code (from the probe's held8 part) for round O's."""
    from optimem.memory.lab.corpus import longest
    from optimem.memory.service import Memory

    from .conftest import settings_for

    turns = [dict(t) for t in longest()[1][:300]]
    turns[138] = {"role": "user", "content": "Be the cool kid in town - recovery code OUK0g0Ueo", "time": turns[138]["time"]}
    plain = RapidOcrBackend()
    plain._load()._load_rec_model().postprocess_op.margin = 0.0     # the decode as rapidocr makes it
    without = Memory(settings_for(redis_server, tmp_path / "plain"), backend=plain).open()
    try:
        for m, t in ((memory, tenant), (without, tenant + "p")):
            m.create_session("m4", curve={"kind": "step", "steps": [[0, "mosaic4"]]}, tenant=t)
            m.append("m4", turns, tenant=t)
        got = memory.recall("m4", turn=138, tenant=tenant).hits[0]
        before = without.recall("m4", turn=138, tenant=tenant + "p").hits[0]
        assert got.tier == before.tier == "mosaic4"
        assert "OUK0g0Ueo" in got.text and "OUK0g0Ueo" not in before.text, (got.text, before.text)
    finally:
        without.close()
