"""Identifiers on unseen data (issue 22, deliverable 4): one command, a table per tier and JSON.

    python bench/identifiers_unseen.py [--parts tune,held] [--tiers crops,g1024,v768,mosaic4]
                                       [--ident serif+6_r8+mono_l0] [--out bench/identifiers_unseen.json]

A probe kept apart from ``bench/identifiers.py`` (whose generator and seeds chose the identifier
face): its own generator, seven kinds of identifier people paste into chat (order numbers,
confusable strings mixing O/0/I/l/1, emails, URLs, phone numbers, hashes, parcel tracking codes),
each spliced into a real chitchat-dataset utterance (not a template sentence), the utterances
drawn from conversations the other benchmark never uses. Two parts that share nothing:

- ``tune``: seeds 101-102, template family A, conversations 1000-1199 in key order;
- ``held``: seeds 201-202, template family B (other shapes of each kind, other phrasings, other
  places in the sentence), conversations 3000-3199;
- ``held2``: seeds 203-204, family B, conversations 5000-5199: kept back for a second look after
  ``held``'s totals (not its misses) were seen;
- ``held3``: seeds 301-302, family C (shapes and phrasings neither A nor B has, the phrase in
  brackets early in the sentence), conversations 6000-6199: made after ``held`` and ``held2`` were
  read and their misses looked at;
- ``held4``: seeds 401-402, family D (shapes and phrasings none of A-C has, the phrase after the
  first clause), conversations 6400-6599: made after held3's misses were looked at;
- ``held5``: seeds 501-502, family E (a PNR, MAC addresses, API keys, bit.ly and pull-request
  links, 22-digit tracking numbers; the phrase after a colon at the end or as the opening
  sentence), conversations 6600-6799: written before the fifth fix, which was made looking at the
  misses of all of tune and held-held4;
- ``held6``: seeds 601-602, family F (eBay-style order ids, letters-only confusables, IP
  addresses, wallets, spreadsheet links; quoted at the end or an opening clause), conversations
  6800-6999: written after held5's one read and before the sixth fix, which looked at held5's
  misses;
- ``held7``: seeds 701-702, family G (SSCC and UPS codes, IPv6 addresses, map and image links,
  Indian and bracketed phone numbers; in brackets at the very end), conversations 7000-7167:
  written before the recogniser's zero-like characters were gathered (``model.ctc_zeros``),
  which was tuned on every other part;
- ``held8``: seeds 801-802, family H (release tags with a hash, GitHub tokens, Spotify and form
  links, Australian and spaced phone numbers, digits-and-O codes; before "so"/"and"/"but" or after
  a dash), conversations 2000-2199: written after held7's one read and before the fixes made looking at its misses (bench/RESULTS.md says
  what each part measured).

Fixes are made looking at ``tune`` only; ``held`` is read once at the end. Each part is typeset
with the service's layout (12 px, 1.15 line spacing, the identifier face) and every planted turn's
own text lines are read back by the CPU reader at each tier's view, as recall reads one turn
(``memory.reading``: the page shrunk to the tier's view, the turn's line boxes cropped and
recognised). A read is exact when the identifier's characters, whitespace ignored, are in what was
read of its turn. Beside it: character precision of the ordinary turns on the first pages (prose
must not pay for identifiers).
"""
from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

from optimem import renderer  # noqa: E402
from optimem.memory.lab import corpus  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.lab.identifiers import layout, plant, read_turns  # noqa: E402
from optimem.memory.recall import char_error, squash  # noqa: E402
from optimem.model.tiers import DEEPSEEK_OCR2  # noqa: E402
from optimem.renderer.faces import IDENT_DEFAULT  # noqa: E402
from optimem.renderer.identifiers import find  # noqa: E402

KINDS = ("order", "confusable", "email", "url", "phone", "hash", "tracking")
PARTS = {"tune": {"seeds": (101, 102), "family": "A", "conversations": (1000, 1200)},
         "held": {"seeds": (201, 202), "family": "B", "conversations": (3000, 3200)},
         # a second held-back part, read once after the first one's totals were seen (bench/RESULTS.md)
         "held2": {"seeds": (203, 204), "family": "B", "conversations": (5000, 5200)},
         # after held and held2 were read and their misses looked at: new templates, read once
         "held3": {"seeds": (301, 302), "family": "C", "conversations": (6000, 6200)},
         # after held3's misses were looked at: new templates again, read once
         "held4": {"seeds": (401, 402), "family": "D", "conversations": (6400, 6600)},
         # after held4's misses (and all of A-D's) were looked at: family E, written before those
         # fixes were made, read once
         "held5": {"seeds": (501, 502), "family": "E", "conversations": (6600, 6800)},
         # written after held5's one read, before the sixth fix, which looked at held5's misses
         "held6": {"seeds": (601, 602), "family": "F", "conversations": (6800, 7000)},
         # written before the dotted zero's probability was gathered in the decode (model.ctc_zeros)
         "held7": {"seeds": (701, 702), "family": "G", "conversations": (7000, 7168)},
         # written after held7's one read, before the fixes that looked at its misses
         "held8": {"seeds": (801, 802), "family": "H", "conversations": (2000, 2200)},
         # written after held8's one read, before the full-size O-among-digits decode
         "held9": {"seeds": (901, 902), "family": "I", "conversations": (2400, 2600)}}
UP, LOW, DIG = string.ascii_uppercase, string.ascii_lowercase, string.digits
Gen = Callable[[random.Random], str]


def _p(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _confusable(rng: random.Random, core: str, rest: str, n: int) -> str:
    """A string where at least half the characters are confusable glyphs, with letters and digits."""
    while True:
        value = "".join(rng.choice(core) if rng.random() < 0.6 else rng.choice(rest) for _ in range(n))
        if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and sum(c in core for c in value) >= n // 2:
            return value


# Family A (tune) and family B (held back): each kind drawn in shapes the other family never uses.
FAMILY: dict[str, dict[str, list[Gen]]] = {
    "A": {
        "order": [lambda r: f"{_p(r, DIG, 3)}-{_p(r, DIG, 7)}-{_p(r, DIG, 7)}",          # 112-4839201-5520193
                  lambda r: f"#{_p(r, UP, 2)}{_p(r, DIG, 6)}",                            # #WX483920
                  lambda r: f"ORD{_p(r, DIG, 8)}"],
        "confusable": [lambda r: _confusable(r, "O0Il1", LOW + DIG, r.randint(8, 11)),
                       lambda r: _confusable(r, "O0Il1", UP + DIG, r.randint(8, 10))],
        "email": [lambda r: f"{r.choice(_FIRST_A)}.{r.choice(_LAST_A)}{_p(r, DIG, 2)}@{r.choice(_MAIL_A)}",
                  lambda r: f"{r.choice(_FIRST_A)[0]}{r.choice(_LAST_A)}@{r.choice(_MAIL_A)}"],
        "url": [lambda r: f"https://{r.choice(_HOST_A)}/{r.choice(_PATH_A)}/{_p(r, LOW + DIG, 7)}",
                lambda r: f"https://{r.choice(_HOST_A)}/watch?v={_p(r, UP + LOW + DIG, 11)}"],
        "phone": [lambda r: f"({r.randint(201, 989)}) {r.randint(200, 989)}-{_p(r, DIG, 4)}",
                  lambda r: f"{r.randint(201, 989)}-{r.randint(200, 989)}-{_p(r, DIG, 4)}"],
        "hash": [lambda r: _hexy(r, 7), lambda r: _hexy(r, 40)],
        "tracking": [lambda r: f"1Z{_p(r, UP + DIG, 16)}", lambda r: f"{_p(r, DIG, 12)}"],
    },
    "B": {
        "order": [lambda r: f"PO-{r.randint(2019, 2026)}-{_p(r, DIG, 5)}",               # PO-2024-88431
                  lambda r: f"INV{_p(r, DIG, 4)}/{_p(r, UP, 1)}{_p(r, DIG, 3)}",
                  lambda r: f"{_p(r, UP, 3)}{_p(r, DIG, 4)}{_p(r, UP, 2)}"],
        "confusable": [lambda r: _confusable(r, "Il1O0o", UP + LOW + DIG, r.randint(9, 12)),
                       lambda r: _confusable(r, "l1I", LOW + DIG, 4) + "-" + _confusable(r, "O0o", UP + DIG, 4)],
        "email": [lambda r: f"{r.choice(_FIRST_B)}_{_p(r, DIG, 3)}@{r.choice(_MAIL_B)}",
                  lambda r: f"{r.choice(_FIRST_B)}-{r.choice(_LAST_B)}@{r.choice(_MAIL_B)}"],
        "url": [lambda r: f"http://{r.choice(_HOST_B)}:{r.choice((8080, 3000, 8443))}/{_p(r, LOW, 5)}",
                lambda r: f"www.{r.choice(_HOST_B)}/{r.choice(_PATH_B)}?ref={_p(r, LOW + DIG, 6)}"],
        "phone": [lambda r: f"+49 30 {_p(r, DIG, 8)}", lambda r: f"+33 6 {_p(r, DIG, 2)} {_p(r, DIG, 2)} {_p(r, DIG, 2)} {_p(r, DIG, 2)}",
                  lambda r: f"07{_p(r, DIG, 3)} {_p(r, DIG, 6)}"],
        "hash": [lambda r: f"{_hexy(r, 8)}-{_hexy(r, 4)}-{_hexy(r, 4)}-{_hexy(r, 4)}-{_hexy(r, 12)}",   # a UUID
                 lambda r: "sha256:" + _hexy(r, 16)],
        "tracking": [lambda r: f"9400 {_p(r, DIG, 4)} {_p(r, DIG, 4)} {_p(r, DIG, 4)} {_p(r, DIG, 4)} {_p(r, DIG, 2)}",
                     lambda r: f"JD{_p(r, DIG, 18)}", lambda r: f"{_p(r, UP, 2)}{_p(r, DIG, 9)}GB"],
    },
    "C": {
        "order": [lambda r: f"SO-{_p(r, DIG, 6)}-{_p(r, DIG, 2)}", lambda r: f"W{_p(r, DIG, 9)}",
                  lambda r: f"{_p(r, DIG, 4)}-{_p(r, UP, 4)}-{_p(r, DIG, 4)}"],
        "confusable": [lambda r: "-".join(_confusable(r, "O0I1l", UP + DIG, 5) for _ in range(3)),   # a licence key
                       lambda r: _confusable(r, "o0l1iO", LOW + DIG, r.randint(7, 10))],
        "email": [lambda r: f"{r.choice(_FIRST_C)}{_p(r, DIG, 4)}@{r.choice(_MAIL_C)}",
                  lambda r: f"{r.choice(_FIRST_C)}.{r.choice('abcdefghkmnprt')}.{r.choice(_LAST_C)}@{r.choice(_MAIL_C)}"],
        "url": [lambda r: f"https://t.co/{_p(r, UP + LOW + DIG, 10)}",
                lambda r: f"https://www.reddit.com/r/{r.choice(_SUB_C)}/comments/{_p(r, LOW + DIG, 6)}"],
        "phone": [lambda r: f"+61 4{_p(r, DIG, 2)} {_p(r, DIG, 3)} {_p(r, DIG, 3)}",
                  lambda r: f"1-800-{_p(r, DIG, 3)}-{_p(r, DIG, 4)}"],
        "hash": [lambda r: _hexy(r, 32), lambda r: _hexy(r, 10)],
        "tracking": [lambda r: f"LX{_p(r, DIG, 9)}CN", lambda r: f"TBA{_p(r, DIG, 12)}"],
    },
    "D": {
        "order": [lambda r: f"{_p(r, UP, 1)}{_p(r, DIG, 2)}-{_p(r, UP + DIG, 6)}", lambda r: f"#{_p(r, DIG, 4)}-{_p(r, DIG, 4)}"],
        "confusable": [lambda r: _confusable(r, "0Oo", DIG + UP, 6) + _confusable(r, "Il1", LOW + DIG, 4),
                       lambda r: _confusable(r, "O0Il1", UP + LOW + DIG, 6)],
        "email": [lambda r: f"{r.choice(_FIRST_D)}{r.choice(_LAST_D)[0]}{_p(r, DIG, 2)}@{r.choice(_MAIL_D)}",
                  lambda r: f"{r.choice(_FIRST_D)}+{r.choice(('news', 'shop', 'work'))}@{r.choice(_MAIL_D)}"],
        "url": [lambda r: f"https://zoom.us/j/{_p(r, DIG, 10)}?pwd={_p(r, UP + LOW + DIG, 8)}",
                lambda r: f"https://drive.google.com/file/d/{_p(r, UP + LOW + DIG, 12)}/view"],
        "phone": [lambda r: f"+1 ({r.randint(201, 989)}) {r.randint(200, 989)} {_p(r, DIG, 4)}",
                  lambda r: f"+81 90-{_p(r, DIG, 4)}-{_p(r, DIG, 4)}"],
        "hash": [lambda r: "0x" + _hexy(r, 8), lambda r: "AKIA" + _p(r, UP + DIG, 16)],
        "tracking": [lambda r: f"{_p(r, DIG, 4)} {_p(r, DIG, 4)} {_p(r, DIG, 4)}", lambda r: f"CP{_p(r, DIG, 9)}DE"],
    },
    "E": {
        "order": [lambda r: _mixed(r, UP + DIG, 6), lambda r: f"{_p(r, DIG, 3)}-{_p(r, DIG, 3)}-{_p(r, UP, 3)}"],   # a PNR; 482-193-KQZ
        "confusable": [lambda r: _confusable(r, "O0Il1", UP + LOW + DIG, 12),
                       lambda r: "-".join(_confusable(r, "0OIl1", LOW + DIG, 4) for _ in range(2))],
        "email": [lambda r: f"{r.choice(_FIRST_E)}{r.choice(_LAST_E)}{_p(r, DIG, 2)}@{r.choice(_MAIL_E)}",
                  lambda r: f"{r.choice(_FIRST_E)}.{r.choice(_LAST_E)}@{r.choice(_MAIL_E)}"],
        "url": [lambda r: f"https://bit.ly/{_p(r, UP + LOW + DIG, 7)}",
                lambda r: f"https://github.com/{r.choice(_FIRST_E)}/{r.choice(_REPO_E)}/pull/{_p(r, DIG, 4)}"],
        "phone": [lambda r: f"+44 7{_p(r, DIG, 3)} {_p(r, DIG, 6)}", lambda r: f"{r.randint(201, 989)}.{r.randint(200, 989)}.{_p(r, DIG, 4)}"],
        "hash": [lambda r: ":".join(_hexy(r, 2) for _ in range(6)), lambda r: "sk_live_" + _mixed(r, UP + LOW + DIG, 20)],   # a MAC address; an API key
        "tracking": [lambda r: _p(r, DIG, 22), lambda r: f"RR{_p(r, DIG, 9)}US"],
    },
    "F": {
        "order": [lambda r: f"{_p(r, DIG, 2)}-{_p(r, DIG, 5)}-{_p(r, DIG, 5)}", lambda r: "X" + _mixed(r, UP + DIG, 9)],
        "confusable": [lambda r: _confusable(r, "1lI0O", UP + LOW, 8), lambda r: _confusable(r, "Oo0", DIG + LOW, 10)],
        "email": [lambda r: f"{r.choice(_FIRST_F)}_{r.choice(_LAST_F)}@{r.choice(_MAIL_F)}",
                  lambda r: f"{r.choice(_FIRST_F)[0]}.{r.choice(_LAST_F)}{_p(r, DIG, 1)}@{r.choice(_MAIL_F)}"],
        "url": [lambda r: f"https://docs.google.com/spreadsheets/d/{_p(r, UP + LOW + DIG + '-_', 16)}/edit",
                lambda r: f"https://www.ebay.com/itm/{_p(r, DIG, 12)}"],
        "phone": [lambda r: f"+34 6{_p(r, DIG, 2)} {_p(r, DIG, 3)} {_p(r, DIG, 3)}", lambda r: f"0{_p(r, DIG, 2)}-{_p(r, DIG, 4)}-{_p(r, DIG, 4)}"],
        "hash": [lambda r: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}", lambda r: "bc1q" + _p(r, LOW + DIG, 20)],   # an IP address; a wallet
        "tracking": [lambda r: f"{_p(r, DIG, 4)}-{_p(r, DIG, 4)}-{_p(r, DIG, 4)}-{_p(r, DIG, 2)}", lambda r: f"DHL{_p(r, DIG, 10)}"],
    },
    "G": {
        "order": [lambda r: f"{_p(r, UP, 1)}{_p(r, DIG, 3)}-{_p(r, DIG, 3)}-{_p(r, DIG, 3)}", lambda r: f"OD{_p(r, DIG, 15)}"],
        "confusable": [lambda r: _confusable(r, "0O1lI", UP + DIG, 7),
                       lambda r: "-".join(_confusable(r, "O0o", UP + LOW + DIG, 3) for _ in range(3))],
        "email": [lambda r: f"{r.choice(_FIRST_G)}{_p(r, DIG, 3)}_{r.choice(_LAST_G)}@{r.choice(_MAIL_G)}",
                  lambda r: f"{r.choice(_LAST_G)}.{r.choice(_FIRST_G)[0]}@{r.choice(_MAIL_G)}"],
        "url": [lambda r: f"https://maps.app.goo.gl/{_p(r, UP + LOW + DIG, 17)}", lambda r: f"https://imgur.com/a/{_p(r, UP + LOW + DIG, 7)}"],
        "phone": [lambda r: f"+91 9{_p(r, DIG, 4)} {_p(r, DIG, 5)}", lambda r: f"(0{_p(r, DIG, 2)}) {_p(r, DIG, 4)} {_p(r, DIG, 4)}"],
        "hash": [lambda r: _hexy(r, 12), lambda r: "fe80::" + ":".join(_hexy(r, 4) for _ in range(3))],   # an IPv6 address
        "tracking": [lambda r: f"00{_p(r, DIG, 18)}", lambda r: f"1Z{_p(r, DIG, 3)}{_p(r, UP, 3)}{_p(r, DIG, 10)}"],
    },
    "H": {
        "order": [lambda r: f"{_p(r, UP, 2)}-{_p(r, DIG, 4)}-{_p(r, UP + DIG, 4)}", lambda r: f"N{_p(r, DIG, 2)}{_p(r, UP, 1)}{_p(r, DIG, 5)}"],
        "confusable": [lambda r: _confusable(r, "0OoIl1", LOW + UP + DIG, 9), lambda r: _confusable(r, "O0", DIG, 8)],
        "email": [lambda r: f"{r.choice(_FIRST_H)}.{_p(r, DIG, 4)}@{r.choice(_MAIL_H)}",
                  lambda r: f"{r.choice(_FIRST_H)}{r.choice(_LAST_H)}@{r.choice(_MAIL_H)}"],
        "url": [lambda r: f"https://open.spotify.com/track/{_p(r, UP + LOW + DIG, 22)}", lambda r: f"https://forms.gle/{_p(r, UP + LOW + DIG, 9)}"],
        "phone": [lambda r: f"+61 (0){_p(r, DIG, 1)} {_p(r, DIG, 4)} {_p(r, DIG, 4)}", lambda r: f"{r.randint(201, 989)} {r.randint(200, 989)} {_p(r, DIG, 4)}"],
        "hash": [lambda r: f"v{r.randint(0, 9)}.{r.randint(0, 40)}.{r.randint(0, 99)}-{_hexy(r, 7)}", lambda r: "ghp_" + _mixed(r, UP + LOW + DIG, 16)],
        "tracking": [lambda r: f"{_p(r, DIG, 3)}-{_p(r, DIG, 8)}", lambda r: f"CZ{_p(r, DIG, 9)}{_p(r, UP, 2)}"],
    },
    "I": {
        "order": [lambda r: f"{_p(r, DIG, 2)}{_p(r, UP, 2)}{_p(r, DIG, 6)}", lambda r: f"R-{_p(r, DIG, 3)}-{_p(r, UP + DIG, 5)}"],
        "confusable": [lambda r: _confusable(r, "O0lI1", UP + DIG, 10), lambda r: _confusable(r, "0Oo", LOW + DIG, 7)],
        "email": [lambda r: f"{r.choice(_FIRST_I)}{_p(r, DIG, 2)}.{r.choice(_LAST_I)}@{r.choice(_MAIL_I)}",
                  lambda r: f"{r.choice(_LAST_I)}_{r.choice(_FIRST_I)}@{r.choice(_MAIL_I)}"],
        "url": [lambda r: f"https://www.dropbox.com/s/{_p(r, LOW + DIG, 15)}/notes.pdf", lambda r: f"https://youtu.be/{_p(r, UP + LOW + DIG + '_-', 11)}"],
        "phone": [lambda r: f"+353 8{_p(r, DIG, 1)} {_p(r, DIG, 3)} {_p(r, DIG, 4)}", lambda r: f"1 ({r.randint(201, 989)}) {_p(r, DIG, 3)}-{_p(r, DIG, 4)}"],
        "hash": [lambda r: f"{_hexy(r, 8)}{_hexy(r, 8)}", lambda r: f"SHA1 {_hexy(r, 12)}"],
        "tracking": [lambda r: f"EE{_p(r, DIG, 9)}NL", lambda r: f"{_p(r, DIG, 2)} {_p(r, DIG, 4)} {_p(r, DIG, 4)} {_p(r, DIG, 4)}"],
    },
}
_FIRST_I = "amir bruna cato dana elin femi".split()
_LAST_I = "olsen rossi nakamura adler".split()
_MAIL_I = "eircom.net gmail.com posteo.net mail.de".split()
_FIRST_H = "ines jonas kira liam mei nils".split()
_LAST_H = "berger costa park weiss".split()
_MAIL_H = "gmx.de icloud.com tutanota.com orange.fr".split()
_FIRST_G = "ali bea chen dara eko fin".split()
_LAST_G = "moreau silva kowalski ito".split()
_MAIL_G = "gmail.com hey.com libero.it web.de".split()
_FIRST_F = "ada bo cruz dina emil fumi".split()
_LAST_F = "novak reyes schulz tanaka".split()
_MAIL_F = "gmail.com outlook.de yandex.ru seznam.cz".split()
_FIRST_E = "nia omar pia raj suki tom una".split()
_LAST_E = "fischer haddad ivanova okafor wu".split()
_MAIL_E = "mail.com pm.me btinternet.com ymail.com".split()
_REPO_E = "dotfiles blog api".split()
_FIRST_D = "abe bea cyd dot eve fay gil hal".split()
_LAST_D = "jansen kovacs lopez mensah".split()
_MAIL_D = "zoho.com aol.com live.co.uk fastmail.fm".split()
_FIRST_C = "ola pedro quinn rosa sami teo".split()
_LAST_C = "berg costa dahl eriksen".split()
_MAIL_C = "outlook.com proton.me mail.ru uni-graz.at".split()
_SUB_C = "AskReddit cooking running".split()
_FIRST_A = "ana ben clara dev eli farah gus hana ivan jo kemal lena".split()
_LAST_A = "smith garcia nguyen muller rossi kim patel oconnor".split()
_MAIL_A = "gmail.com yahoo.com hotmail.com icloud.com".split()
_HOST_A = "www.amazon.com youtube.com docs.google.com github.com".split()
_PATH_A = "dp gp/product d file/d".split()
_FIRST_B = "mira otto sven tala uma vik wren xia yusuf zoe".split()
_LAST_B = "lindberg adeyemi horvat sato dubois".split()
_MAIL_B = "posteo.de web.de company.co gmx.net".split()
_HOST_B = "intranet.acme.local shop.example.com photos.example.net".split()
_PATH_B = "share album invite".split()


def _mixed(rng: random.Random, alphabet: str, n: int) -> str:
    """``n`` characters of ``alphabet`` with at least one letter and one digit."""
    while True:
        value = _p(rng, alphabet, n)
        if any(c.isdigit() for c in value) and any(c.isalpha() for c in value):
            return value


def _hexy(rng: random.Random, n: int) -> str:
    while True:
        value = _p(rng, "0123456789abcdef", n)
        if n < 8 or (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
            return value


# How the identifier goes into a real utterance: a phrase with {v}, and where it goes.
PHRASES = {
    "A": {"order": ["my order number is {v}", "order {v} still hasn't shipped"],
          "confusable": ["the wifi password is {v}", "my code was {v}"],
          "email": ["email me at {v}", "my address is {v}"],
          "url": ["check this out {v}", "here's the link {v}"],
          "phone": ["call me at {v}", "my number is {v}"],
          "hash": ["the commit is {v}", "checksum {v}"],
          "tracking": ["tracking number {v}", "it's shipping under {v}"]},
    "B": {"order": ["(ref {v})", "they gave me {v} as the reference"],
          "confusable": ["use {v} to log in", "promo {v} worked for me"],
          "email": ["write to {v} if anything comes up", "contact: {v}"],
          "url": ["{v} has the details", "see {v}"],
          "phone": ["ring {v} tomorrow", "the office line is {v}"],
          "hash": ["id {v} on the ticket", "{v} is the build"],
          "tracking": ["parcel {v} arrives monday", "the courier gave {v}"]},
    "C": {"order": ["for the record: {v}", "{v} is my order"],
          "confusable": ["the key is {v} (case matters)", "type {v} exactly"],
          "email": ["reach me on {v}", "{v} is my new email"],
          "url": ["this one: {v}", "{v} <- that thread"],
          "phone": ["landline {v}", "you can text {v}"],
          "hash": ["md5 {v}", "hash was {v}"],
          "tracking": ["my package is {v}", "the label says {v}"]},
    "D": {"order": ["got {v} in the confirmation", "{v}, that's the order"],
          "confusable": ["pin is {v}", "{v} was the voucher"],
          "email": ["ping {v}", "I use {v} for that"],
          "url": ["join at {v}", "uploaded to {v}"],
          "phone": ["cell {v}", "dial {v}"],
          "hash": ["token {v}", "key id {v}"],
          "tracking": ["shipment {v}", "waybill {v}"]},
    "E": {"order": ["booking {v}", "my confirmation code: {v}"],
          "confusable": ["network key {v}", "the passphrase was {v}"],
          "email": ["send it to {v}", "my work email {v}"],
          "url": ["look {v}", "the PR is {v}"],
          "phone": ["mobile {v}", "number's {v}"],
          "hash": ["device {v}", "api key {v}"],
          "tracking": ["the tracking is {v}", "parcel no. {v}"]},
    "F": {"order": ["order id {v}", "it was {v} on the receipt"],
          "confusable": ["login code {v}", "the gate code is {v}"],
          "email": ["mail {v}", "drop a line to {v}"],
          "url": ["the sheet: {v}", "bought it here {v}"],
          "phone": ["whatsapp {v}", "my cell is {v}"],
          "hash": ["server {v}", "wallet {v}"],
          "tracking": ["ref {v} at the depot", "consignment {v}"]},
    "G": {"order": ["the order was {v}", "reference {v} from the shop"],
          "confusable": ["locker combo {v}", "the code they sent: {v}"],
          "email": ["my email's {v}", "cc {v}"],
          "url": ["pin {v}", "photos at {v}"],
          "phone": ["text me on {v}", "home phone {v}"],
          "hash": ["the id is {v}", "address {v}"],
          "tracking": ["tracking {v}", "label {v}"]},
    "H": {"order": ["purchase {v}", "my booking number, {v}"],
          "confusable": ["the otp was {v}", "recovery code {v}"],
          "email": ["email address {v}", "reply to {v}"],
          "url": ["listen {v}", "sign up here {v}"],
          "phone": ["the clinic is {v}", "reach me at {v}"],
          "hash": ["build {v}", "my token {v}"],
          "tracking": ["the airway bill is {v}", "the parcel id is {v}"]},
    "I": {"order": ["my receipt says {v}", "return {v}"],
          "confusable": ["the door code: {v}", "serial {v}"],
          "email": ["you can email {v}", "personal email {v}"],
          "url": ["notes {v}", "watch {v}"],
          "phone": ["phone me {v}", "office {v}"],
          "hash": ["file hash {v}", "checksum is {v}"],
          "tracking": ["the shipment code {v}", "track {v}"]},
}


@dataclass
class Planted:
    kind: str
    value: str
    text: str
    found: bool          # the recogniser marks exactly this span (so it is set in the identifier face)
    index: int = -1


def _splice(rng: random.Random, family: str, utterance: str, phrase: str, value: str) -> str:
    """The phrase inside a real utterance: family A appends it as a new clause, family B puts it
    at a word boundary in the middle (or in front of a short utterance)."""
    utterance = utterance.strip()
    lead = phrase if phrase.startswith(value) else phrase[0].upper() + phrase[1:]   # a sentence's start
    if family == "A":
        return f"{utterance.rstrip('.!?')}, {phrase}" if rng.random() < 0.5 else f"{utterance} {lead}."
    if family == "I":      # as a second sentence after the first, or in quotes after "said"
        first, dot, rest = utterance.partition(". ")
        return f"{first}. {lead}.{' ' + rest if rest else ''}" if dot else f'{utterance}, I said "{phrase}"'
    if family == "H":      # after "so" or "and" in the middle, or at the end after a dash
        words = utterance.split(" ")
        at = next((i for i, w in enumerate(words) if i and w.lower() in ("so", "and", "but")), 0)
        return " ".join(words[:at] + [phrase + ","] + words[at:]) if at else f"{utterance} - {phrase}"
    if family == "G":      # in brackets at the very end
        return f"{utterance} ({phrase})"
    if family == "F":      # quoted at the end, or as an opening clause before a comma
        return f'{utterance} - "{phrase}"' if rng.random() < 0.5 else f"{lead}, {utterance[0].lower()}{utterance[1:]}"
    if family == "E":      # after a colon at the end, or as the opening sentence
        return f"{utterance.rstrip('.!?')}: {phrase}!" if rng.random() < 0.6 else f"{lead}. {utterance}"
    if family == "D":      # after the first comma or full stop, as a clause of its own
        cut = min((i for i in (utterance.find(", "), utterance.find(". ")) if i > 0), default=-1)
        if cut < 0:
            return f"{utterance.rstrip('.!?')}, btw {phrase}"
        return f"{utterance[:cut + 1]} {phrase};{utterance[cut + 1:]}"
    if family == "C":      # in brackets after the first few words
        words = utterance.split(" ")
        at = min(len(words), rng.randint(2, 5))
        return " ".join(words[:at] + [f"({phrase})"] + words[at:])
    words = utterance.split(" ")
    if len(words) < 4:
        return f"{lead}. {utterance}"
    at = rng.randint(1, len(words) - 1)
    return " ".join(words[:at] + ["-", phrase, "-"] + words[at:])


def chats(part: str) -> list[dict]:
    """The part's real conversations, one after another."""
    lo, hi = PARTS[part]["conversations"]
    turns: list[dict] = []
    for n, (_, chat) in enumerate(corpus.conversations(limit=hi)):
        if n >= lo:
            turns.extend(chat)
    return turns


def generate(part: str, seed: int, per_kind: int, hosts: list[dict]) -> list[Planted]:
    """``per_kind`` identifiers of each kind, each spliced into a real utterance of ``hosts``."""
    rng = random.Random(seed)
    family = PARTS[part]["family"]
    usable = [t["content"] for t in hosts if 3 <= len(t["content"].split()) <= 30 and not find(t["content"])]
    out = []
    for kind in KINDS:
        for n in range(per_kind):
            value = FAMILY[family][kind][n % len(FAMILY[family][kind])](rng)
            text = _splice(rng, family, rng.choice(usable), rng.choice(PHRASES[family][kind]).format(v=value), value)
            spans = [text[a:b] for a, b in find(text)]
            out.append(Planted(kind, value, text, value in spans))
    rng.shuffle(out)
    return out


def run(part: str, seed: int, *, per_kind: int, tiers: list[str], ident: str, prose_pages: int,
        backend) -> dict[str, Any]:
    turns = chats(part)
    half = len(turns) // 2      # utterances to splice into from the first half, the chat around them from the second
    planted = generate(part, seed, per_kind, turns[:half])
    conversation = plant(turns[half:], planted, 7, jitter=random.Random(seed))
    lay = layout(ident)
    texts = [renderer.TurnText(i, t["role"], t["content"], t.get("time")) for i, t in enumerate(conversation)]
    pages = renderer.typeset(texts, lay)
    by_turn = {p.index: p for p in planted}
    prose_turns = {line.turn for page in pages[:prose_pages] for line in page.lines
                   if line.kind == "text" and line.turn not in by_turn}
    report: dict[str, Any] = {"part": part, "seed": seed, "ident": ident, "pages": len(pages),
                              "planted": [asdict(p) for p in planted], "tiers": {}}
    views: dict[int, list[str]] = {}
    for tier in DEEPSEEK_OCR2.tiers:
        if tier.name in tiers:
            views.setdefault(tier.px, []).append(tier.name)
    for px, names in views.items():
        got, seconds, _ = read_turns(backend, pages, set(by_turn), px, lay.page_px, DEEPSEEK_OCR2)
        kinds = {k: [0, 0] for k in KINDS}
        misses = []
        for item in planted:
            read = got.get(item.index, "")
            ok = squash(item.value) in squash(read)
            kinds[item.kind][0] += ok
            kinds[item.kind][1] += 1
            if not ok:
                misses.append({"kind": item.kind, "value": item.value, "found": item.found, "read": read})
        prose, _, _ = read_turns(backend, pages[:prose_pages], prose_turns, px, lay.page_px, DEEPSEEK_OCR2)
        source = {t: conversation[t]["content"] for t in prose_turns}
        chars = sum(len(squash(s)) for s in source.values())
        errors = sum(min(len(squash(s)), char_error(prose.get(t, ""), s) * len(squash(s))) for t, s in source.items())
        for name in names:
            report["tiers"][name] = {"exact": sum(v[0] for v in kinds.values()), "of": len(planted),
                                     "kinds": kinds, "prose_precision": round(1 - errors / max(1, chars), 4),
                                     "prose_chars": chars, "seconds": round(seconds, 1), "misses": misses}
    return report


def table(part: str, reports: list[dict[str, Any]]) -> str:
    """Exact identifiers per tier over the part's seeds, per kind, and prose precision."""
    rows = [f"part {part} (seeds {','.join(str(r['seed']) for r in reports)}), identifier face {reports[0]['ident']}",
            f"{'tier':<9} {'exact':>14} " + " ".join(f"{k:>11}" for k in KINDS) + f" {'prose':>7}"]
    for name in reports[0]["tiers"]:
        got = sum(r["tiers"][name]["exact"] for r in reports)
        of = sum(r["tiers"][name]["of"] for r in reports)
        kinds = " ".join(f"{sum(r['tiers'][name]['kinds'][k][0] for r in reports):>5}/"
                         f"{sum(r['tiers'][name]['kinds'][k][1] for r in reports):<5}" for k in KINDS)
        prose = sum(r["tiers"][name]["prose_precision"] for r in reports) / len(reports)
        rows.append(f"{name:<9} {got / of:>6.1%} ({got:>3}/{of:<3}) {kinds} {prose:>7.4f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="tune,held,held2,held3,held4", help="tune and held parts, comma-separated (read the held parts once, at the end)")
    parser.add_argument("--tiers", default="crops,g1024,v768,mosaic4")
    parser.add_argument("--ident", default=IDENT_DEFAULT, help="identifier face (renderer.faces.IDENT_FACES)")
    parser.add_argument("--per-kind", type=int, default=8, help="identifiers of each kind a seed")
    parser.add_argument("--seeds", default=None, help="other seeds than the part's, comma-separated (more tune data)")
    parser.add_argument("--prose-pages", type=int, default=2)
    parser.add_argument("--misses", action="store_true", help="print every miss (tune part only)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "identifiers_unseen.json")
    args = parser.parse_args(argv)
    from optimem.model.rapidocr_backend import RapidOcrBackend
    backend = RapidOcrBackend(DEEPSEEK_OCR2, ident=args.ident)     # as the service reads its pages
    out: dict[str, Any] = {"machine": machine(), "reader": backend.revision, "parts": {}}
    for part in args.parts.split(","):
        reports = []
        for seed in [int(x) for x in args.seeds.split(",")] if args.seeds else PARTS[part]["seeds"]:
            start = time.perf_counter()
            reports.append(run(part, seed, per_kind=args.per_kind, tiers=args.tiers.split(","), ident=args.ident,
                               prose_pages=args.prose_pages, backend=backend))
            print(f"{part} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        out["parts"][part] = reports
        print(table(part, reports))
        if args.misses and part == "tune":
            for r in reports:
                for name, v in r["tiers"].items():
                    for m in v["misses"]:
                        print(f"  {name:<8} {m['kind']:<10} {m['value']!r:<34} found={m['found']} read {m['read']!r}")
        print()
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
