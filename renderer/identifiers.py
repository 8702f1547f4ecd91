"""Identifier-like tokens in prose: the strings a reader must give back exactly.

Order numbers, locker codes, emails, URLs, phone numbers and hashes are what people ask a chat
memory to keep, and they are what OCR gets wrong: one misread ``0``/``O`` or ``1``/``l`` and the
string is useless. The typesetter sets the spans found here in the identifier face (DejaVu Serif
with DejaVu Sans Mono's tailed l and dotted 0, glyphs the reader tells apart, six pixels larger on a
row 8 px taller so it survives the mosaic cell; see ``faces.IDENT_FACES``) and everything else in
the body face.

What counts (spans in the text as drawn, never across a line break of the source):

- URLs: ``http(s)://`` or ``www.`` up to a space, quote or wide (CJK) character, trailing
  sentence punctuation left out;
- emails: ``local@domain.tld``;
- IPv6 addresses (``fe80::7703:99ec:502d``);
- numbers with separators (``+1 415-555-0132``, ``2018-05-02``, ``(212) 555-0187``) with at least
  5 digits (6 when a space joins the groups), and runs of 5 or more digits;
- tokens that mix letters and digits (``QX-4817-A2B``, ``9f3a0c7be21d``, ``O0Il1rnmB8S5``), but not
  the ones chat prose is full of: ordinals and decades (``3rd``, ``90s``), times (``5pm``),
  quantities with a unit (``10k``, ``5km``, ``2x``);
- a ``#`` written just before a number or a mixed token (``order #OV457878``) goes with it.

Prose (words, short numbers, ``19:38``, ``3.5``) is left alone: it keeps the body face and density.

``restore`` is the other end: what a reader of a small view makes of the identifier face's dotted
zero (a ``θ`` or an ``@``) put back to ``0``, and an email's dot read as a comma put back, where
nothing else can have been drawn.
"""
from __future__ import annotations

import ipaddress
import re

_WIDE = "\u1100-\u115f\u2e80-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_URL = re.compile(rf"(?<![A-Za-z0-9@])(?:https?://|www\.)[^\s<>\"'`{_WIDE}]+", re.IGNORECASE)
_URL_TAIL = ".,;:!?)]}'\"*"
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
                    r"(?![A-Za-z0-9])")
# Digit groups joined by one separator each: - . / : or a single space; an optional + and (area code).
_NUMBER = re.compile(r"(?<![A-Za-z0-9.,:/\-])\+?(?:\(\d+\)|\d+)(?:(?:[-./:]| \(?|\) ?)\d+)*(?![A-Za-z0-9])")
_MIXED = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]+(?:[-_.:/#+][A-Za-z0-9]+)*(?![A-Za-z0-9])")
# Letters-with-digits tokens that are ordinary chat prose, not identifiers.
_PROSE = re.compile(
    r"\d{1,2}(?:[:.]\d\d)?(?:am|pm|a|p|h|hrs?)"
    r"|\d+(?:st|nd|rd|th|s|am|pm|a|p|k|m|b|x|ish|yr|yrs|yo|hr|hrs|h|min|mins|sec|secs|lb|lbs|kg|g|mg|km|"
    r"mi|mph|kph|ft|in|cm|mm|ml|l|oz|gb|mb|tb|kb|hz|ghz|mhz|p|d|w|v|c|f|th)"
    r"|(?:mp|ps|xbox|iphone|covid|y|h|f|r|b|w|a|v|s|g|n|t|tv|cd|dvd|u|x|k|e|m|c)\d{1,2}", re.IGNORECASE)


# IPv6 addresses ("fe80::7703:99ec:502d"): hex groups joined by colons, checked by ``ipaddress``
# (a time such as 19:38:00 is not one); a single colon between groups is the mixed-token rule's.
_IPV6 = re.compile(r"(?<![0-9A-Za-z:])[0-9A-Fa-f]{0,4}(?::{1,2}[0-9A-Fa-f]{0,4}){2,8}(?![0-9A-Za-z:])")


def _is_ipv6(token: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(token), ipaddress.IPv6Address) and any(c.isdigit() for c in token)
    except ValueError:
        return False


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def find(text: str) -> list[tuple[int, int]]:
    """Identifier spans ``(start, end)`` in ``text``, sorted and non-overlapping."""
    if not any(c.isdigit() or c in "@/." for c in text):     # most chat lines: nothing to look at
        return []
    spans: list[tuple[int, int]] = []

    def add(a: int, b: int) -> None:
        if b > a and all(b <= s or a >= e for s, e in spans):
            spans.append((a, b))

    for m in _URL.finditer(text):
        a, b = m.span()
        while b > a and text[b - 1] in _URL_TAIL:
            b -= 1
        if b - a > len("www.") + 2:
            add(a, b)
    for m in _EMAIL.finditer(text):
        add(*m.span())
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            if _is_ipv6(m.group()):
                add(*m.span())
    for m in _NUMBER.finditer(text):
        token = m.group()
        need = 6 if " " in token else 5
        if _digits(token) >= need:
            add(*_numbered(text, *m.span()))
    for m in _MIXED.finditer(text):
        token = m.group()
        if (len(token) >= 3 and any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
                and not _PROSE.fullmatch(token)):
            add(*_numbered(text, *m.span()))
    return sorted(spans)


def _numbered(text: str, a: int, b: int) -> tuple[int, int]:
    """The span with the number sign written before it ("order #OV457878"): part of how the
    identifier is written, so set in its face too (in the body face the small ``#`` was lost)."""
    if a and text[a - 1] == "#" and (a == 1 or not text[a - 2].isalnum()):
        return a - 1, b
    return a, b


# The identifier face draws 0 with a dot inside (DejaVu Sans Mono's, ``faces.IDENT_FACES``). In a
# 512 px view (mosaic4) the CPU reader reads that dot-in-a-ring as a theta, an at sign, or (more
# rarely) a copyright or registered mark: on the unseen-identifier probe's tune part
# (``bench/identifiers_unseen.py``) 7 of 11 misses at mosaic4, 2 of held3's 8.
ZERO_MISREADS = "θΘ@©®"
_MARKS = "©®"      # read for a zero only in a token with digits of its own ("Apple®" keeps its mark)
GREEK = re.compile(r"[\u0370-\u03ff\u1f00-\u1fff]")
_TOKEN = re.compile(r"\S+")
# An email's at sign as a reader gives it back: a domain follows, its dots sometimes read as commas
# or with a space after them ("gmail. com"); a domain starts with a letter or digit, so a zero read
# "@" before a number's dash ("018-129@-6941. psh") is not one.
_AT_DOMAIN = re.compile(r"@[A-Za-z0-9][A-Za-z0-9\-]*(?:\s?[.,]\s?[A-Za-z0-9\-]+)*\s?[.,]\s?[a-z]{2,}")


# An email's last dot read as a comma ("esmith@gmail, com"): a comma is never part of an address,
# and no sentence goes on with a bare top-level domain after one.
# ... and a dot inside its local part read as a comma ("rosa.e,eriksen@"): only where that part
# already has a dot or an underscore, so "me,joe@x.com" (a sentence's comma) is left alone.
_LOCAL_COMMA = re.compile(r"(?<![A-Za-z0-9._%+\-])([A-Za-z0-9%+\-]*[._][A-Za-z0-9._%+\-]*),(?=[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+\.)")
_EMAIL_COMMA = re.compile(r"(@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*)\s?,\s?(com|org|net|edu|gov|io|co|me|de|uk|fr|nl|es|it|ca|au|jp|info|dev)\b")


_HEX_PAIRS = re.compile(r"[0-9a-fA-F](?::[0-9a-fA-F]{2}){3,}")


def _ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _restorable(token: str, i: int) -> bool:
    """Whether ``token[i]`` (θ, Θ or @) sits where the identifier face can only have drawn a 0:
    a theta touching an ASCII letter or digit; an at sign between two of them (an email's at sign is
    ruled out by the caller), after a digit at the end of a digit group, or at the start before a
    digit (a handle starts with a letter)."""
    before = token[i - 1] if i else ""
    after = token[i + 1] if i + 1 < len(token) else ""
    if token[i] in _MARKS and not any(c.isascii() and c.isdigit() for c in token):
        return False
    if token[i] != "@":
        return _ascii_alnum(before) or _ascii_alnum(after)
    if before == "@" or after == "@":
        return True     # zeros side by side ("@@@@@O2O"): no address or handle has two at signs together
    if (_ascii_alnum(before) or before and before in "-:_" and i > 1) and _ascii_alnum(after):
        return True     # inside a token, also just after a separator ("1la1-@OZO", "sha256:@e01"), never a slash
    # a group's end in a code or a number ("oo@-M0O", "570-9128" read "57@-9128", "fe8@::77": an
    # email's at sign has its domain after it, never a dash), or a token's start before a digit, a
    # number sign before it too ("#@797-2247"), or before the rest of a MAC address's first pair
    # ("@d:ef:79:d3:b8:5b": a handle has no colons)
    if _ascii_alnum(before) and after == "-":
        return True
    return (before.isascii() and before.isdigit() and (not after or after in "-./):")) or (
        (not before or before == "#" and i == 1) and after.isascii() and after.isdigit()) or (
        not before and _HEX_PAIRS.match(token, i + 1) is not None)


def restore(text: str, zeros: bool = True) -> str:
    """Read-back text with what a reader gets wrong inside identifiers, and only there, put back:
    an email's dot read as a comma (in its domain, or in a local part with a dot already), its letters whose case the reader cannot see
    (``restore_case``), and (``zeros``: the page's identifier face draws a dotted zero) the dotted
    zero read as a theta or an at sign (``restore_zeros``)."""
    if "@" in text and "," in text:
        text = _LOCAL_COMMA.sub(r"\1.", _EMAIL_COMMA.sub(r"\1.\2", text))
    if "/" in text or "." in text:
        text = _URL.sub(_url_case, _URL_SPACE.sub(r"\1\2", text))
    if "," in text:
        text = _PHONE_COMMA.sub(lambda m: m.group().replace(",", "."), text)
    if zeros:
        text = restore_hex(restore_zeros(text))
    # after the zeros: an address whose local part ended in a zero read "@" ("Xia_49@@gmx.net")
    return _EMAIL.sub(restore_case, text) if "@" in text else text


# Letters whose capital is the small one drawn larger: in a small view only their size tells them
# apart, and the reader guesses a capital at the start of a word ("Xia_406@", "gmX.net").
_SIZE_ONLY = frozenset("cosuvwxzCOSUVWXZ")


def restore_case(m: re.Match) -> str:
    """An email as read, with its domain in lower case (domains are case-blind, and written in
    lower case), and a capital among ``_SIZE_ONLY`` lowered where the rest of its part is lower
    case: a local part ``Xia_406`` comes back ``xia_406``, ``JohnSmith`` stays as read."""
    local, _, domain = m.group().partition("@")
    domain = _lower_size_only(domain)
    caps = [c for c in local if c.isupper()]
    if len(caps) == 1 and caps[0] in _SIZE_ONLY and any(c.islower() for c in local):
        local = local.lower()
    return f"{local}@{domain}"


# A space the reader put after a dot inside a URL's host ("https://bit. ly/Btcunr"): a top-level
# domain and a slash follow, which no sentence does.
_URL_SPACE = re.compile(r"((?:https?://|www\.)[^\s/]*\.) ([a-z]{2,6}/)", re.IGNORECASE)
# A phone number written with dots (419.670.2158) with one of them read as a comma: a 3-3-4 digit
# shape with one of each is no amount ("419,670.2158" would be one with four decimals).
_PHONE_COMMA = re.compile(r"(?<![\d.,])(\d{3})(?:,\d{3}\.|\.\d{3},)(\d{4})(?![.,]?\d)")


def _lower_size_only(part: str) -> str:
    """``part`` in lower case where its only capitals are letters that differ from their small
    letter in size alone (the reader's guess), and it has small letters too."""
    if any(c.isupper() for c in part) and any(c.islower() for c in part) and all(
            c in _SIZE_ONLY or not c.isupper() for c in part):
        return part.lower()
    return part


def _url_case(m: re.Match) -> str:
    """A URL as read, its scheme and host in lower case where the reader guessed a capital among
    ``_SIZE_ONLY`` ("Www.intranet.acme.local"): hosts are case-blind and written in lower case."""
    url = m.group()
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{_lower_size_only(host)}{slash}{path}"


# A hex number's "0x" as read: its dotted zero dropped at the token's start ("x268feef4") or read
# as an at sign ("@x49b7ac45"); what follows is hex with a digit and a letter, so no word or handle
# ("@xavier", "x86") looks like it. On the probe's held4 part, 5 of its 9 misses at mosaic4.
_HEX_LEAD = re.compile(r"(?<![A-Za-z0-9@._%+\-])[@θΘ]?x(?=([0-9a-fA-F]{6,})(?![A-Za-z0-9@]))")
_HEX_DIGITS = re.compile(r"(?<=0x)[0-9a-fA-F]{6,}\b")


def restore_hex(text: str) -> str:
    """Read-back text with a hex number's lost ``0x`` zero put back, and a capital ``C`` the
    reader guessed among its small hex letters lowered (``_lower_size_only``)."""
    if "x" not in text:
        return text

    def fix(m: re.Match) -> str:
        digits = m.group(1)
        if not (any(c.isdigit() for c in digits) and any(c.isalpha() for c in digits)):
            return m.group()
        return "0x"
    out = _HEX_LEAD.sub(fix, text)
    return _HEX_DIGITS.sub(lambda h: _lower_size_only(h.group()), out)


def restore_zeros(text: str) -> str:
    """Read-back text with misreads of the identifier face's dotted zero put back to ``0``.

    Narrow on purpose: only inside a token (a run without spaces) of four or more ASCII letters
    and digits with the zero back, never in a line holding other Greek letters (Greek prose keeps
    its theta), never an email's at sign (one a domain follows), and only where the token, with the
    zero back, is an identifier ``find`` would set in the identifier face (so it was drawn with the
    dotted zero, not as prose)."""
    if not any(c in text for c in ZERO_MISREADS) or GREEK.search(text.replace("θ", "").replace("Θ", "")):
        return text     # a line with Greek in it: the reader spells Greek words half in Latin ("pθn")
    out = []
    last = 0
    emails = [e.span() for e in _EMAIL.finditer(text)]
    for m in _TOKEN.finditer(text):
        token = m.group()
        if not any(c in token for c in ZERO_MISREADS) or sum(_ascii_alnum(c) for c in token) < 3:
            continue    # with the zero back, at least four letters and digits (the reader may split a token)
        # an email's at sign has a local part before it: not only misreads ("@@@@@O2O, and")
        at = [i for i, c in enumerate(token) if c in ZERO_MISREADS and _restorable(token, i)
              and not (c == "@" and token[:i].strip(ZERO_MISREADS)
                       and (_AT_DOMAIN.match(text, m.start() + i)
                            or any(a <= m.start() + i < b for a, b in emails)))]
        if not at:
            continue
        fixed = "".join("0" if i in at else c for i, c in enumerate(token))
        spans = find(fixed)
        keep = {i for i in at if any(a <= i < b for a, b in spans)}
        if keep:
            out.append(text[last:m.start()])
            out.append("".join("0" if i in keep else c for i, c in enumerate(token)))
            last = m.end()
    out.append(text[last:])
    return "".join(out)
