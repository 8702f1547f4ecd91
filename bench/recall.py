"""Recall by content: retrieval quality on questions people ask, and time per recall. One command:

    python bench/recall.py [--e2e 30] [--sizes 1000,10000] [--models stems,minilm,wordllama] [--read-threads 1]
                           [--expand "8,0.7,0.4,0.5;off"] [--split tune] [--out bench/recall.json]

- quality: the question set (``bench/data/recall_questions.jsonl``, 322 questions written by
  reading real turns, over six long chitchat sessions and the Chinese lab text that
  ``bench/recall_set.py`` rebuilds; four kinds: one fact, when, two facts, inference; half
  ``tune``, half ``heldout``). Each session is imported (keep source, default curve) and asked every
  question right after; recall@5 and @10 (the share of a question's evidence turns among the
  first 5 or 10 turns recall finds, the same ranking ``Memory.recall`` reads) per kind and split,
  against a plain BM25 over the exact source turns (bm25s, English stop words, no stemming;
  characters and pairs of them for Chinese) in the same run. Ranked with words alone
  (``words``) and with each ``--models`` value as ``OPTIMEM_EMBED_MODEL`` (meaning beside words;
  ``stems``, the shipped static model, is the default).
  ``--expand`` sweeps the query expansion by trained word vectors (``memory/expansion.py``):
  each ``neighbours,weight,floor[,known share]`` setting (or ``off``) ranks every question
  again, each model with each setting (a sentence model turns expansion off itself);
  ``--vectors`` ranks with another vectors file (``bench/train_word_vectors.py --out``);
  ``--split tune`` prints only the tune half (while tuning).
- Settings come from the environment (``OPTIMEM_OCR_THREADS=1``, ...) where the bench does not set them.
- cold: a 700-turn session (chat0, chat1 and the start of chat2 of the set, one after another)
  right after import, ``--e2e`` of its questions through ``Memory.recall`` (index, then reading
  the hit turns' lines off the pages at their tiers, nothing read before): p50/p95 seconds cold
  and asked again at once (warm); and 700 long real turns (>= 25 words, 30 on average), cold.
- scale: sessions of ``--sizes`` turns (real chitchat turns, conversation after conversation):
  index search p50/p95; locating the hit turn's pages by the page index against reading and
  placing every page record (the path before, same run); end-to-end recall p50/p95 of questions on
  turns the default curve still shows, cold (nothing decoded) and asked again at once (warm);
  one-turn append p50 with the index and without it (its writes patched out, interleaved one by
  one); index search right after a one-turn append, as in a chat, with a typo in the question
  (fuzzy matching); and the index's Redis bytes per 1k turns.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from typing import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bm25s  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench/common.py, also when loaded by path
from common import pct  # noqa: E402
from optimem.memory import expansion, index as ix  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.lab.corpus import conversations  # noqa: E402
from optimem.memory import recall as recalling, vectors  # noqa: E402
from optimem.memory.redis_server import EmbeddedRedis  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402
from optimem.memory.store import SessionKeys  # noqa: E402
from optimem.settings import Settings  # noqa: E402
from recall_set import questions as question_set, sessions as set_sessions  # noqa: E402

TENANT = "bench-recall"
WORD = re.compile(r"[a-z]+")




def own_word_questions(turns: list[dict], per: int, rng: random.Random) -> list[tuple[int, str, str]]:
    """(answer turn, form, query): distinctive user turns, queries made of their own rarest words."""
    words = [[w for w in WORD.findall(t["content"].lower()) if w not in ix.QUERY_STOPWORDS and len(w) > 2]
             for t in turns]
    df = Counter(w for ws in words for w in set(ws))
    picked = []
    for i, (t, ws) in enumerate(zip(turns, words)):
        rare = sorted(set(ws), key=lambda w: (df[w], -len(w), w))
        if t["role"] == "user" and len(t["content"].split()) >= 8 and len(rare) >= 3 and df[rare[0]] == 1:
            picked.append((i, rare))
    rng.shuffle(picked)
    out = []
    for i, rare in picked[:per]:
        keys = rare[:3]
        rng.shuffle(keys)
        out.append((i, "keywords", " ".join(keys)))
        out.append((i, "question", f"what did I say about {rare[0]} and {rare[1]}?"))
        shared = [w for w in rare if df[w] >= 2][:3]      # words other turns use too: harder
        if len(shared) == 3:
            out.append((i, "shared", " ".join(shared)))
    return out


CJK_PAIR = re.compile(r"(?=([\u4e00-\u9fff]{2}))")
CJK = re.compile(r"[\u4e00-\u9fff]")
KINDS = ("fact", "when", "two", "inference")


def cjk_tokens(text: str) -> list[str]:
    """The plain baseline's tokens for Chinese: single characters and pairs of them."""
    chars = re.findall(r"[\u4e00-\u9fff]", text)
    return chars + CJK_PAIR.findall(text)


class PlainBM25:
    """The baseline: bm25s over the exact source turns, nothing else."""

    def __init__(self, turns: list[dict]):
        self.zh = any(CJK.search(t["content"]) for t in turns)
        self.bm25 = bm25s.BM25()
        texts = [t["content"] for t in turns]
        if self.zh:
            self.bm25.index([cjk_tokens(t) for t in texts], show_progress=False)
        else:
            self.bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        self.n = len(turns)

    def top(self, query: str, k: int) -> list[int]:
        if self.zh:
            docs, _ = self.bm25.retrieve([cjk_tokens(query)], k=min(k, self.n), show_progress=False)
        else:
            qt = bm25s.tokenize([query], stopwords="en", show_progress=False)
            if not qt.vocab:
                return []
            docs, _ = self.bm25.retrieve(qt, k=min(k, self.n), show_progress=False)
        return [int(d) for d in docs[0]]


def misspelt(query: str) -> str:
    """The query with a letter dropped from its longest word (a typo: a word no index holds)."""
    longest = max(query.split(), key=len)
    return query.replace(longest, longest[:2] + longest[3:], 1)


def found_turns(memory: Memory, session: str, query: str, limit: int = 10) -> list[int]:
    """The turns ``Memory.recall`` would read for ``query``, in its order (its find step, built as
    ``Memory.recall`` builds it, without reading the pages)."""
    s = memory._open(session, TENANT)
    located = memory._located(s)
    q = recalling.Query.of(query, limit=limit)
    found = recalling.find(q, s.k, s.meta, located, lambda: memory.reader, memory.store,
                           time.monotonic() + 60, lambda: memory._placed(s), memory.settings.embed_model)
    return [turn for turn, _ in found.wanted]


def share(evidence: list[int], top: list[int], at: int) -> float:
    return len(set(evidence) & set(top[:at])) / len(evidence)


def import_session(memory: Memory, session: str, turns: list[dict]) -> None:
    memory.create_session(session, tenant=TENANT)        # the default curve, keep source
    for i in range(0, len(turns), 1000):
        memory.append(session, turns[i:i + 1000], tenant=TENANT)
    memory.settle(session, tenant=TENANT)


def quality(memory: Memory, model: str) -> dict:
    """Every question of the set, ranked with ``OPTIMEM_EMBED_MODEL=model`` ("words": words alone)."""
    memory.settings.embed_model = model
    vectors.embedder(model)          # load the model before timing anything
    rows, first = [], {}
    for name, turns in set_sessions().items():
        session = f"set-{name}"
        if not memory.store.r.exists(SessionKeys(TENANT, session).meta):
            import_session(memory, session, turns)
        plain = PlainBM25(turns)
        # The session's first question embeds every turn (vectors are made lazily, then kept).
        t0 = time.perf_counter()
        found_turns(memory, session, "what did we talk about first?", 10)
        first[name] = {"turns": len(turns), "first_question_s": round(time.perf_counter() - t0, 3)}
        for q in (q for q in question_set() if q["session"] == name):
            t0 = time.perf_counter()
            ours = found_turns(memory, session, q["question"], 10)
            rows.append({**q, "optimem_top10": ours, "bm25_top10": plain.top(q["question"], 10),
                         "find_ms": round((time.perf_counter() - t0) * 1000, 2)})
    return {"summary": summarise(rows), "rows": rows, "first_question": first}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for split in ("tune", "heldout", "all"):
        for kind in KINDS + ("all",):
            rs = [r for r in rows if split in ("all", r["split"]) and kind in ("all", r["kind"])]
            if not rs:
                continue
            out[f"{split}/{kind}"] = {
                "questions": len(rs),
                **{f"{who}@{at}": round(sum(share(r["evidence"], r[f"{who}_top10"], at) for r in rs) / len(rs), 3)
                   for who in ("optimem", "bm25") for at in (5, 10)},
                "find_p50_ms": round(pct([r["find_ms"] for r in rs], 0.5), 2)}
    return out


def cold(memory: Memory, e2e: int) -> dict:
    """A 700-turn session right after import: recall through ``Memory.recall``, cold then warm."""
    sessions = set_sessions()
    turns, offsets = [], {}
    for name in ("chat0", "chat1", "chat2"):
        offsets[name] = len(turns)
        turns += sessions[name]
    turns = turns[:700]
    asked = [q for q in question_set() if q["session"] in offsets][:e2e]
    import_session(memory, "cold700", turns)
    k = SessionKeys(TENANT, "cold700")
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    hits = 0.0
    for q in asked:
        evidence = [offsets[q["session"]] + e for e in q["evidence"]]
        for phase in ("cold", "warm"):
            if phase == "cold":
                memory.store.r.delete(k.decoded)      # nothing read before
            t0 = time.perf_counter()
            got = memory.recall("cold700", q["question"], tenant=TENANT)
            times[phase].append(time.perf_counter() - t0)
            if phase == "cold":
                hits += share(evidence, [h.turn for h in got.hits], 5)
    return {"turns": len(turns), "questions": len(asked), "recall@5": round(hits / max(1, len(asked)), 3),
            **{f"{phase}_{name}_s": round(pct(v, at), 3) for phase, v in times.items()
               for name, at in (("p50", 0.5), ("p95", 0.95))}}


def real_turns(count: int, keep: Callable[[dict], bool] = lambda turn: True) -> list[dict]:
    """The first ``count`` real chitchat turns that ``keep`` takes, conversation after conversation."""
    out: list[dict] = []
    for _, ts in conversations():
        out += [dict(t) for t in ts if keep(t)]
        if len(out) >= count:
            break
    return out[:count]


def cold_long(memory: Memory, e2e: int, words: int = 25) -> dict:
    """The cold timing on long turns: 700 real chitchat turns of >= ``words`` words (30 on average,
    as in chats between friends over months; the set's are 8), in corpus order, imported, then
    ``e2e`` questions in the person's own words ("what did I say about X and Y?") through
    ``Memory.recall``, nothing read before each. A long hit turn is more lines to read."""
    turns = real_turns(700, lambda t: len(t["content"].split()) >= words)
    asked = [(turn, query) for turn, form, query in own_word_questions(turns, e2e, random.Random(3))
             if form == "question"][:e2e]
    import_session(memory, "cold700long", turns)
    k = SessionKeys(TENANT, "cold700long")
    took, found = [], 0
    for turn, query in asked:
        memory.store.r.delete(k.decoded)
        t0 = time.perf_counter()
        got = memory.recall("cold700long", query, tenant=TENANT)
        took.append(time.perf_counter() - t0)
        found += turn in [h.turn for h in got.hits]
    return {"turns": len(turns), "words_per_turn": round(sum(len(t["content"].split()) for t in turns) / len(turns), 1),
            "questions": len(asked), "found_at_5": round(found / max(1, len(asked)), 3),
            "cold_p50_s": round(pct(took, 0.5), 3), "cold_p95_s": round(pct(took, 0.95), 3)}


def scale(memory: Memory, size: int, rng: random.Random, queries: int = 40) -> dict:
    # Real turns, conversation after conversation (no repeats below ~200k turns: a repeated turn
    # would tie with its copies and send recall to the oldest, faded one, reading nothing).
    source = real_turns(size + 200)
    turns = [dict(source[i % len(source)]) for i in range(size)]
    session = f"s{size}"
    memory.create_session(session, tenant=TENANT)
    t0 = time.perf_counter()
    for i in range(0, size, 1000):
        memory.append(session, turns[i:i + 1000], tenant=TENANT)
    memory.settle(session, tenant=TENANT)
    build_s = time.perf_counter() - t0
    k = SessionKeys(TENANT, session)
    # Questions on turns the default curve still shows (younger than its gone age of 5,000 turns),
    # so a cold recall really reads their lines.
    window = max(0, size - 4000)
    picks = [(turn + window, kind, query) for turn, kind, query in own_word_questions(turns[window:], queries, rng)][:queries]
    search, cold, locate_all, locate = [], [], [], []
    for _, _, query in picks:
        t0 = time.perf_counter()
        memory.store.search(k, query, limit=5)
        search.append(time.perf_counter() - t0)
    for turn, _, _ in picks:
        # Locating the hit turns' pages: today's path (page index, O(hits)) against the path before
        # it, in the same run: every page record read and placed, every turn's span mapped.
        s = memory._open(session, TENANT)
        t0 = time.perf_counter()
        placed = memory._placed(s)
        {span["index"]: p for p in placed for span in p.record.turns}.get(turn)
        locate_all.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        memory._located(s).where([turn])
        locate.append(time.perf_counter() - t0)
    warm, read = [], []
    for i, (_, _, query) in enumerate(picks):   # the first 10 asked cold (nothing decoded); each then again at once (warm)
        if i < 10:
            memory.store.r.delete(k.decoded)
            t0 = time.perf_counter()
            got = memory.recall(session, query, tenant=TENANT)
            cold.append(time.perf_counter() - t0)
            read.append(sum(1 for h in got.hits if h.page is not None and h.text))
        else:
            memory.recall(session, query, tenant=TENANT)
        t0 = time.perf_counter()
        memory.recall(session, query, tenant=TENANT)
        warm.append(time.perf_counter() - t0)
    size_b = ix.size_bytes(memory.store.r, k.tag)
    # One-turn appends onto this session, with the index and with its writes patched out,
    # interleaved one by one so the two see the same session size and machine load.
    times: dict[str, list[float]] = {"with_index": [], "without_index": []}
    real_add = ix.add_many
    for i in range(120):
        label = "with_index" if i % 2 == 0 else "without_index"
        ix.add_many = real_add if label == "with_index" else (lambda *a, **kw: None)
        try:
            t0 = time.perf_counter()
            memory.append(session, [dict(source[(size + i) % len(source)])], tenant=TENANT)
            times[label].append(time.perf_counter() - t0)
        finally:
            ix.add_many = real_add
    appends = {label: round(pct(v, 0.5) * 1000, 3) for label, v in times.items()}
    # As in a chat: a one-turn append, then a question, with a typo (fuzzy matching of a word the
    # session has not seen reads its vocabulary; cached, it is read again only past 1% more turns).
    after_append = []
    for i, (_, _, query) in enumerate(picks):
        memory.append(session, [dict(source[(size + 120 + i) % len(source)])], tenant=TENANT)
        t0 = time.perf_counter()
        memory.store.search(k, misspelt(query), limit=5)
        after_append.append(time.perf_counter() - t0)
    return {"turns": size, "build_s": round(build_s, 1), "search_p50_ms": round(pct(search, 0.5) * 1000, 2),
            "locate_p50_ms": round(pct(locate, 0.5) * 1000, 2), "hits_read_per_recall": round(sum(read) / len(read), 1),
            "locate_every_page_p50_ms": round(pct(locate_all, 0.5) * 1000, 2),
            "search_p95_ms": round(pct(search, 0.95) * 1000, 2),
            "search_after_append_p50_ms": round(pct(after_append, 0.5) * 1000, 2),
            "search_after_append_p95_ms": round(pct(after_append, 0.95) * 1000, 2),
            "recall_cold_p50_s": round(pct(cold, 0.5), 3), "recall_cold_p95_s": round(pct(cold, 0.95), 3),
            "recall_warm_p50_s": round(pct(warm, 0.5), 3), "recall_warm_p95_s": round(pct(warm, 0.95), 3),
            "append_p50_ms_with_index": appends["with_index"], "append_p50_ms_without_index": appends["without_index"],
            "index_bytes_per_1k_turns": round(size_b * 1000 / size)}


def table(model: str, summary: dict) -> None:
    print(f"\nrecall@k of the evidence turns, OPTIMEM_EMBED_MODEL={model!r} (question set; optimem's find step "
          "against plain BM25 over the source, same run)")
    print(f"{'split/kind':18} {'n':>4} {'optimem@5':>9} {'bm25@5':>7} {'optimem@10':>10} {'bm25@10':>8} {'find p50 ms':>11}")
    for key, s in summary.items():
        print(f"{key:18} {s['questions']:>4} {s['optimem@5']:>9} {s['bm25@5']:>7} {s['optimem@10']:>10} "
              f"{s['bm25@10']:>8} {s['find_p50_ms']:>11}")


def _expand(setting: str) -> None:
    """Set the query expansion's neighbours, weight and floor ('off': no neighbours)."""
    n, weight, floor, *share = ("0", "0", "1") if setting == "off" else setting.split(",")
    expansion.NEIGHBOURS, expansion.WEIGHT, expansion.FLOOR = int(n), float(weight), float(floor)
    expansion.KNOWN_SHARE = float(share[0]) if share else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--e2e", type=int, default=30, help="questions also asked end to end on the 700-turn session")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--models", default="stems,minilm,wordllama",
                    help="OPTIMEM_EMBED_MODEL values ranked with too, beside words alone ('words')")
    ap.add_argument("--read-threads", type=int, default=1, help="OPTIMEM_READ_THREADS: page reads at once")
    ap.add_argument("--expand", default="", help="expansion settings to sweep, ';'-separated: "
                    "'neighbours,weight,floor[,known share]' or 'off' (default: the shipped setting only)")
    ap.add_argument("--vectors", type=Path, default=expansion.PATH, help="word vectors file (bench/train_word_vectors.py)")
    ap.add_argument("--split", default="", help="print only this split's rows (tune: while tuning)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "recall.json"))
    args = ap.parse_args()
    expansion.PATH = args.vectors
    shipped = f"{expansion.NEIGHBOURS},{expansion.WEIGHT},{expansion.FLOOR},{expansion.KNOWN_SHARE}"
    settings_swept = [e.strip() for e in (args.expand or shipped).split(";") if e.strip()]
    rng = random.Random(9)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp)).start()
        try:
            settings = Settings.from_env(None, data_dir=Path(tmp), redis_url=f"unix://{server.socket}",
                                         worker=False, read_threads=args.read_threads)
            with Memory(settings) as memory:
                memory.backend.decode([])     # load the reader's models before timing anything
                models = ["words"] + [m for m in args.models.split(",") if m and m != "words"]
                q = {}
                for e in settings_swept:
                    _expand(e)
                    q.update({m + ("" if e == shipped else f" expand={e}"): quality(memory, m)
                              for m in models})
                _expand(shipped)
                memory.settings.embed_model = Settings.embed_model    # the default (the class attribute), for the timings
                c = cold(memory, args.e2e) if args.e2e else {}
                c_long = cold_long(memory, args.e2e) if args.e2e else {}
                sizes = [scale(memory, int(s), rng) for s in args.sizes.split(",") if s]
        finally:
            server.stop()
    result = {"machine": machine(), "quality": {m: r["summary"] for m, r in q.items()}, "cold": c,
              "cold_long_turns": c_long, "scale": sizes,
              "first_question": {m: r["first_question"] for m, r in q.items()}, "read_threads": args.read_threads,
              "questions": {m: r["rows"] for m, r in q.items()}}
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    for model, r in q.items():
        table(model, {key: row for key, row in r["summary"].items() if key.startswith(args.split)})
        print("a session's first question (embeds every turn where a model is on), s:",
              {name: f["first_question_s"] for name, f in r["first_question"].items()})
    if c:
        print(f"\n700-turn session right after import, through Memory.recall: {json.dumps(c)}")
        print(f"700 long turns right after import, cold: {json.dumps(c_long)}")
    print("\nscale (real turns repeated; recall = index + reading the hits' lines, nothing read before)")
    for s in sizes:
        print(json.dumps(s))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
