"""Identifiers at mosaic4 on unseen data (issue 22 item 4): the CPU reader takes the identifier face's
dotted zero for a theta or an at sign in the 512 px cell; the reader puts it back to 0 inside
identifiers only, so recall gives the identifier back exactly, and Greek, emails and handles are
left as they were read. The probe itself (``bench/identifiers_unseen.py``) keeps its two parts apart."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from optimem.memory.lab.corpus import longest
from optimem.memory.service import Memory
from optimem.model.rapidocr_backend import RapidOcrBackend
from optimem.renderer.faces import IDENT_DEFAULT, dotted_zero
from optimem.renderer.identifiers import find, restore

from .conftest import settings_for

MOSAIC4 = {"kind": "step", "steps": [[0, "mosaic4"]]}
# Turns of the probe's tune part (real chitchat utterances with an identifier spliced in) that the
# reader got wrong at mosaic4 before: a230d4e read as a23@d4e, OlOM0V0OIC as OlOM@V@OIC.
COMMIT = "actually my little sister has stomach aches from regular milk The commit is a230d4e."
CODE = "I've only done V4 and that was indoors, my code was OlOM0V0OIC"


def conversation() -> list[dict]:
    """300 real turns with a planted user turn every 12 from turn 6; the two above at 126 and 174."""
    turns = [dict(t) for t in longest()[1][:300]]
    filler = [
        "unless there is a detox of computers Check this out https://youtube.com/gp/product/gf0zatl.",
        "actually my little sister has stomach aches from regular milk The commit is a230d4e.",
        "my sister told me that I would get more dates at school with a nice and sporty convertible cabriolet, my code was 1fzd1O0l",
        "well that was nice because I made a ton of money before the big bang update. I had a bunch of money Email me at lgarcia@yahoo.com.",
        "Oh, sour apple all the way My code was 09G0EZlIR.",
        "I've only done V4 and that was indoors, my code was OlOM0V0OIC",
        "lol but havent decided yet would love to do some data science for a company The wifi password is 00DJ1OVl.",
        "I hope so, I don't want to bore you, the wifi password is 0Ov1flbbt",
        "service project and it was a long day with a very dead phone, the wifi password is Il0Im030",
    ]
    for n, slot in enumerate(range(6, 175, 12)):
        turns[slot] = {"role": "user", "content": filler[n % len(filler)], "time": turns[slot]["time"]}
    assert turns[126]["content"] == COMMIT and turns[174]["content"] == CODE
    return turns


def test_recall_at_mosaic4_gives_back_identifiers_whose_dotted_zero_was_misread(memory, redis_server, tmp_path, tenant):
    memory.create_session("m4", curve=MOSAIC4, tenant=tenant)
    memory.append("m4", conversation(), tenant=tenant)
    plain = Memory(settings_for(redis_server, tmp_path / "plain"), backend=RapidOcrBackend(ident="off")).open()
    try:    # the same pages read without putting zeros back: what recall gave before
        plain.create_session("m4", curve=MOSAIC4, tenant=tenant + "p")
        plain.append("m4", conversation(), tenant=tenant + "p")
        for turn, value in ((126, "a230d4e"), (174, "OlOM0V0OIC")):
            before = plain.recall("m4", turn=turn, tenant=tenant + "p").hits[0]
            after = memory.recall("m4", turn=turn, tenant=tenant).hits[0]
            assert before.tier == after.tier == "mosaic4"
            assert value not in before.text.replace(" ", "") and "@" in before.text, before.text
            assert value in after.text.replace(" ", ""), after.text
    finally:
        plain.close()


@pytest.mark.parametrize("read, want", [
    ("The commit is a23@d4e.", "The commit is a230d4e."),
    ("my code was OlOM@V@OIC", "my code was OlOM0V0OIC"),
    ("check this out https://youtube.com/gp/product/gfθzatl.", "check this out https://youtube.com/gp/product/gf0zatl."),
    ("email me at noor_tanθ@gmail.com", "email me at noor_tan0@gmail.com"),
    ("the wifi password is @0DJ1OVl.", "the wifi password is 00DJ1OVl."),
    ("the password is 1 fzd 1O@l", "the password is 1 fzd 1O0l"),
    ("Call me at (658) 57@-9128.", "Call me at (658) 570-9128."),
    ("promo 1la1-@OZO and sha256:@e01e67de", "promo 1la1-0OZO and sha256:0e01e67de"),
    ("the key is dl 10xi® and SO-888673-©6", "the key is dl 10xi0 and SO-888673-06"),
    ("got #@797-2247 in the confirmation", "got #0797-2247 in the confirmation"),
    # a hex number's 0x with its zero dropped or read as an at sign, a guessed capital C lowered
    ("btw token x268feef4", "btw token 0x268feef4"),
    ("btw token @x49b7ac45;", "btw token 0x49b7ac45;"),
    ("key id x9c87ed0C: sometimes", "key id 0x9c87ed0c: sometimes"),
    ("Api key @d:ef:79:d3:b8:5b. I would", "Api key 0d:ef:79:d3:b8:5b. I would"),    # a MAC address
    ("Whatsapp 018-129@-6941. psh", "Whatsapp 018-1290-6941. psh"),      # not an email's at sign before ". psh"
    ("(locker combo oo@-M0O-07e)", "(locker combo oo0-M0O-07e)"),       # a group's end: no domain follows
    ("(the id is fe8@::7703:99ec:502d)", "(the id is fe80::7703:99ec:502d)"),
    ("recovery code @@@@@O2O, and", "recovery code 00000O2O, and"),       # zeros side by side
    ("write to Xia_49@@gmx.net if", "write to xia_490@gmx.net if"),       # ... the last one an email's
])
def test_the_dotted_zeros_misreads_go_back_to_zero_inside_identifiers(read, want):
    assert restore(read) == want
    assert restore(read, zeros=False) == read       # a face without the dotted zero: nothing to put back


@pytest.mark.parametrize("read, want", [
    ("My address is esmith@gmail, com.", "My address is esmith@gmail.com."),
    ("Email me at gus.oconnor28@yahoo,com.", "Email me at gus.oconnor28@yahoo.com."),
    ("write to Xia_406@posteo.de if", "write to xia_406@posteo.de if"),      # x, w, s ... differ only in size
    ("contact: uma_276@gmX.net", "contact: uma_276@gmx.net"),
    ("mail JohnSmith@Gmail.com or Sven@GMX.NET", "mail JohnSmith@Gmail.com or sven@GMX.NET"),
    ("(rosa.e,eriksen@mail.ru is my new email)", "(rosa.e.eriksen@mail.ru is my new email)"),
    ("see Www.intranet.acme.local/invite?ref=mysoa8 -", "see www.intranet.acme.local/invite?ref=mysoa8 -"),
    ("HTTPS://wwW.amazon.com/watch?v=HnyN8yO8ikL", "https://www.amazon.com/watch?v=HnyN8yO8ikL"),   # the path keeps its case
    ("The PR is https://bit. ly/Btcunr. I", "The PR is https://bit.ly/Btcunr. I"),
    ("mobile 419,670.2158! and 522.390,3386:", "mobile 419.670.2158! and 522.390.3386:"),   # a dotted phone number
])
def test_an_emails_dot_read_as_a_comma_and_its_size_only_capitals_go_back(read, want):
    assert restore(read) == restore(read, zeros=False) == want


@pytest.mark.parametrize("read", [
    "Η θάλασσα είναι ωραία, θέλω να πάω στο Θησείο",     # Greek prose keeps its thetas
    "ΘΕΣΣΑΛΟΝΙΚΗ 2θ θ = 2θ and θ1",                       # a theta beside no letter or digit, or not an identifier after
    "mail joe.doe42@example.com or foconnor@gmail. com",  # an email's at sign, even with its dot misread
    "follow me @jane99 and @Ov1flbbt",                    # a handle: @ before a letter at a token's start
    "meet @ 5 at https://medium.com/@user",               # a spaced @, and one after a slash
    "I met joe@work, comedy followed, then 5@.",         # a comma after an address, not before a domain
    "email me,joe@x.com about Apple® or Nike©",           # a sentence's comma; marks in words without digits
    "x86 and x64, @xavier, x100000 and 0xDEADBEEF",       # no hex after the x, or a number already whole
    "https://GitHub.com/Owner and https://WWW.BBC.CO.UK",  # capitals a reader does not guess: as written
    "it cost 1,234.5678, then 419,670,2158; see https://x. Then @ab:cd:ef:01",   # amounts; a sentence's dot
])
def test_greek_emails_and_handles_are_left_as_read(read):
    assert restore(read) == read


def test_only_a_reader_of_dotted_zero_pages_puts_zeros_back():
    assert dotted_zero(IDENT_DEFAULT) and not dotted_zero("off") and not dotted_zero("serif+6_r8")
    on, off = RapidOcrBackend(), RapidOcrBackend(ident="off")
    assert on.zeros and not off.zeros
    assert on.revision != off.revision      # cached reads made before are not served as if restored


def test_ipv6_addresses_are_identifiers_and_times_stay_numbers():
    text = "the id is fe80::7703:99ec:502d, at 10:30 we met; 2001:db8:0:0:1:0:0:1 and a::b"
    assert [text[a:b] for a, b in find(text)] == ["fe80::7703:99ec:502d", "2001:db8:0:0:1:0:0:1"]


def test_a_number_sign_goes_with_the_identifier_it_precedes():
    text = "my order number is #OV457878, issue #42, a#12345 and #covid19"
    assert [text[a:b] for a, b in find(text)] == ["#OV457878", "12345"]


def _probe():
    path = Path(__file__).resolve().parents[1] / "bench" / "identifiers_unseen.py"
    spec = importlib.util.spec_from_file_location("identifiers_unseen", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_probes_parts_share_no_shapes_seeds_or_conversations():
    probe = _probe()
    parts = list(probe.PARTS.values())
    tune, held = probe.PARTS["tune"], probe.PARTS["held"]
    assert all(p["family"] != tune["family"] for p in parts[1:]) and probe.PARTS["held3"]["family"] not in "AB"
    seeds = [s for p in parts for s in p["seeds"]]
    assert len(seeds) == len(set(seeds))
    spans = sorted(p["conversations"] for p in parts)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))       # no conversation in two parts
    assert not set(probe.PHRASES["A"]["order"]) & set(probe.PHRASES["B"]["order"])
    hosts = [{"content": "we went hiking near the lake last weekend and it rained"}] * 5
    a, b = (probe.generate(part, seed, 2, hosts) for part, seed in (("tune", 101), ("held", 201)))
    assert {p.kind for p in a} == set(probe.KINDS) and not {p.value for p in a} & {p.value for p in b}
    assert all(p.value in p.text and "hiking" in p.text for p in a + b)      # spliced into a real sentence
    assert [p.value for p in probe.generate("tune", 101, 2, hosts)] == [p.value for p in a]


def test_greek_prose_reads_the_same_with_and_without_restoring(reader):
    """Through the CPU reader: a page of Greek chat with thetas (and one identifier) reads back the
    same whether or not the reader puts zeros back, except inside the identifier."""
    from optimem.memory.lab.identifiers import read_turns
    from optimem.model.tiers import DEEPSEEK_OCR2
    from optimem.renderer import Layout, TurnText, typeset

    texts = ["Η θάλασσα ήταν ήρεμη και θέλαμε να μείνουμε στο Θησείο", "θα τα πούμε αύριο, ο Θοδωρής θα έρθει",
             "the commit is a230d4e and the angle is θ"]
    page = typeset([TurnText(i, "user", t, "2018-05-02T19:38:00Z") for i, t in enumerate(texts)],
                   Layout(page_px=1024, font_px=12, line_spacing=1.15))[0]
    plain = RapidOcrBackend(ident="off")
    for px in (1024, 512):
        got, want = (read_turns(r, [page], {0, 1, 2}, px, 1024, DEEPSEEK_OCR2)[0] for r in (reader, plain))
        assert got[0] == want[0] and got[1] == want[1]
        assert got[2].endswith(want[2][-8:])        # the sentence's own theta, after the identifier, stays
