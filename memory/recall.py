"""Recall: old turns back as decoded text, by content, by position or by time.

A recall finds the turns (``find``: by the session's BM25 text index for a content query, see
``memory/index.py``; by position or time otherwise), reads only those turns' lines off their pages
at the tiers the pages have now (``read``), and answers with hits that say where each came from
(page, turn, tier, age) and how sure we are (``answer``); where the session keeps source text, the
exact source and the measured character error of the decoded text come with it.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from rapidfuzz.distance import Levenshtein

from optimem.errors import BadRequest
from optimem.memory import index as ix, question, ranking, times, vectors
from optimem.memory.context import PlacedPage
from optimem.memory.fragments import Fragment, fragments_from_decoded, headers_of
from optimem.memory.reading import Reader
from optimem.memory.results import Hit, Recall
from optimem.memory.searchable import make_searchable
from optimem.memory.store import PageRecord, SessionKeys, SessionMeta, Store, TurnRecord
from optimem.memory.turns import check_unicode


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def char_error(decoded: str, source: str) -> float:
    """Character error rate, whitespace ignored (line wrapping moves it around)."""
    a, b = squash(decoded), squash(source)
    return Levenshtein.distance(a, b) / max(1, len(b))


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
        if query is not None and len(query) > 10_000:
            raise BadRequest(f"query has {len(query)} characters; the limit is 10000")
        if role is not None and (not isinstance(role, str) or len(role) > 64):
            raise BadRequest("role must be a string of at most 64 characters")
        for name, text in (("query", query), ("role", role)):
            if text is not None:
                check_unicode(text, name)
        if query is None and turn is None and since is None and until is None:
            raise BadRequest("recall needs a 'query', a 'turn' (index, 'first' or 'last') or a time range")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise BadRequest("limit must be between 1 and 100")
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, (int, str))
                                 or isinstance(turn, str) and turn not in ("first", "last")):
            raise BadRequest("turn must be an index, 'first' or 'last'")
        return cls(query, turn, times.parse(times.normalise(since)) if since else None,
                   times.parse(times.normalise(until)) if until else None, role, limit)

    def wants(self, role: str, when: str) -> bool:
        if self.role and role != self.role:
            return False
        if self.since is not None and times.parse(when) < self.since:
            return False
        return not (self.until is not None and times.parse(when) > self.until)


class Turns:
    """Where a recall's turns are and what they are (role, time), read for the turns it looks at,
    not for the whole session: pages are located through the page index (``Store.pages_holding``,
    ``Store.pages_in_time``), full records are read only for them, in batches while scanning; turns
    still kept as text (``text_from`` up to ``turn_count``) are read by index the same way, so a
    backlog of unsealed turns after a bulk import costs a recall nothing it does not ask for."""
    BATCH = 16      # full page records read at a time when scanning for 'first', 'last' or a time range
    TEXT_BATCH = 64     # text turns read at a time when scanning them
    ROLES_FROM = 32     # the newest text turns whose roles join the candidates' (names in a question)

    def __init__(self, store: Store, k: SessionKeys, place: Callable[[list[PageRecord]], list[PlacedPage]],
                 text_from: int, turn_count: int, page_count: int):
        self.store, self.k, self.place, self.page_count = store, k, place, page_count
        self.text_from, self.turn_count = text_from, turn_count
        self._text: dict[int, TurnRecord | None] = {}
        self._where: dict[int, list[tuple[PlacedPage, dict]]] = {}
        self._placed: dict[int, PlacedPage] = {}

    def text(self, turns: Iterable[int]) -> dict[int, TurnRecord]:
        """Those of ``turns`` still kept as text, each read from Redis once."""
        turns = list(turns)
        ask = [t for t in dict.fromkeys(turns) if self.text_from <= t < self.turn_count and t not in self._text]
        if ask:
            self._text.update(self.store.text_turns_at(self.k, ask))
        return {t: r for t in turns if (r := self._text.get(t)) is not None}

    def newest_text(self) -> list[TurnRecord]:
        """The last few turns kept as text, oldest first."""
        got = self.text(range(max(self.text_from, self.turn_count - self.ROLES_FROM), self.turn_count))
        return [got[t] for t in sorted(got)]

    def _text_turns(self, backwards: bool) -> Iterator[TurnRecord]:
        """Every turn kept as text that begins there (start 0), in turn order or backwards, in batches."""
        starts = range(self.turn_count - self.TEXT_BATCH, self.text_from - self.TEXT_BATCH, -self.TEXT_BATCH) \
            if backwards else range(self.text_from, self.turn_count, self.TEXT_BATCH)
        for a in starts:
            batch = range(max(a, self.text_from), min(a + self.TEXT_BATCH, self.turn_count))
            got = self.text(batch)
            for t in (reversed(batch) if backwards else batch):
                if t in got and got[t].start == 0:      # a turn with start > 0 begins on a page
                    yield got[t]

    def _add(self, records: list[PageRecord]) -> None:
        for p in self.place([r for r in records if r.page not in self._placed]):
            self._placed[p.record.page] = p
            for span in p.record.turns:
                self._where.setdefault(span["index"], []).append((p, span))

    def where(self, turns: Iterable[int]) -> dict[int, list[tuple[PlacedPage, dict]]]:
        """turn -> the pages holding it, each with its span there (empty for a turn still text)."""
        turns = list(turns)
        text = self.text(turns)
        missing = {t for t in turns if t not in self._where and t not in text}
        if missing:
            self._add(self.store.pages_holding(self.k, missing))
            for t in missing:
                self._where.setdefault(t, [])
        return {t: sorted(self._where.get(t, []), key=lambda ps: ps[0].record.page) for t in turns}

    def role_time(self, turn: int) -> tuple[str, str] | None:
        if (t := self.text([turn]).get(turn)) is not None:
            return t.role, t.time
        held = self.where([turn])[turn]
        return (held[0][1]["role"], held[0][1]["time"]) if held else None

    def allowed(self, q: "Query", turn: int) -> bool:
        known = self.role_time(turn)
        return known is not None and q.wants(*known)

    def scan(self, q: "Query", need: int, backwards: bool) -> list[int]:
        """The first ``need`` turns (the last, ``backwards``) that ``q`` wants, in turn order."""
        found: list[int] = []

        def take_text() -> None:
            for t in self._text_turns(backwards):
                if len(found) >= need:
                    return
                if q.wants(t.role, t.time):
                    found.append(t.index)

        if backwards:       # the newest turns are text
            take_text()
        if q.since is not None or q.until is not None:
            pages = self.store.pages_in_time(self.k, _iso(q.since), _iso(q.until))
        else:
            pages = list(range(self.page_count))
        if backwards:
            pages.reverse()
        seen = set(found)
        for i in range(0, len(pages), self.BATCH):
            if len(found) >= need:
                break
            records = self.store.pages_of(self.k, pages[i:i + self.BATCH])
            self._add(records)
            spans = [s for r in records for s in r.turns]
            for span in (reversed(spans) if backwards else spans):
                if len(found) < need and span["index"] not in seen and q.wants(span["role"], span["time"]):
                    found.append(span["index"])
                seen.add(span["index"])
        if not backwards:
            take_text()
        return sorted(found[:need])

    def chosen(self, q: "Query") -> list[int]:
        """The turns a recall by position or time returns, in turn order (at most ``q.limit``)."""
        if isinstance(q.turn, int):
            return [q.turn] if self.allowed(q, q.turn) else []
        if q.turn in ("first", "last"):
            return self.scan(q, 1, backwards=q.turn == "last")
        return self.scan(q, q.limit, backwards=False)


@dataclass
class Found:
    """The turns a recall answers with, in the order it lists them: (turn, page) where page is the
    page whose decoded text matched (forget-for-real) or None for "every page it is on"."""
    wanted: list[tuple[int, int | None]] = field(default_factory=list)
    match: dict[int, float] = field(default_factory=dict)       # turn -> coverage of the query
    searched_text: dict[int, str] = field(default_factory=dict)  # turn -> "source" or "decoded"
    time_match: dict[int, str] = field(default_factory=dict)     # turn -> the question's time window it is in
    asked_by: dict[int, int] = field(default_factory=dict)       # turn -> the turn before that asks what it answers
    searched: int = 0               # pages whose text was searched in time (content query)
    unsearched: int = 0             # pages that could not be searched in time


CANDIDATES = 100      # index hits reranked per content query


def understood(text: str, found: list[tuple[str, float, float]], turns: Turns, store: Store, k: SessionKeys,
               keep_source: bool, dense: dict[int, float] | None, meaning: float = 0.0) -> list[ranking.Candidate]:
    """The index's hits (mixed with ``dense``) reranked by who and when the question is about
    (``memory/question.py``), relative to the session's own roles and times (never the wall clock)."""
    found = ranking.mix(found, dense or {}, meaning)[:ranking.RERANK]
    near = sorted({t for doc, _, _ in found for t in _around(ix.doc_turn(doc)[0])} | {0})
    if keep_source:      # role and time of every candidate and neighbour: one round trip
        known = {t: ranking.Said(s["role"], s["time"], "?" in s["content"] or "？" in s["content"])
                 for t, s in store.sources(k, near).items()}
    else:
        turns.where(near)
        known = {t: ranking.Said(*rt) for t in near if (rt := turns.role_time(t)) is not None}
    newest = turns.newest_text()
    roles = sorted({s.role for s in known.values()} | {t.role for t in newest})
    stamps = [times.parse(s.time) for s in known.values()] + [times.parse(t.time) for t in newest]
    first = times.parse(known[0].time) if 0 in known else min(stamps, default=0.0)
    latest = times.parse(newest[-1].time) if newest else max(stamps, default=0.0)

    def locate(words: str) -> float | None:
        """When the session spoke of an event: the time of the turn the index ranks first for its words."""
        hits = store.search(k, words, limit=1, expand=False)
        if not hits:
            return None
        turn = ix.doc_turn(hits[0][0])[0]
        if turn not in known:
            if keep_source:
                got = store.sources(k, [turn]).get(turn)
                return times.parse(got["time"]) if got else None
            rt = turns.role_time(turn)
            return times.parse(rt[1]) if rt else None
        return times.parse(known[turn].time)

    return ranking.rerank(found, ix.doc_turn, known.get, question.who(text, roles),
                          question.when(text, first, latest, locate))


def _around(turn: int) -> tuple[int, ...]:
    reach = 1 + len(ranking.LATER)
    return tuple(t for t in range(turn - 1, turn + reach + 1) if t >= 0)


def find(q: Query, k: SessionKeys, meta: SessionMeta, turns: Turns, reader: Callable[[], Reader], store: Store,
         deadline: float, placed: Callable[[], list[PlacedPage]], embed_model: str = "") -> Found:
    """The turns a recall answers with: by the text index for a content query, else by position or time."""
    if not q.text:
        return Found(wanted=[(turn, None) for turn in turns.chosen(q)])
    found = Found()
    only = turns.chosen(Query(turn=q.turn, role=q.role, since=q.since, until=q.until)) \
        if q.turn is not None else None
    if not meta.keep_source and turns.page_count:
        found.searched, found.unsearched = make_searchable(k, placed(), reader(), store, deadline)
    else:
        found.searched = turns.page_count
    dense = vectors.similarities(store, k, meta.turns, meta.keep_source, q.text, embed_model)
    # The question's words widened by their neighbours in meaning (memory/expansion.py), unless a
    # sentence model already ranks by meaning here (beside it they did not pay: bench/RESULTS.md).
    expand = dense is None or vectors.expands(embed_model)
    found_docs = store.search(k, q.text, limit=CANDIDATES, expand=expand)
    ranked = understood(q.text, found_docs, turns, store, k, meta.keep_source, dense, vectors.weight(embed_model))
    floor = vectors.floor(embed_model)
    for n, c in enumerate(ranked):
        if n % (2 * q.limit) == 0:   # locate the next few hits' pages in one go
            turns.where({r.turn for r in ranked[n:n + 2 * q.limit]})
        if c.turn in found.match or (only is not None and c.turn not in only) or not turns.allowed(q, c.turn):
            continue
        if dense is not None and not c.coverage and dense.get(c.turn, 0.0) < floor:
            continue              # found by meaning alone, and not near enough to answer
        if c.page is not None and not any(p.record.page == c.page and not p.tier.gone
                                          for p, _ in turns.where([c.turn])[c.turn]):
            continue              # a page that faded out since it was indexed holds nothing now
        found.match[c.turn] = c.coverage
        found.searched_text[c.turn] = "source" if c.page is None else "decoded"
        if c.time_match:
            found.time_match[c.turn] = c.time_match
        if c.asked_by is not None:
            found.asked_by[c.turn] = c.asked_by
        found.wanted.append((c.turn, c.page))
        if len(found.wanted) >= q.limit:
            break
    return found


@dataclass
class Read:
    fragments: list[Fragment]
    read_pages: set[int]
    unread_pages: set[int]


def read(wanted: list[tuple[int, int | None]], k: SessionKeys, turns: Turns, reader: Callable[[], Reader],
         store: Store, deadline: float) -> Read:
    """Each wanted turn's text: its lines read off its pages at their tiers now (every read started
    first, they share the reader's pools, then collected until the deadline), or the recent text."""
    where = turns.where([turn for turn, _ in wanted])
    recent = turns.text(turn for turn, _ in wanted)
    jobs: list[tuple[int, PlacedPage | None, dict | None, Any]] = []
    for turn, page in wanted:
        for held, held_span in where.get(turn, []):
            if page is not None and held.record.page != page:
                continue
            future = reader().fetch(k, held.record.page, held.tier, turn=turn) if not held.tier.gone else None
            jobs.append((turn, held, held_span, future))
        if turn in recent and page is None:
            jobs.append((turn, None, None, None))
    out = Read([], set(), set())
    headers: dict[int, dict[int, list[str]]] = {}
    for turn, p, span, future in jobs:
        if p is None or span is None:      # (both None together: a turn still text)
            t = recent[turn]
            out.fragments.append(Fragment(t.index, t.role, t.time, None, "text", 0.0, t.start, len(t.content),
                                          t.content[t.start:], 1.0))
            continue
        page = p.record.page
        decoded = None
        if future is not None:
            decoded = reader().wait(future, deadline)
            if decoded is None:
                out.unread_pages.add(page)
                continue
            out.read_pages.add(page)
        if page not in headers:
            headers[page] = headers_of(store, k, page)
        out.fragments += fragments_from_decoded([span], decoded, headers[page], page, p.tier.name, p.age)
    out.read_pages -= out.unread_pages
    return out


def answer(q: Query, k: SessionKeys, meta: SessionMeta, store: Store, found: Found, got: Read,
           started: float) -> Recall:
    """The hits, with the exact source and its character error where the session keeps source."""
    if q.text:
        pages_unread = found.unsearched + len(got.unread_pages)
        pages_read = max(0, found.searched - len(got.unread_pages))
    else:
        pages_read, pages_unread = len(got.read_pages), len(got.unread_pages)
    fragments = got.fragments[:q.limit]
    sources = store.sources(k, [f.turn for f in fragments] + [found.asked_by[f.turn] for f in fragments
                                                              if f.turn in found.asked_by]) if meta.keep_source else {}
    found_by = "index" if q.text else "position" if q.turn is not None else "time"
    hits = []
    for f in fragments:
        m = found.match.get(f.turn, 1.0)
        hit = Hit(turn=f.turn, role=f.role, time=f.time, page=f.page, tier=f.tier, age=f.age, span=[f.start, f.end],
                  text=f.decoded, confidence=round(m * f.score, 4), match=round(m, 4), found_by=found_by,
                  searched=found.searched_text.get(f.turn), time_match=found.time_match.get(f.turn))
        if f.turn in sources:
            exact = sources[f.turn]["content"][f.start:f.end]
            hit.source, hit.char_error = exact, round(char_error(f.decoded, exact), 4)
        if (asker := found.asked_by.get(f.turn)) in sources:     # the question this turn answers
            hit.asked = {"turn": asker, "role": sources[asker]["role"], "text": sources[asker]["content"]}
        hits.append(hit)
    return Recall(session=k.session, hits=hits, pages_read=pages_read, pages_unread=pages_unread,
                  seconds=round(time.perf_counter() - started, 3))


def recall(q: Query, k: SessionKeys, meta: SessionMeta, turns: Turns, reader: Callable[[], Reader],
           store: Store, read_budget_s: float, placed: Callable[[], list[PlacedPage]], embed_model: str = "") -> Recall:
    """Old turns back as decoded text: find the turns, read only those turns' lines at their pages'
    tiers now, answer. ``reader`` gives the Reader, asked for only when a page must be read (the
    backend need not load otherwise); ``placed`` gives every page placed, asked for only by a
    content query on a forget-for-real session (whose unread pages must be read to be searchable).

    ``pages_read``/``pages_unread``: for a content query, pages whose text was searched (by index:
    the source of a keep-source session, the decoded text of a forget-for-real one) and answered in
    time, and those that were not; otherwise pages whose asked-for turns were read in time, or not.

    Each hit says how it was found (``found_by``: "index", "position" or "time") and, for the
    index, on which text (``searched``: "source" for a source document ``t<turn>``, "decoded" for a
    page's read ``p<page>:<turn>``)."""
    started = time.perf_counter()
    deadline = time.monotonic() + read_budget_s
    found = find(q, k, meta, turns, reader, store, deadline, placed, embed_model)
    got = read(found.wanted, k, turns, reader, store, deadline)
    return answer(q, k, meta, store, found, got, started)


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else times.iso(stamp)
