"""Find without reading: a per-session BM25 index of what the session still holds in words.

Documents are turns: ``t<turn>`` is a turn's exact source text (indexed when it is appended; in a
forget-for-real session removed again when its page is sealed), ``p<page>:<turn>`` is what a page
read back of a turn (forget-for-real sessions only: indexed when the page is read, replaced when it
is read again at a fainter tier, removed when the page fades to ``gone``).

Everything lives in Redis under the session's hash tag (layout in ``memory/store.py``), written in
the same MULTI/EXEC as the change that causes it, so every API process sees one index:

- ``ix:p:<term>`` ZSET  doc -> tf * 2**20 + doc length (one ZRANGE gives all BM25 needs per term)
- ``ix:vocab``    ZSET  term -> document frequency (terms at 0 are removed in the same transaction)
- ``ix:docs``     HASH  doc -> "<length> <term> <term> ..." (what to remove when the doc goes)
- ``ix:stats``    HASH  docs, tokens (for the average document length)
- ``ix:pages``    HASH  page -> tier key its decoded text was indexed at (forget-for-real)

Tokens: Latin words lower-cased, English stop words dropped, Snowball-stemmed (PyStemmer), so
"storage lockers" finds "storage locker"; code identifiers (camelCase, snake_case) are kept whole
and also split into stemmed parts; CJK/kana/hangul runs become character unigrams and bigrams.
Query terms unknown to the session's vocabulary are matched fuzzily (rapidfuzz ratio >= 85) to
known terms, which absorbs typos and OCR slips in decoded text; every query term also matches its
nearest terms in meaning that the session has, weighing less (``memory/expansion.py``).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from typing import Iterable

import Stemmer
from rapidfuzz import fuzz, process

from optimem.memory import expansion

K1, B = 1.2, 0.75
TF_SHIFT = 1 << 20             # posting score = tf * TF_SHIFT + min(length, TF_SHIFT - 1)
MAX_TERM = 64                  # characters; longer tokens are cut
# A term in more docs than this is read only for this many, those where it weighs most (highest
# tf, then longest: the posting's score); its idf is small (< 2.4 at 100k docs), and a doc it misses
# still scores by the query's rarer terms. Keeps a query over a 100k-turn session in milliseconds.
MAX_POSTINGS = 10_000
FUZZY_MIN = 85

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
TOKEN = re.compile(rf"([{_CJK}]+)|((?:(?![{_CJK}])\w)+)")
PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\d_a-zA-Z]+")

STOPWORDS = frozenset("""a about above after again against all am an and any are aren as at be because been
before being below between both but by can cannot could couldn did didn do does doesn doing don down
during each few for from further had hadn has hasn have haven having he her here hers herself him himself
his how i if in into is isn it its itself just let ll me more most mustn my myself no nor not now of off
on once only or other ought our ours ourselves out over own re same shan she should shouldn so some such
than that the their theirs them themselves then there these they this those through to too under until
up very was wasn we were weren what when where which while who whom why will with won would wouldn you
your yours yourself yourselves ve im ive yes yeah oh ok okay also get got really well""".split())
# Words that ask about memory rather than name what is remembered: dropped from queries only.
QUERY_STOPWORDS = STOPWORDS | frozenset("""remember recall said say says tell told talk talked mention
mentioned ago earlier before time once thing things again please know""".split())

_stemmer = Stemmer.Stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def _words(text: str, stop: frozenset[str]) -> Iterable[str]:
    for cjk, word in TOKEN.findall(text):
        if cjk:
            yield from cjk
            yield from (cjk[i:i + 2] for i in range(len(cjk) - 1))
            continue
        if word.lower() in stop:                        # also "THe", "WHat": typed in haste, not a code
            continue
        parts = PARTS.findall(word)
        if len(parts) > 1:                              # an identifier or code: keep it whole too
            yield word.lower()[:MAX_TERM]
        for part in parts if len(parts) > 1 else [word]:
            low = part.lower()
            if low in stop or (len(low) < 2 and not low.isdigit()):
                continue
            yield _stem(low)[:MAX_TERM]


def tokens(text: str) -> list[str]:
    """The index terms of a text, in order, repeats kept (term frequency)."""
    return list(_words(text, STOPWORDS))


def query_terms(text: str) -> list[str]:
    """A query's terms: memory-talk words dropped too, unless that leaves nothing."""
    return list(dict.fromkeys(_words(text, QUERY_STOPWORDS))) or list(dict.fromkeys(_words(text, STOPWORDS)))


# -- keys ---------------------------------------------------------------------------------------
def post_key(tag: str, term: str) -> str:
    return f"{tag}:ix:p:{term}"


def vocab_key(tag: str) -> str:
    return f"{tag}:ix:vocab"


def docs_key(tag: str) -> str:
    return f"{tag}:ix:docs"


def stats_key(tag: str) -> str:
    return f"{tag}:ix:stats"


def pages_key(tag: str) -> str:
    return f"{tag}:ix:pages"


def fixed_keys(tag: str) -> list[str]:
    return [vocab_key(tag), docs_key(tag), stats_key(tag), pages_key(tag)]


def source_doc(turn: int) -> str:
    return f"t{turn}"


def page_doc(page: int, turn: int) -> str:
    return f"p{page}:{turn}"


def doc_turn(doc: str) -> tuple[int, int | None]:
    """(turn, page) of a document id; page None for source text."""
    if doc.startswith("t"):
        return int(doc[1:]), None
    page, turn = doc[1:].split(":")
    return int(turn), int(page)


# -- writes (queued on a pipeline, inside the caller's MULTI) -----------------------------------
def add_many(p, tag: str, docs: Iterable[tuple[str, str]]) -> None:
    """Queue the writes that index each (doc, text), none indexed already: one ZADD per term and
    one vocabulary count per term for them all, so a 1,000-turn append queues a few thousand
    commands, not two per term of every turn."""
    postings: dict[str, dict[str, int]] = {}
    vocab: Counter = Counter()
    entries: dict[str, str] = {}
    tokens_in = 0
    for doc, text in docs:
        counts = Counter(tokens(text))
        if not counts:
            continue
        length = sum(counts.values())
        for term, tf in counts.items():
            postings.setdefault(term, {})[doc] = tf * TF_SHIFT + min(length, TF_SHIFT - 1)
        vocab.update(counts.keys())
        entries[doc] = f"{length} " + " ".join(counts)
        tokens_in += length
    if not entries:
        return
    for term, scored in postings.items():
        p.zadd(post_key(tag, term), scored)
        p.zincrby(vocab_key(tag), vocab[term], term)
    p.hset(docs_key(tag), mapping=entries)
    p.hincrby(stats_key(tag), "docs", len(entries))
    p.hincrby(stats_key(tag), "tokens", tokens_in)


def remove(p, tag: str, entries: dict[str, str | bytes | None]) -> None:
    """Queue the writes that take docs out: ``entries`` maps doc -> its ``ix:docs`` value (read
    before the MULTI); docs that were never indexed (None) are skipped."""
    gone = 0
    tokens_gone = 0
    for doc, raw in entries.items():
        if raw is None:
            continue
        length, *terms = (raw.decode() if isinstance(raw, bytes) else raw).split(" ")
        for term in terms:
            p.zrem(post_key(tag, term), doc)
            p.zincrby(vocab_key(tag), -1, term)
        p.hdel(docs_key(tag), doc)
        gone += 1
        tokens_gone += int(length)
    if gone:
        p.zremrangebyscore(vocab_key(tag), "-inf", 0)
        p.hincrby(stats_key(tag), "docs", -gone)
        p.hincrby(stats_key(tag), "tokens", -tokens_gone)


# -- search -------------------------------------------------------------------------------------
_vocab_cache: dict[str, tuple[int, list[str]]] = {}
VOCAB_STALE = 0.01      # share of documents added since a cached vocabulary was read that it may miss


def _vocabulary(r, tag: str, version: int) -> list[str]:
    """The session's terms, for fuzzy matching only, cached per process: read again when the
    document count fell, or grew by more than VOCAB_STALE since. In a chat every question follows
    an append; reading 30k+ terms each time cost ~65 ms at 100k turns. A term first seen in the
    newest 1% of turns is still matched exactly, it is only no fuzzy candidate until then."""
    hit = _vocab_cache.get(tag)
    if hit and hit[0] <= version <= hit[0] * (1 + VOCAB_STALE):
        return hit[1]
    terms = [t.decode() if isinstance(t, bytes) else t for t in r.zrange(vocab_key(tag), 0, -1)]
    if len(_vocab_cache) > 256:
        _vocab_cache.clear()
    _vocab_cache[tag] = (version, terms)
    return terms


def search(r, tag: str, query: str, limit: int = 50, fuzzy: bool = True, expand: bool = True
           ) -> list[tuple[str, float, float]]:
    """Ranked docs for a query: [(doc, bm25 score, coverage 0..1)], best first. ``expand``: the
    query's terms also match their nearest terms in meaning, weighing less (``memory/expansion.py``).

    Coverage is the idf-weighted share of the query's terms the doc contains (fuzzy matches count
    by their similarity): how much of the question the turn answers, comparable across queries."""
    terms = query_terms(query)
    if not terms:
        return []
    near = expansion.candidates(terms) if expand else {}
    others = list(dict.fromkeys(s for found in near.values() for s, _ in found))
    with r.pipeline(transaction=False) as p:        # the neighbours' presence: the same round trip
        p.hmget(stats_key(tag), "docs", "tokens")
        p.zmscore(vocab_key(tag), terms + others)
        (n_docs, n_tokens), dfs = p.execute()
    n = int(n_docs or 0)
    if n <= 0:
        return []
    weighted = _known_terms(r, tag, n, terms, dfs[:len(terms)], fuzzy)
    present = {s for s, df in zip(others, dfs[len(terms):]) if df}
    asked = {t for t, df in zip(terms, dfs) if df}
    related = {stem: wt for stem, wt in expansion.neighbours(near, present, asked).items() if stem not in weighted}
    weighted.update(related)                        # (a term asked, or fuzzily matched, weighs more)
    if not weighted:
        return []
    scores, covered, idf_of_query = _score(r, tag, n, int(n_tokens or 0) / n, terms, weighted, set(related))
    # A query term the session has never seen weighs like the rarest term it could be.
    rare = math.log(1 + (n + 0.5) / 0.5)
    total = sum(v or rare for v in idf_of_query.values())
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [(doc, s, min(1.0, sum(covered[doc].values()) / total)) for doc, s in ranked]


def _known_terms(r, tag: str, n: int, terms: list[str], dfs: list, fuzzy: bool) -> dict[str, tuple[float, str]]:
    """Index term -> (weight, the query term it stands for): the query's terms the session knows,
    and for each it does not, up to 3 known terms like it (weighted by their similarity)."""
    weighted: dict[str, tuple[float, str]] = {}
    missing = []
    for term, df in zip(terms, dfs):
        if df:
            weighted[term] = (1.0, term)
        else:
            missing.append(term)
    if fuzzy and missing:
        vocab = _vocabulary(r, tag, n)
        for term in missing:
            if len(term) < 4 or not vocab:
                continue
            for match, score, _ in process.extract(term, vocab, scorer=fuzz.ratio, limit=3,
                                                   score_cutoff=FUZZY_MIN):
                if match not in weighted:
                    weighted[match] = (score / 100, term)
    return weighted


def _score(r, tag: str, n: int, avgdl: float, terms: list[str], weighted: dict[str, tuple[float, str]],
           related: set[str]) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
    """BM25 of every doc holding a known term (one ZREVRANGE per term), with what each doc covers
    of each query term (its weighted idf) and each query term's idf (a ``related`` term, one near
    in meaning, covers its query term but does not set its idf)."""
    known = list(weighted)
    with r.pipeline(transaction=False) as p:
        for term in known:
            most = expansion.POSTINGS if term in related else MAX_POSTINGS
            p.zrevrange(post_key(tag, term), 0, most - 1, withscores=True)
        p.zmscore(vocab_key(tag), known)
        *postings, known_dfs = p.execute()
    scores: dict[str, float] = {}
    covered: dict[str, dict[str, float]] = {}
    idf_of_query: dict[str, float] = {t: 0.0 for t in terms}
    for term, plist, counted in zip(known, postings, known_dfs):
        weight, qterm = weighted[term]
        df = max(len(plist), int(counted or 0))     # the true count, also past MAX_POSTINGS
        if not plist:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        if term not in related:
            idf_of_query[qterm] = max(idf_of_query[qterm], idf)
        for doc, packed in plist:
            doc = doc.decode() if isinstance(doc, bytes) else doc
            tf, dl = divmod(int(packed), TF_SHIFT)
            s = weight * idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / max(avgdl, 1e-9)))
            scores[doc] = scores.get(doc, 0.0) + s
            c = covered.setdefault(doc, {})
            c[qterm] = max(c.get(qterm, 0.0), weight * idf)
    return scores, covered, idf_of_query


def size_bytes(r, tag: str) -> int:
    """Bytes the index takes in Redis (MEMORY USAGE over its keys)."""
    terms = [t.decode() if isinstance(t, bytes) else t for t in r.zrange(vocab_key(tag), 0, -1)]
    keys = fixed_keys(tag) + [post_key(tag, t) for t in terms]
    total = 0
    for i in range(0, len(keys), 1000):
        with r.pipeline(transaction=False) as p:
            for key in keys[i:i + 1000]:
                p.memory_usage(key, samples=0)
            total += sum(v or 0 for v in p.execute())
    return total
