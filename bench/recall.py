"""Recall by content: retrieval quality on real conversations, and time per recall. One command:

    python bench/recall.py [--conversations 6] [--per 10] [--e2e 30] [--sizes 1000,10000] [--out bench/recall.json]

- quality: held-out chitchat-dataset conversations of 400-700 turns (not the longest one the tests
  and the lab use). From each, the most distinctive user turns (>= 8 words, whose rarest content
  words occur in no other turn of the conversation) become questions with a known answer turn, in
  three forms built only from the turn's own words: ``keywords`` (its 3 rarest content words,
  shuffled), ``question`` ("what did I say about w1 and w2?") and ``shared`` (3 of its words that
  other turns use too: the hard one). hit@1/hit@5 of optimem's index against a plain
  BM25 over the exact source turns (bm25s, English stop words, no stemming) in the same run; then
  optimem end to end (``Memory.recall``: index, then reading the hit turns' lines off the pages at
  their tiers, nothing read before): hit@5 and seconds per recall, cold and asked again (warm).
  Also the Chinese lab text (``memory/lab/data/zh.txt``, 22 turns): ``zh-keywords`` (3 character
  pairs only that turn has) and ``zh-question`` (two of them inside a Chinese question), against a
  plain BM25 over single characters and pairs of the source.
- scale: sessions of ``--sizes`` turns (real chitchat turns, conversation after conversation):
  index search p50/p95; locating the hit turn's pages by the page index against reading and
  placing every page record (the path before, same run); end-to-end recall p50/p95 of questions on
  turns the default curve still shows, cold (nothing decoded) and asked again at once (warm);
  one-turn append p50 with the index and without it (its writes patched out, interleaved one by
  one); and the index's Redis bytes per 1k turns.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import bm25s  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench/common.py, also when loaded by path
from common import pct  # noqa: E402
from optimem.memory import context, index as ix  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.lab.corpus import chinese, conversations, longest  # noqa: E402
from optimem.memory.redis_server import EmbeddedRedis  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402
from optimem.memory.recall import Turns  # noqa: E402
from optimem.memory.store import SessionKeys  # noqa: E402
from optimem.settings import Settings  # noqa: E402

TENANT = "bench-recall"
WORD = re.compile(r"[a-z]+")




def questions(turns: list[dict], per: int, rng: random.Random) -> list[tuple[int, str, str]]:
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


def zh_questions(turns: list[dict], rng: random.Random) -> list[tuple[int, str, str]]:
    """(answer turn, form, query) on the Chinese lab text: character pairs only that turn has,
    asked as bare keywords and inside a question ("did I say anything about X and Y?")."""
    pairs = [set(CJK_PAIR.findall(t["content"])) for t in turns]
    df = Counter(p for ps in pairs for p in ps)
    out = []
    for i, ps in enumerate(pairs):
        rare = sorted(p for p in ps if df[p] == 1)
        if len(rare) < 3:
            continue
        keys = rng.sample(rare, 3)
        out.append((i, "zh-keywords", " ".join(keys)))
        out.append((i, "zh-question", f"我以前有没有说过{keys[0]}和{keys[1]}的事？"))
    return out


def cjk_tokens(text: str) -> list[str]:
    """The plain baseline's tokens for Chinese: single characters and pairs of them."""
    chars = re.findall(r"[\u4e00-\u9fff]", text)
    return chars + CJK_PAIR.findall(text)


def held_out(n: int) -> list[tuple[str, list[dict]]]:
    skip = longest()[0]
    out = []
    for key, turns in conversations(min_turns=400):
        if key != skip and len(turns) <= 700:
            out.append((key, turns))
            if len(out) >= n:
                break
    return out


def quality(memory: Memory, convs, per: int, e2e: int, rng: random.Random) -> dict:
    rows = []
    e2e_left = e2e
    convs = list(convs) + [("zh-lab-text", chinese())]
    for n, (key, turns) in enumerate(convs):
        session = f"q{n}"
        zh = key == "zh-lab-text"
        memory.create_session(session, tenant=TENANT)        # the default curve, keep source
        memory.append(session, turns, tenant=TENANT)
        k = SessionKeys(TENANT, session)
        baseline = bm25s.BM25()
        if zh:
            baseline.index([cjk_tokens(t["content"]) for t in turns], show_progress=False)
        else:
            baseline.index(bm25s.tokenize([t["content"] for t in turns], stopwords="en", show_progress=False),
                           show_progress=False)
        for answer, form, query in (zh_questions(turns, rng) if zh else questions(turns, per, rng)):
            t0 = time.perf_counter()
            ours = [ix.doc_turn(d)[0] for d, _, _ in memory.store.search(k, query, limit=5)]
            search_s = time.perf_counter() - t0
            if zh:
                docs, _ = baseline.retrieve([cjk_tokens(query)], k=5, show_progress=False)
            else:
                qt = bm25s.tokenize([query], stopwords="en", show_progress=False)
                docs, _ = baseline.retrieve(qt, k=5, show_progress=False) if qt.vocab else ([[]], None)
            theirs = [int(d) for d in docs[0]]
            row = {"conversation": key, "turns": len(turns), "answer": answer, "form": form, "query": query,
                   "index_top5": ours, "bm25_top5": theirs, "search_ms": round(search_s * 1000, 3)}
            if e2e_left > 0:
                e2e_left -= 1
                for phase in ("cold", "warm"):
                    if phase == "cold":
                        memory.store.r.delete(k.decoded)      # nothing read before
                    t0 = time.perf_counter()
                    got = memory.recall(session, query, tenant=TENANT)
                    row[f"recall_{phase}_s"] = round(time.perf_counter() - t0, 3)
                    row[f"recall_{phase}_top5"] = [h.turn for h in got.hits]
                    row[f"recall_{phase}_unread"] = got.pages_unread
            rows.append(row)
        print(f"  {key}: {len(turns)} turns, {sum(1 for r in rows if r['conversation'] == key)} questions",
              file=sys.stderr)

    def hit(rs, field, at):
        return round(sum(r["answer"] in r[field][:at] for r in rs) / max(1, len(rs)), 3)

    summary = {}
    for form in ("keywords", "question", "shared", "zh-keywords", "zh-question", "all"):
        rs = [r for r in rows if form == "all" or r["form"] == form]
        e = [r for r in rs if "recall_cold_top5" in r]
        summary[form] = {"questions": len(rs), "optimem_hit1": hit(rs, "index_top5", 1),
                         "optimem_hit5": hit(rs, "index_top5", 5), "bm25_hit1": hit(rs, "bm25_top5", 1),
                         "bm25_hit5": hit(rs, "bm25_top5", 5),
                         "e2e_questions": len(e), "e2e_hit5": hit(e, "recall_cold_top5", 5),
                         "e2e_cold_p50_s": pct([r["recall_cold_s"] for r in e], 0.5),
                         "e2e_cold_p95_s": pct([r["recall_cold_s"] for r in e], 0.95),
                         "e2e_warm_p50_s": pct([r["recall_warm_s"] for r in e], 0.5),
                         "e2e_warm_p95_s": pct([r["recall_warm_s"] for r in e], 0.95),
                         "search_p50_ms": pct([r["search_ms"] for r in rs], 0.5)}
    return {"summary": summary, "rows": rows}


def scale(memory: Memory, size: int, rng: random.Random, queries: int = 20) -> dict:
    # Real turns, conversation after conversation (no repeats below ~200k turns: a repeated turn
    # would tie with its copies and send recall to the oldest, faded one, reading nothing).
    source = []
    for _, ts in conversations():
        source += ts
        if len(source) >= size + 200:
            break
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
    picks = [(turn + window, kind, query) for turn, kind, query in questions(turns[window:], queries, rng)][:queries]
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
        Turns(memory.store, k, lambda rs: context.place(rs, s.curve, memory.ladder, s.meta.turns),
              memory.store.text_turns(k), memory.store.seal_state(k)[1]).where([turn])
        locate.append(time.perf_counter() - t0)
    warm, read = [], []
    for _, _, query in picks[:10]:      # each asked cold (nothing decoded), then again at once (warm)
        memory.store.r.delete(k.decoded)
        t0 = time.perf_counter()
        got = memory.recall(session, query, tenant=TENANT)
        cold.append(time.perf_counter() - t0)
        read.append(sum(1 for h in got.hits if h.page is not None and h.text))
        t0 = time.perf_counter()
        memory.recall(session, query, tenant=TENANT)
        warm.append(time.perf_counter() - t0)
    size_b = ix.size_bytes(memory.store.r, k.tag)
    # One-turn appends onto this session, with the index and with its writes patched out,
    # interleaved one by one so the two see the same session size and machine load.
    times: dict[str, list[float]] = {"with_index": [], "without_index": []}
    real_add = ix.add
    for i in range(120):
        label = "with_index" if i % 2 == 0 else "without_index"
        ix.add = real_add if label == "with_index" else (lambda *a, **kw: None)
        try:
            t0 = time.perf_counter()
            memory.append(session, [dict(source[(size + i) % len(source)])], tenant=TENANT)
            times[label].append(time.perf_counter() - t0)
        finally:
            ix.add = real_add
    appends = {label: round(pct(v, 0.5) * 1000, 3) for label, v in times.items()}
    return {"turns": size, "build_s": round(build_s, 1), "search_p50_ms": round(pct(search, 0.5) * 1000, 2),
            "locate_p50_ms": round(pct(locate, 0.5) * 1000, 2), "hits_read_per_recall": round(sum(read) / len(read), 1),
            "locate_every_page_p50_ms": round(pct(locate_all, 0.5) * 1000, 2),
            "search_p95_ms": round(pct(search, 0.95) * 1000, 2),
            "recall_cold_p50_s": round(pct(cold, 0.5), 3), "recall_cold_p95_s": round(pct(cold, 0.95), 3),
            "recall_warm_p50_s": round(pct(warm, 0.5), 3), "recall_warm_p95_s": round(pct(warm, 0.95), 3),
            "append_p50_ms_with_index": appends["with_index"], "append_p50_ms_without_index": appends["without_index"],
            "index_bytes_per_1k_turns": round(size_b * 1000 / size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--per", type=int, default=10, help="answer turns per conversation (2 questions each)")
    ap.add_argument("--e2e", type=int, default=30, help="questions also asked end to end through Memory.recall")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--out", default=str(ROOT / "bench" / "recall.json"))
    args = ap.parse_args()
    rng = random.Random(9)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp)).start()
        try:
            settings = Settings(data_dir=Path(tmp), redis_url=f"unix://{server.socket}", worker=False)
            with Memory(settings) as memory:
                memory.backend.decode([])     # load the reader's models before timing anything
                q = quality(memory, held_out(args.conversations), args.per, args.e2e, rng)
                sizes = [scale(memory, int(s), rng) for s in args.sizes.split(",") if s]
        finally:
            server.stop()
    result = {"machine": machine(), "quality": q["summary"], "scale": sizes, "questions": q["rows"]}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\nretrieval on held-out chitchat conversations (answer = a known source turn)")
    print(f"{'form':10} {'n':>4} {'optimem@1':>9} {'optimem@5':>9} {'bm25@1':>7} {'bm25@5':>7} "
          f"{'e2e n':>5} {'e2e@5':>6} {'cold p50/p95 s':>15} {'warm p50/p95 s':>15} {'search p50 ms':>13}")
    for form, s in q["summary"].items():
        print(f"{form:10} {s['questions']:>4} {s['optimem_hit1']:>9} {s['optimem_hit5']:>9} {s['bm25_hit1']:>7} "
              f"{s['bm25_hit5']:>7} {s['e2e_questions']:>5} {s['e2e_hit5']:>6} "
              f"{s['e2e_cold_p50_s']:>7}/{s['e2e_cold_p95_s']:<7} {s['e2e_warm_p50_s']:>7}/{s['e2e_warm_p95_s']:<7} "
              f"{s['search_p50_ms']:>13}")
    print("\nscale (real turns repeated; recall = index + reading the hits' lines, nothing read before)")
    for s in sizes:
        print(json.dumps(s))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
