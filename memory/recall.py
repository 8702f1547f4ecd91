"""Recall: old turns back as decoded text, by content, by position or by time.

Content matching is fuzzy (OCR of a faded page is not exact): the query's keywords are matched
against the decoded words with an edit-distance ratio. Every hit says where it came from (page,
turn, tier, age) and how sure we are; where the session keeps source text, the exact source and
the measured character error of the decoded text come with it.
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from optimem.errors import BadRequest
from optimem.memory.context import PlacedPage, parse_time
from optimem.memory.reading import Reader
from optimem.memory.results import Hit, Recall
from optimem.memory.store import SessionKeys, SessionMeta, Store, TurnRecord
from optimem.memory.turns import normalise_time

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
                            span["end"], "\n".join(l["text"] for l in body), sum(scores) / len(scores)))
    return out


@dataclass(frozen=True)
class Query:
    """What a recall asks for, validated: content, a turn (index, 'first' or 'last'), a time range, a role."""
    text: str | None = None
    turn: int | str | None = None
    since: float | None = None
    until: float | None = None
    role: str | None = None
    limit: int = 5

    @classmethod
    def of(cls, query: Any = None, turn: Any = None, since: Any = None, until: Any = None, role: Any = None,
           limit: Any = 5) -> "Query":
        if query is not None and (not isinstance(query, str) or not query.strip()):
            raise BadRequest("query must be a non-empty string")
        if query is None and turn is None and since is None and until is None:
            raise BadRequest("recall needs a 'query', a 'turn' (index, 'first' or 'last') or a time range")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise BadRequest("limit must be between 1 and 100")
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, (int, str))
                                 or isinstance(turn, str) and turn not in ("first", "last")):
            raise BadRequest("turn must be an index, 'first' or 'last'")
        return cls(query, turn, parse_time(normalise_time(since)) if since else None,
                   parse_time(normalise_time(until)) if until else None, role, limit)

    def wants(self, role: str, when: str) -> bool:
        if self.role and role != self.role:
            return False
        if self.since is not None and parse_time(when) < self.since:
            return False
        return not (self.until is not None and parse_time(when) > self.until)


def chosen_turns(q: Query, placed: list[PlacedPage], text: list[TurnRecord]) -> set[int]:
    """The turns a query may return. Turn positions are known without reading any page."""
    known = [(s["index"], s["role"], s["time"]) for p in placed for s in p.record.turns]
    known += [(t.index, t.role, t.time) for t in text]
    candidates = sorted({i for i, r, w in known if q.wants(r, w)})
    if q.turn is None:
        return set(candidates)
    target = ((candidates[0] if candidates else None) if q.turn == "first" else
              (candidates[-1] if candidates else None) if q.turn == "last" else q.turn)
    return {target} if target in candidates else set()


def recall(q: Query, k: SessionKeys, meta: SessionMeta, placed: list[PlacedPage], text: list[TurnRecord],
           reader: Reader | None, store: Store, read_budget_s: float) -> Recall:
    """Old turns back as decoded text: the chosen turns' fragments, scored against the query.
    ``reader`` may be None when there are no pages (nothing to read: the backend need not load)."""
    started = time.perf_counter()
    chosen = chosen_turns(q, placed, text)
    fragments: list[Fragment] = []
    pages_read = pages_unread = 0
    # Pages the worker has read cost nothing; the rest are read now, newest (sharpest) first,
    # until the read budget is spent, so a recall never hangs on a large unread session.
    cached = {p.record.page: reader.cached(k, p.record.page, p.tier) for p in placed}
    deadline = started + read_budget_s
    for p in sorted(placed, key=lambda p: (cached[p.record.page] is None, -p.record.page)):
        spans = [s for s in p.record.turns if s["index"] in chosen]
        if not spans:
            continue
        decoded = cached[p.record.page]
        if decoded is None and not p.tier.gone:
            if time.perf_counter() > deadline:
                pages_unread += 1
                continue
            decoded = reader.decoded(k, p.record.page, p.tier)
        pages_read += decoded is not None
        headers = defaultdict(list)
        for t_index, _, line_text, kind in store.lines(k, p.record.page):
            if kind == "header":
                headers[t_index].append(line_text)
        fragments += fragments_from_decoded(spans, decoded, headers, p.record.page, p.tier.name, p.age)
    for t in text:
        if t.index in chosen:
            body = t.content[t.start:]
            fragments.append(Fragment(t.index, t.role, t.time, None, "text", 0.0, t.start, len(t.content), body, 1.0))

    scored = []
    for f in fragments:
        match = match_score(q.text, f.decoded) if q.text else 1.0
        if q.text and match <= 0:
            continue
        scored.append((match * f.score, match, f))
    if q.text:
        scored.sort(key=lambda h: (-h[0], h[2].turn, h[2].start))
    else:
        scored.sort(key=lambda h: (h[2].turn, h[2].start))
    scored = scored[:q.limit]
    sources = store.sources(k, [f.turn for _, _, f in scored]) if meta.keep_source else {}
    hits = []
    for confidence, match, f in scored:
        hit = Hit(turn=f.turn, role=f.role, time=f.time, page=f.page, tier=f.tier, age=f.age, span=[f.start, f.end],
                  text=f.decoded, confidence=round(confidence, 4), match=round(match, 4))
        if f.turn in sources:
            exact = sources[f.turn]["content"][f.start:f.end]
            hit.source, hit.char_error = exact, round(char_error(f.decoded, exact), 4)
        hits.append(hit)
    return Recall(session=k.session, hits=hits, pages_read=pages_read, pages_unread=pages_unread,
                  seconds=round(time.perf_counter() - started, 3))
