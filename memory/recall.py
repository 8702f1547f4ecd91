"""Recall: old turns back as decoded text, by content, by position or by time.

Content matching is fuzzy (OCR of a faded page is not exact): the query's keywords are matched
against the decoded words with an edit-distance ratio. Every hit says where it came from (page,
turn, tier, age) and how sure we are; where the session keeps source text, the exact source and
the measured character error of the decoded text come with it.
"""
from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from optimem.errors import BadRequest
from optimem.memory import index as ix
from optimem.memory.context import PlacedPage, parse_time
from optimem.memory.reading import Reader
from optimem.memory.results import Hit, Recall
from optimem.memory.store import PageRecord, SessionKeys, SessionMeta, Store, TurnRecord
from optimem.memory.turns import normalise_time

STOPWORDS = set("""a about above after again all am an and any are as at be been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own said same say
she should so some such than that the their theirs them themselves then there these they this those
through to too told under until up very was we were what when where which while who whom why will
with would you your yours yourself yourselves thing things talk talked tell ago week weeks day days
remember first last""".split())
log = logging.getLogger("optimem.recall")
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
        if query is not None and len(query) > 10_000:
            raise BadRequest(f"query has {len(query)} characters; the limit is 10000")
        if role is not None and (not isinstance(role, str) or len(role) > 64):
            raise BadRequest("role must be a string of at most 64 characters")
        from optimem.memory.turns import check_unicode  # (here: only Query.of is this change's to edit)

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
        return cls(query, turn, parse_time(normalise_time(since)) if since else None,
                   parse_time(normalise_time(until)) if until else None, role, limit)

    def wants(self, role: str, when: str) -> bool:
        if self.role and role != self.role:
            return False
        if self.since is not None and parse_time(when) < self.since:
            return False
        return not (self.until is not None and parse_time(when) > self.until)


def iso(stamp: float | None) -> str | None:
    """A time as stored turns carry it (``turns.normalise_time``): such strings sort as times do."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Turns:
    """Where a recall's turns are and what they are (role, time), read for the turns it looks at,
    not for the whole session: pages are located through the page index (``Store.pages_holding``,
    ``Store.pages_in_time``), full records are read only for them, in batches while scanning."""
    BATCH = 16      # full page records read at a time when scanning for 'first', 'last' or a time range

    def __init__(self, store: Store, k: SessionKeys, place: Callable[[list[PageRecord]], list[PlacedPage]],
                 text: list[TurnRecord], page_count: int):
        self.store, self.k, self.place, self.text, self.page_count = store, k, place, text, page_count
        self.recent = {t.index: t for t in text}
        self._where: dict[int, list[tuple[PlacedPage, dict]]] = {}
        self._placed: dict[int, PlacedPage] = {}

    def _add(self, records: list[PageRecord]) -> None:
        for p in self.place([r for r in records if r.page not in self._placed]):
            self._placed[p.record.page] = p
            for span in p.record.turns:
                self._where.setdefault(span["index"], []).append((p, span))

    def where(self, turns: Iterable[int]) -> dict[int, list[tuple[PlacedPage, dict]]]:
        """turn -> the pages holding it, each with its span there (empty for a turn still text)."""
        missing = {t for t in turns if t not in self._where and t not in self.recent}
        if missing:
            self._add(self.store.pages_holding(self.k, missing))
            for t in missing:
                self._where.setdefault(t, [])
        return {t: sorted(self._where.get(t, []), key=lambda ps: ps[0].record.page) for t in turns}

    def role_time(self, turn: int) -> tuple[str, str] | None:
        if turn in self.recent:
            return self.recent[turn].role, self.recent[turn].time
        held = self.where([turn])[turn]
        return (held[0][1]["role"], held[0][1]["time"]) if held else None

    def allowed(self, q: "Query", turn: int) -> bool:
        known = self.role_time(turn)
        return known is not None and q.wants(*known)

    def scan(self, q: "Query", need: int, backwards: bool) -> list[int]:
        """The first ``need`` turns (the last, ``backwards``) that ``q`` wants, in turn order."""
        found: list[int] = []
        text = [t for t in self.text if t.start == 0]    # a turn with start > 0 begins on a page
        for t in (reversed(text) if backwards else []):
            if len(found) < need and q.wants(t.role, t.time):
                found.append(t.index)
        if q.since is not None or q.until is not None:
            pages = self.store.pages_in_time(self.k, iso(q.since), iso(q.until))
        else:
            pages = list(range(self.page_count))
        if backwards:
            pages.reverse()
        seen = {t.index for t in text}
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
        for t in ([] if backwards else text):
            if len(found) < need and q.wants(t.role, t.time):
                found.append(t.index)
        return sorted(found[:need])

    def chosen(self, q: "Query") -> list[int]:
        """The turns a recall by position or time returns, in turn order (at most ``q.limit``)."""
        if isinstance(q.turn, int):
            return [q.turn] if self.allowed(q, q.turn) else []
        if q.turn in ("first", "last"):
            return self.scan(q, 1, backwards=q.turn == "last")
        return self.scan(q, q.limit, backwards=False)


def headers_of(store: Store, k: SessionKeys, page: int) -> dict[int, list[str]]:
    """The typeset header lines ("user 19:38:") of each turn on a page."""
    headers: dict[int, list[str]] = defaultdict(list)
    for t_index, _, line_text, kind in store.lines(k, page):
        if kind == "header":
            headers[t_index].append(line_text)
    return headers


def index_page(store: Store, k: SessionKeys, placed: PlacedPage, tier_key: str, decoded: dict | None) -> None:
    """Index what a read of a page gave of each of its turns (forget-for-real sessions)."""
    if decoded is None:
        return
    frags = fragments_from_decoded(placed.record.turns, decoded, headers_of(store, k, placed.record.page),
                                   placed.record.page, placed.tier.name, placed.age)
    texts: dict[int, str] = {}
    for f in frags:
        texts[f.turn] = (texts.get(f.turn, "") + "\n" + f.decoded).strip()
    store.index_decoded(k, placed.record.page, tier_key, {t: v for t, v in texts.items() if v})


def _searchable_forgotten(k: SessionKeys, placed: list[PlacedPage], reader: Reader | None, store: Store,
                          deadline: float) -> tuple[int, int]:
    """Forget-for-real: make the session's readable pages searchable (their decoded text indexed),
    reading the ones nobody read yet, newest first, until the deadline; take gone pages out.
    Returns (pages searchable, pages not searchable in time): a page never indexed whose read did
    not come back in time (or failed) is not searchable, and is counted so.

    A page indexed at a sharper tier than it has now is re-indexed from its read at the current
    tier when that is cached; otherwise it stays searchable by its earlier reading (never read
    here: that would spend the recall's budget on pages already searchable)."""
    indexed = store.indexed_pages(k)
    store.unindex_pages(k, [p.record.page for p in placed if p.tier.gone and p.record.page in indexed])
    live = [p for p in placed if not p.tier.gone]
    for p in live:
        key = reader.cache_key(p.tier)
        if p.record.page in indexed and indexed[p.record.page] != key:
            decoded = reader.cached(k, p.record.page, p.tier)
            if decoded is not None:
                index_page(store, k, p, key, decoded)
    todo = [p for p in sorted(live, key=lambda p: -p.record.page) if p.record.page not in indexed]
    if not todo:
        return len(live), 0
    to_read = []
    for p in todo:
        decoded = reader.cached(k, p.record.page, p.tier)
        if decoded is not None:
            index_page(store, k, p, reader.cache_key(p.tier), decoded)
        else:
            to_read.append(p)
    ahead = max(1, getattr(reader, "threads", 1))
    futures: dict[int, Any] = {}
    unread = 0
    for i, p in enumerate(to_read):
        if time.monotonic() >= deadline:
            unread += len(to_read) - i
            break
        for q in to_read[i:i + ahead]:
            if q.record.page not in futures:
                futures[q.record.page] = reader.fetch(k, q.record.page, q.tier)
        try:
            decoded = reader.wait(futures[p.record.page], deadline)
        except Exception:  # noqa: BLE001  a failed read: the page is not searchable now, say so
            log.warning("reading page %s of %s for its index failed", p.record.page, k.tag, exc_info=True)
            unread += 1
            continue
        if decoded is None:
            unread += len(to_read) - i
            break
        index_page(store, k, p, reader.cache_key(p.tier), decoded)
    return len(live) - unread, unread


def recall(q: Query, k: SessionKeys, meta: SessionMeta, turns: Turns, reader: Callable[[], Reader],
           store: Store, read_budget_s: float, placed: Callable[[], list[PlacedPage]]) -> Recall:
    """Old turns back as decoded text: find the turns (by the text index for a content query, by
    position or time otherwise), then read only those turns' lines at their pages' tiers now.
    ``reader`` gives the Reader, asked for only when a page must be read (the backend need not
    load otherwise); ``placed`` gives every page placed, asked for only by a content query on a
    forget-for-real session (whose unread pages must be read to be searchable).

    ``pages_read``/``pages_unread``: for a content query, pages whose text was searched (by index:
    the source of a keep-source session, the decoded text of a forget-for-real one) and answered in
    time, and those that were not; otherwise pages whose asked-for turns were read in time, or not.

    Each hit says how it was found (``found_by``: "index", "position" or "time") and, for the
    index, on which text (``searched``: "source" for a source document ``t<turn>``, "decoded" for a
    page's read ``p<page>:<turn>``)."""
    started = time.perf_counter()
    deadline = time.monotonic() + read_budget_s
    match: dict[int, float] = {}
    # (turn, page or None for "every page it is on") in the order the answer lists them
    wanted: list[tuple[int, int | None]] = []
    searched_text: dict[int, str] = {}        # turn -> "source" or "decoded": the text the index matched
    searched = unsearched = 0
    if q.text:
        only = turns.chosen(Query(turn=q.turn, role=q.role, since=q.since, until=q.until)) \
            if q.turn is not None else None
        if not meta.keep_source and turns.page_count:
            searched, unsearched = _searchable_forgotten(k, placed(), reader(), store, deadline)
        else:
            searched = turns.page_count
        hits = [(doc, coverage) for doc, _, coverage in store.search(k, q.text, limit=max(50, 10 * q.limit))]
        for n, (doc, coverage) in enumerate(hits):
            turn, page = ix.doc_turn(doc)
            if n % (2 * q.limit) == 0:   # locate the next few hits' pages in one go
                where = turns.where({ix.doc_turn(d)[0] for d, _ in hits[n:n + 2 * q.limit]})
            if turn in match or (only is not None and turn not in only) or not turns.allowed(q, turn):
                continue
            if page is not None and not any(p.record.page == page and not p.tier.gone for p, _ in where[turn]):
                continue              # a page that faded out since it was indexed holds nothing now
            match[turn] = coverage
            searched_text[turn] = "source" if page is None else "decoded"
            wanted.append((turn, page))
            if len(wanted) >= q.limit:
                break
    else:
        wanted = [(turn, None) for turn in turns.chosen(q)]
    where = turns.where([turn for turn, _ in wanted])
    recent = turns.recent

    # Start every read first (they share the reader's pools), then collect them until the deadline.
    jobs: list[tuple[int, PlacedPage | None, dict | None, Any]] = []
    for turn, page in wanted:
        for p, span in where.get(turn, []):
            if page is not None and p.record.page != page:
                continue
            future = reader().fetch(k, p.record.page, p.tier, turn=turn) if not p.tier.gone else None
            jobs.append((turn, p, span, future))
        if turn in recent and page is None:
            jobs.append((turn, None, None, None))
    fragments: list[Fragment] = []
    read_pages: set[int] = set()
    unread_pages: set[int] = set()
    headers: dict[int, dict[int, list[str]]] = {}
    for turn, p, span, future in jobs:
        if p is None:
            t = recent[turn]
            fragments.append(Fragment(t.index, t.role, t.time, None, "text", 0.0, t.start, len(t.content),
                                      t.content[t.start:], 1.0))
            continue
        page = p.record.page
        decoded = None
        if future is not None:
            decoded = reader().wait(future, deadline)
            if decoded is None:
                unread_pages.add(page)
                continue
            read_pages.add(page)
        if page not in headers:
            headers[page] = headers_of(store, k, page)
        fragments += fragments_from_decoded([span], decoded, headers[page], page, p.tier.name, p.age)
    read_pages -= unread_pages

    if q.text:
        pages_unread = unsearched + len(unread_pages)
        pages_read = max(0, searched - len(unread_pages))
    else:
        pages_read, pages_unread = len(read_pages), len(unread_pages)
    fragments = fragments[:q.limit]
    sources = store.sources(k, [f.turn for f in fragments]) if meta.keep_source else {}
    found_by = "index" if q.text else "position" if q.turn is not None else "time"
    hits = []
    for f in fragments:
        m = match.get(f.turn, 1.0)
        hit = Hit(turn=f.turn, role=f.role, time=f.time, page=f.page, tier=f.tier, age=f.age, span=[f.start, f.end],
                  text=f.decoded, confidence=round(m * f.score, 4), match=round(m, 4), found_by=found_by,
                  searched=searched_text.get(f.turn))
        if f.turn in sources:
            exact = sources[f.turn]["content"][f.start:f.end]
            hit.source, hit.char_error = exact, round(char_error(f.decoded, exact), 4)
        hits.append(hit)
    return Recall(session=k.session, hits=hits, pages_read=pages_read, pages_unread=pages_unread,
                  seconds=round(time.perf_counter() - started, 3))
