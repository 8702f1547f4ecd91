"""Recall: old turns back as decoded text, by content, by position or by time.

Content matching is fuzzy (OCR of a faded page is not exact): the query's keywords are matched
against the decoded words with an edit-distance ratio. Every hit says where it came from (page,
turn, tier, age) and how sure we are; where the session keeps source text, the exact source and
the measured character error of the decoded text come with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

STOPWORDS = set("""a about above after again all am an and any are as at be been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own said same say
she should so some such than that the their theirs them themselves then there these they this those
through to too told under until up very was we were what when where which while who whom why will
with would you your yours yourself yourselves thing things talk talked tell ago week weeks day days
remember first last""".split())
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def keywords(query: str) -> list[str]:
    words = re.findall(r"\w+", query.lower())
    return [w for w in words if w not in STOPWORDS and len(w) > 1] or words


def match_score(query: str, text: str) -> float:
    """0..1: how well the text matches the query's keywords, tolerant of OCR errors."""
    if not text.strip():
        return 0.0
    if CJK.search(query):
        return fuzz.partial_ratio("".join(keywords(query)), text) / 100
    words = re.findall(r"\w+", text.lower())
    kws = keywords(query)
    if not words or not kws:
        return 0.0
    total = 0.0
    for kw in kws:
        best = process.extractOne(kw, words, scorer=fuzz.ratio)
        total += best[1] / 100 if best and best[1] >= 75 else 0.0
    return total / len(kws)


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def char_error(decoded: str, source: str) -> float:
    """Character error rate, whitespace ignored (line wrapping moves it around)."""
    a, b = squash(decoded), squash(source)
    return Levenshtein.distance(a, b) / max(1, len(b))


@dataclass
class Fragment:
    """What one page (or the recent text) holds of one turn."""
    turn: int
    role: str
    time: str
    page: int | None          # None: still plain text
    tier: str                 # "text" for recent turns
    age: float
    start: int
    end: int
    decoded: str = ""
    score: float = 1.0        # the reader's confidence
    lines: list[str] = field(default_factory=list)


def strip_header(line: dict, heads: list[str]) -> dict | None:
    """The typeset header ("user 19:38:") is not the turn's text. A reader of line boxes sees it
    alone (drop it); a reader of whole rows sees it in front of the text (cut it off)."""
    text = line["text"]
    for head in heads:
        if len(text) >= len(head) + 2 and fuzz.ratio(text[:len(head)], head) > 80:
            return {**line, "text": text[len(head):].lstrip()}
        if fuzz.ratio(text, head) > 80:
            return None
    return line


def fragments_from_decoded(spans: list[dict], decoded: dict | None, headers: dict[int, list[str]],
                           page: int, tier: str, age: float) -> list[Fragment]:
    by_turn: dict[int, list[dict]] = {}
    for line in (decoded or {}).get("lines", []):
        if line.get("turn") is not None:
            by_turn.setdefault(line["turn"], []).append(line)
    out = []
    for span in spans:
        lines = by_turn.get(span["index"], [])
        body = [line for line in (strip_header(l, headers.get(span["index"], [])) for l in lines) if line]
        scores = [l["score"] for l in body] or [0.0]
        out.append(Fragment(span["index"], span["role"], span["time"], page, tier, age, span["start"],
                            span["end"], "\n".join(l["text"] for l in body), sum(scores) / len(scores),
                            [l["text"] for l in body]))
    return out
