"""`optimem lab`: forgetting curves measured on real conversations, against two baselines.

Each conversation is replayed once, through the real service (``Memory`` on an embedded Redis),
into one session, with facts ("needles") planted as user turns at known ages. Then every curve
is evaluated on that same session: its tiers come from ``context.place`` for the curve, so
replaying and typesetting happen once, and a page is read once per view it is kept at; the
service's decode cache (page, tier) carries the text to every curve and to recall.

For each curve, and for its context under ``--budget``, the lab reports per age bucket and tier:
text tokens, the tokens the context spends on them, character precision of what the reader gets
back (1 - CER against the source, ``memory.recall.char_error``), fidelity (the same with forgotten
content counted as fully lost), needle recall through ``Memory.recall``, and render and decode
seconds. Baselines from the same run: the full text (every token, precision 1) and truncation
(the newest turns that fit; older needles are lost) to the tokens each curve's context used, and
to the whole ``--budget``.

``optimem lab calibrate`` (``optimem.memory.lab.calibrate``) finds how densely a page can be
typeset and still read back.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from optimem.errors import BadRequest
from optimem.memory import context, recall as recalling, tokens
from optimem.memory.curves import Curve
from optimem.memory.lab.common import machine
from optimem.memory.lab.corpus import conversations, jsonl_turns
from optimem.memory.service import Memory
from optimem.memory.store import PageRecord, SessionKeys, TurnRecord
from optimem.model.backends import NAMES as BACKENDS
from optimem.model.tiers import Tier
from optimem.settings import Settings

TENANT = "lab"
ACCOUNTED = ("recent_text_tokens", "visual_tokens", "total_tokens", "text_tokens_replaced", "pages",
             "pages_forgotten", "dropped_pages", "dropped_turns", "pages_faded_by_budget", "pages_made",
             "turns_moved_to_pages")
BUCKETS = (0, 50, 100, 200, 400, 800, 1600)   # age bucket lower edges, in turns
LEGIBLE = 0.97                                # a tier reads legibly from this character precision on
FIDELITY_TIE = 0.005                          # fidelities closer than this are a tie when picking the best

# Full size: about 10 minutes on 2 cores. Quick: a small slice for tests (under 2 minutes).
DEFAULTS = {"conversations": 1, "turns": 0, "needles": 12, "recent_tokens": 2000, "frontier_pages": 8,
            "curves": "default,exponential,aggressive", "budgets": "2000,4000,8000"}
QUICK = {"conversations": 1, "turns": 160, "needles": 3, "recent_tokens": 300, "frontier_pages": 1,
         "curves": 'default,aggressive,fade={"kind":"step","steps":[[0,"g1024"],[40,"v768"],[70,"gone"]]}',
         "budgets": "600,1500"}
RULES = {"curve": "a floor of recent turns, older text onto pages made for the context before pages fade below "
                  "legible (issue 22), then fade, then drop (issue 11)",
         "drop": "drop at the curve tiers (before issue 11)"}


# -- needles --------------------------------------------------------------------------------------

def _digits(n: int):
    # No leading 0, 1 or 2: a value must not read as a year or a time that chat text is full of.
    return lambda rng: str(rng.randint(3, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def _letters(n: int):
    return lambda rng: "".join(rng.choice("BCDFGHJKLMNPRSTVWXZ") for _ in range(n))


def _pick(words: str):
    return lambda rng: rng.choice(words.split())


# (fact with a {v} slot, the question asked back, how the value is made)
FACTS = [
    ("my locker code is {v}", "what is my locker code", _digits(4)),
    ("my bike lock combination is {v}", "bike lock combination", _digits(4)),
    ("the wifi password at the cabin is {v}",  "wifi password at the cabin",
     lambda rng: _pick("maple harbor cobalt juniper walnut")(rng) + _digits(2)(rng)),
    ("my gym membership number is {v}", "gym membership number", _digits(6)),
    ("my flight number on Friday is {v}", "flight number on Friday",
     lambda rng: _letters(2)(rng) + _digits(3)(rng)),
    ("my cousin named her puppy {v}", "what did my cousin name her puppy",
     _pick("Biscuit Marzipan Pickles Waffles Noodle Pepperoni Gizmo")),
    ("my parking spot at work is {v}", "parking spot at work", lambda rng: _letters(1)(rng) + _digits(3)(rng)),
    ("my library card PIN is {v}", "library card PIN", _digits(4)),
    ("the storage unit number is {v}", "storage unit number", _digits(3)),
    ("my sister's apartment number is {v}", "sister apartment number", _digits(3)),
    ("the ferry ticket reference is {v}", "ferry ticket reference", lambda rng: _letters(3)(rng) + _digits(3)(rng)),
    ("my dentist's phone extension is {v}", "dentist phone extension", _digits(4)),
]
OPENERS = ("Oh, before I forget: {}.", "Note to self, {}.", "By the way, {}.", "Just so you know, {}.")


@dataclass
class Needle:
    index: int      # turn index in the session
    age: int        # turns after it when the conversation ends
    text: str
    query: str
    value: str


def plant(turns: list[dict], count: int, rng: random.Random) -> tuple[list[dict], list[Needle]]:
    """The conversation with ``count`` facts inserted as user turns, at ages spread log-evenly
    from a few dozen turns (younger ones are still plain text) to the whole conversation."""
    count = min(count, len(FACTS), len(turns))
    total = len(turns) + count
    lo, hi = math.log(max(2, min(30, total // 4))), math.log(max(4, total - 1))
    ages: set[int] = set()
    for i in range(count):  # one age per log-spaced slice
        a, b = math.exp(lo + (hi - lo) * i / count), math.exp(lo + (hi - lo) * (i + 1) / count)
        free = [x for x in range(int(a), int(b) + 1) if x < total and x not in ages]
        ages.add(rng.choice(free or [x for x in range(total) if x not in ages]))
    at = {total - 1 - age: fact for age, fact in zip(sorted(ages), rng.sample(FACTS, count))}
    out, needles, source = [], [], iter(turns)
    for index in range(total):
        if index not in at:
            out.append(next(source))
            continue
        fact, query, make = at[index]
        value = make(rng)
        text = rng.choice(OPENERS).format(fact.format(v=value))
        when = (out[-1] if out else turns[0]).get("time")
        out.append({"role": "user", "content": text, "time": when})
        needles.append(Needle(index, total - 1 - index, text, query, value))
    return out, needles


# -- replay ---------------------------------------------------------------------------------------

@dataclass
class Replayed:
    """One conversation in its session, with what the lab needs to score it."""
    key: str
    session: str
    turns: list[dict]                 # as appended: turn i of the session is turns[i]
    needles: list[Needle]
    pages: list[PageRecord] = field(default_factory=list)
    text: list[TurnRecord] = field(default_factory=list)
    render_seconds: float = 0.0

    @property
    def k(self) -> SessionKeys:
        return SessionKeys(TENANT, self.session)


def replay(memory: Memory, key: str, session: str, turns: list[dict], needles: list[Needle],
           batch: int = 100) -> Replayed:
    """Append the conversation through the service, in batches like a bulk import would."""
    memory.create_session(session, tenant=TENANT)
    rep = Replayed(key, session, turns, needles)
    started = time.perf_counter()
    for i in tqdm(range(0, len(turns), batch), desc=f"replaying {key[:8]} (typesetting pages)",
                  unit="batch", leave=False):
        memory.append(session, turns[i:i + batch], tenant=TENANT)
    memory.settle(session, tenant=TENANT)    # pages may be sealed just after the appends
    rep.render_seconds = time.perf_counter() - started
    rep.pages, rep.text = memory.store.pages(rep.k), memory.store.text_turns(rep.k)
    return rep


# -- reading pages back ---------------------------------------------------------------------------

@dataclass
class Span:
    """One turn's part of a page: its text tokens, its source characters (whitespace ignored) and
    the edits that turn its reading back into the source."""
    turn: int
    text_tokens: int
    chars: int
    errors: float = 0.0


@dataclass
class Reading:
    """How one page reads back at one view, turn by turn."""
    spans: list[Span]
    seconds: float
    text: str = ""      # the whole reading, squashed: a needle's value is legible if it is in here


def source_spans(rep: Replayed, record: PageRecord, tokenizer: str) -> list[Span]:
    """The page's turns as plain text (tokens counted as the compactor counts a page's)."""
    out = []
    for span in record.turns:
        text = rep.turns[span["index"]]["content"][span["start"]:span["end"]]
        out.append(Span(span["index"], tokens.turn_tokens(span["role"], text, tokenizer),
                        len(recalling.squash(text))))
    return out


def quality(rep: Replayed, record: PageRecord, decoded: dict, memory: Memory) -> Reading:
    """Each turn's decoded body against its source text, as recall splits a page into turns."""
    headers: dict[int, list[str]] = defaultdict(list)
    for turn, _, text, kind in memory.store.lines(rep.k, record.page):
        if kind == "header":
            headers[turn].append(text)
    fragments = recalling.fragments_from_decoded(record.turns, decoded, headers, record.page, "", 0)
    spans = source_spans(rep, record, memory.settings.tokenizer)
    for span, f in zip(spans, fragments):
        source = rep.turns[f.turn]["content"][f.start:f.end]
        # A misread costs at most the whole span, so one garbled page can't erase credit for others.
        span.errors = min(span.chars, recalling.char_error(f.decoded, source) * max(1, span.chars))
    return Reading(spans, float(decoded.get("seconds", 0.0)), recalling.squash(decoded.get("text") or ""))


def read_pages(memory: Memory, rep: Replayed, wanted: dict[int, set[str]]) -> dict[tuple[int, str], Reading]:
    """Read each (page, view) once; the decode cache is keyed by view, so recall finds it for any curve."""
    by_page = {p.page: p for p in rep.pages}
    plan: dict[tuple[int, str], list[Tier]] = defaultdict(list)
    for page, names in wanted.items():
        for name in sorted(names, key=memory.ladder.index):
            tier = memory.ladder[name]
            plan[(page, memory.reader.cache_key(tier))].append(tier)
    out = {}
    for (page, view), tiers in tqdm(sorted(plan.items()), desc=f"reading pages of {rep.key[:8]}", unit="page",
                                    leave=False):
        decoded = memory.reader.decoded(rep.k, page, tiers[0])
        if decoded is None:   # the lab waits for every read (no deadline): a read gives a result or raises
            raise RuntimeError(f"page {page} at {tiers[0].name} was not read")
        out[(page, view)] = quality(rep, by_page[page], decoded, memory)
    return out


# -- scoring --------------------------------------------------------------------------------------

@dataclass
class Piece:
    """A page or a text turn as one context holds it."""
    age: float
    tier: str           # a tier name, "text", or why it is not in the context: gone, dropped, lost
    text_tokens: int    # what it costs as plain text
    spent: float        # what it costs in this context
    chars: int          # source characters, whitespace ignored
    errors: float       # edits between what the context gives back and the source
    seconds: float = 0.0

    @property
    def kept(self) -> bool:
        return self.tier not in ("gone", "dropped", "lost")


def summary(pieces: list[Piece]) -> dict[str, Any]:
    chars = sum(p.chars for p in pieces)
    kept = [p for p in pieces if p.kept]
    kept_chars = sum(p.chars for p in kept)
    return {
        "text_tokens": sum(p.text_tokens for p in pieces),
        "tokens": round(sum(p.spent for p in pieces), 2),
        "chars": chars,
        "kept": round(kept_chars / chars, 4) if chars else None,
        "precision": round(max(0.0, 1 - sum(p.errors for p in kept) / kept_chars), 4) if kept_chars else None,
        "fidelity": round(max(0.0, 1 - sum(p.errors for p in pieces) / chars), 4) if chars else None,
        "decode_seconds": round(sum(p.seconds for p in pieces), 2),
    }


def bucket_of(age: float) -> int:
    return max(i for i, lo in enumerate(BUCKETS) if age >= lo)


def bucket_label(i: int) -> str:
    return f"{BUCKETS[i]}-{BUCKETS[i + 1]}" if i + 1 < len(BUCKETS) else f"{BUCKETS[i]}+"


def text_piece(turn: TurnRecord, age: float, kept: bool, why: str = "lost") -> Piece:
    chars = len(recalling.squash(turn.content[turn.start:]))
    return Piece(age, "text" if kept else why, turn.tokens, turn.tokens if kept else 0, chars, 0 if kept else chars)


def page_pieces(spans: list[Span], tier: str, spent: float, seconds: float, count: int,
                lost: bool = False) -> list[Piece]:
    """A page as one piece per turn span, each at its turn's own age, so ages line up with the
    text baselines; the page's tokens and seconds are shared out by text tokens."""
    total = sum(s.text_tokens for s in spans) or 1
    return [Piece(count - 1 - s.turn, tier, s.text_tokens, spent * s.text_tokens / total, s.chars,
                  s.chars if lost else s.errors, seconds * s.text_tokens / total) for s in spans]


def curve_pieces(rep: Replayed, placed: list[context.PlacedPage], built: context.Assembled, sources: dict[int, list[Span]],
                 readings: dict[tuple[int, str], Reading], memory: Memory,
                 precision: dict[str, float] | None = None) -> list[Piece]:
    """The context as pieces. A page made for the context (recent turns typeset for it, never
    stored, so never read here) reads at its tier's precision measured on the frontier sample."""
    count = len(rep.turns)
    in_context = {p.record.page: p for p in built.pages}   # at the tier the context sends it (maybe faded)
    pieces = []
    for p in placed:
        page = p.record.page
        if p.tier.gone or page not in in_context:
            # Not in the context: what it held counts as lost (recall may still find a dropped page).
            pieces += page_pieces(sources[page], "gone" if p.tier.gone else "dropped", 0, 0, count, lost=True)
        else:
            sent = in_context[page]
            r = readings[(page, memory.reader.cache_key(sent.tier))]
            spent = sent.tier.tokens if sent.charge is None else sent.charge
            pieces += page_pieces(r.spans, sent.tier.name, spent, r.seconds, count)
    kept = {t.index for t in built.turns}
    made = {s["index"]: p for p in built.pages if p.png is not None for s in p.record.turns}
    share: defaultdict[int, int] = defaultdict(int)
    for t in rep.text:
        if t.index in made and t.index not in kept:
            share[made[t.index].record.page] += t.tokens
    for t in rep.text:
        holder = made.get(t.index)
        if t.index in kept or holder is None:
            pieces.append(text_piece(t, count - 1 - t.index, t.index in kept, "dropped"))
            continue
        chars = len(recalling.squash(t.content[t.start:]))
        spent = (holder.charge if holder.charge is not None else holder.tier.tokens) * t.tokens / \
            max(1, share[holder.record.page])
        misread = 1 - ((precision or {}).get(holder.tier.name) or 0.0)
        pieces.append(Piece(count - 1 - t.index, holder.tier.name, t.tokens, spent, chars, chars * misread))
    return pieces


def assemble_dropping(turns: list[TurnRecord], placed: list[context.PlacedPage], budget: int | None = None
                      ) -> context.Assembled:
    """The budget rule before issue 11, kept as the lab's "before" baseline: newest first until the
    budget is spent, recent turns then pages at their curve tiers (each page charged its per-page
    share, canvases not rounded up); the first page that doesn't fit is dropped with every older one."""
    spent, kept_turns, dropped_turns = 0.0, [], 0
    for turn in reversed(turns):
        if dropped_turns or (budget is not None and spent + turn.tokens > budget):
            dropped_turns += 1
            continue
        kept_turns.append(turn)
        spent += turn.tokens
    kept_turns.reverse()
    visible = [p for p in placed if not p.tier.gone]
    kept_pages, dropped_pages = [], 0
    for page in reversed(visible):
        if dropped_pages or (budget is not None and spent + page.tier.tokens > budget):
            dropped_pages += 1
            continue
        kept_pages.append(page)
        spent += page.tier.tokens
    kept_pages.reverse()
    replaced = sum(p.record.text_tokens for p in kept_pages)
    visual = sum(p.tier.tokens for p in kept_pages)
    recent = sum(t.tokens for t in kept_turns)
    return context.Assembled(kept_turns, kept_pages, context.Accounting(
        recent_text_tokens=recent, pages=len(kept_pages), pages_forgotten=len(placed) - len(visible),
        text_tokens_replaced=replaced, visual_tokens=round(visual, 2),
        compression=round(replaced / visual, 2) if visual else None, total_tokens=round(recent + visual, 2),
        budget=budget, dropped_turns=dropped_turns, dropped_pages=dropped_pages))


def plain_turns(rep: Replayed, tokenizer: str) -> list[TurnRecord]:
    """The conversation as plain text turns, as the baselines keep it."""
    return [TurnRecord(i, t["role"], t["content"], t.get("time") or "", 0,
                       tokens.turn_tokens(t["role"], t["content"], tokenizer)) for i, t in enumerate(rep.turns)]


def baseline_pieces(plain: list[TurnRecord], budget: int | None) -> tuple[list[Piece], set[int]]:
    """Plain text cut to the newest turns that fit ``budget`` (None: the full text)."""
    kept = {t.index for t in context.assemble(plain, [], budget).turns}
    n = len(plain)
    return [text_piece(t, n - 1 - t.index, t.index in kept) for t in plain], kept


def context_needles(rep: Replayed, built: context.Assembled, readings: dict[tuple[int, str], Reading],
                    memory: Memory, precision: dict[str, float] | None = None) -> list[dict]:
    """Each planted fact as the context under a budget holds it: legible if its turn is in the recent
    text, or its value is in the reading of its page at the tier the context sends the page at."""
    text = {t.index for t in built.turns}
    out = []
    for needle in rep.needles:
        tier, found = "text" if needle.index in text else "lost", needle.index in text
        if not found:
            for p in built.pages:
                if any(s["index"] == needle.index for s in p.record.turns):
                    tier = p.tier.name
                    if p.png is not None:   # made for the context, not stored: legible if its tier is
                        found = found or (precision or {}).get(tier, 0.0) >= LEGIBLE
                        continue
                    reading = readings[(p.record.page, memory.reader.cache_key(p.tier))]
                    found = found or recalling.squash(needle.value) in reading.text
        out.append({"age": needle.age, "value": needle.value, "found": found, "tier": tier})
    return out


def recall_needles(memory: Memory, rep: Replayed, curve: Curve, placed: list[context.PlacedPage]) -> list[dict]:
    """Ask each planted fact back through ``Memory.recall`` with the session on this curve."""
    memory.set_curve(rep.session, curve.spec, tenant=TENANT)
    where = {s["index"]: p.tier.name for p in placed for s in p.record.turns}
    out = []
    for needle in rep.needles:
        hits = memory.recall(rep.session, query=needle.query, limit=3, tenant=TENANT).hits
        found = any(recalling.squash(needle.value) in recalling.squash(h.text) for h in hits)
        out.append({"age": needle.age, "value": needle.value, "found": found,
                    "tier": where.get(needle.index, "text")})
    return out


# -- the experiment -------------------------------------------------------------------------------

def parse_curves(text: str, memory: Memory) -> list[tuple[str, Curve]]:
    """``default,aggressive,name={json},{json}``: split at commas outside JSON brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            if text[start:i].strip():
                items.append(text[start:i].strip())
            start = i + 1
    out = []
    for n, item in enumerate(items):
        named = re.match(r"^([\w.-]+)=(.+)$", item, re.S)
        if named:
            name, spec = named.groups()
        else:
            name, spec = (f"custom{n + 1}" if item[0] in "[{" else item), item
        out.append((name, memory.curve(spec)))
    return out


def load_conversations(args: argparse.Namespace) -> list[tuple[str, list[dict]]]:
    if args.jsonl:
        chosen = [(Path(args.jsonl).stem, jsonl_turns(Path(args.jsonl)))]
    else:  # the longest human conversations: forgetting needs length to show
        chosen = sorted(conversations(), key=lambda kv: (-len(kv[1]), kv[0]))[:args.conversations]
    return [(key, turns[:args.turns] if args.turns else turns) for key, turns in chosen]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns the report (also written to ``args.out``/report.json)."""
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="optimem-lab-") as data:
        settings = Settings.from_env(data_dir=Path(data), redis_url="", worker=False, backend=args.backend,
                                     recent_tokens=args.recent_tokens, font_px=args.font_px, redis_maxmemory="0")
        memory = Memory(settings).open()
        try:
            return _experiment(memory, args, rng)
        finally:
            memory.close()


@dataclass
class Tally:
    """Everything measured, pooled over the conversations; keys are (method, curve, budget)."""
    rows: dict[tuple, list[Piece]] = field(default_factory=lambda: defaultdict(list))
    needles: dict[tuple, list[dict]] = field(default_factory=lambda: defaultdict(list))
    accounts: dict[tuple, Counter] = field(default_factory=lambda: defaultdict(Counter))  # context.assemble's
    frontier: dict[str, list[Piece]] = field(default_factory=lambda: defaultdict(list))   # tier -> sample pages
    sample: list[tuple[str, int]] = field(default_factory=list)
    decodes: list[dict] = field(default_factory=list)
    conversations: list[dict] = field(default_factory=list)


def sample_of(pages: list[PageRecord], count: int) -> list[PageRecord]:
    """``count`` pages spread evenly over the conversation."""
    if not count or not pages:
        return []
    step = max(1, len(pages) // count)
    return pages[step // 2::step][:count]


def truncate(tally: Tally, key: tuple, rep: Replayed, plain: list[TurnRecord], budget: int) -> None:
    pieces, kept = baseline_pieces(plain, budget)
    tally.rows[key] += pieces
    tally.needles[key] += [{"age": x.age, "value": x.value, "found": x.index in kept,
                            "tier": "text" if x.index in kept else "lost"} for x in rep.needles]


def _experiment(memory: Memory, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    curves = parse_curves(args.curves, memory)
    budgets: list[int | None] = [None] + list(args.budgets)
    views = [t for t in memory.ladder.tiers if not t.gone]
    tally = Tally()
    for n, (key, turns) in enumerate(load_conversations(args)):
        planted, needles = plant(turns, args.needles, rng)
        rep = replay(memory, key, f"c{n}", planted, needles)
        count = len(rep.turns)
        placements = {name: context.place(rep.pages, curve, memory.ladder, count) for name, curve in curves}
        builds: dict[tuple, context.Assembled] = {}   # (rule, curve, budget): the context each rule assembles
        for name, curve in curves:
            # Memory.context's rule: a floor of recent turns, older text onto pages made for the context
            making = context.Making(memory.settings.recent_floor_turns, context.made_pages(
                rep.k.tag, memory.layout, memory.settings.tokenizer, curve, memory.ladder, count))
            for budget in budgets:
                builds[("curve", name, budget)] = context.assemble(rep.text, placements[name], budget,
                                                                   ladder=memory.ladder, making=making)
                if budget is not None:  # the rule before issue 11, for the before/after
                    builds[("drop", name, budget)] = assemble_dropping(rep.text, placements[name], budget)
        sample = sample_of(rep.pages, args.frontier_pages)
        wanted: dict[int, set[str]] = defaultdict(set)
        for p in (p for placed in placements.values() for p in placed if not p.tier.gone):
            wanted[p.record.page].add(p.tier.name)
        for p in (p for built in builds.values() for p in built.pages if p.png is None):  # tiers a budget faded pages to
            wanted[p.record.page].add(p.tier.name)
        for record in sample:
            wanted[record.page].update(t.name for t in views)
        readings = read_pages(memory, rep, wanted)
        sources = {r.page: source_spans(rep, r, memory.settings.tokenizer) for r in rep.pages}
        tally.decodes += [{"view": view, "seconds": r.seconds} for (_, view), r in readings.items()]
        tally.sample += [(key, r.page) for r in sample]
        for record, tier in ((record, tier) for record in sample for tier in views):
            r = readings[(record.page, memory.reader.cache_key(tier))]
            tally.frontier[tier.name] += page_pieces(r.spans, tier.name, tier.tokens, r.seconds, count)

        precision = {name: summary(pieces)["precision"] for name, pieces in tally.frontier.items()}
        plain = plain_turns(rep, memory.settings.tokenizer)
        tally.rows[("full-text", "", None)] += baseline_pieces(plain, None)[0]
        tally.needles[("full-text", "", None)] += [{"age": x.age, "value": x.value, "found": True, "tier": "text"}
                                                   for x in needles]
        for name, curve in tqdm(curves, desc="recalling needles per curve", unit="curve", leave=False):
            outcomes = recall_needles(memory, rep, curve, placements[name])
            for (rule, curve_name, budget), built in builds.items():
                if curve_name != name:
                    continue
                pieces = curve_pieces(rep, placements[name], built, sources, readings, memory, precision)
                key3 = (rule, name, budget)
                tally.rows[key3] += pieces
                # Unbudgeted: recall through the service (as before); under a budget: what the context holds.
                tally.needles[key3] += outcomes if budget is None else context_needles(rep, built, readings, memory,
                                                                                       precision)
                tally.accounts[key3].update({k: v for k, v in built.accounting.model_dump().items() if k in ACCOUNTED})
                if budget is None:  # truncated to what this curve's context spent
                    truncate(tally, ("truncation", name, None), rep, plain, math.floor(sum(p.spent for p in pieces)))
        for budget in args.budgets:  # a plain window of the whole budget, whatever the curves spent of it
            truncate(tally, ("truncation", "", budget), rep, plain, budget)
        tally.conversations.append({"key": key, "turns": count, "pages": len(rep.pages), "text_turns": len(rep.text),
                                    "render_seconds": round(rep.render_seconds, 2),
                                    "needles": [asdict(x) for x in needles]})

    return {
        "what": "optimem forgetting-curve lab: context tokens and read-back fidelity by age, per curve, "
                "against full text and truncation to the same tokens",
        "machine": machine(),
        "settings": {"backend": memory.settings.backend, "reader": memory.reader.id,
                     "family": memory.ladder.family, "page_px": memory.ladder.page_px, "font_px": args.font_px,
                     "recent_tokens": args.recent_tokens, "tokenizer": memory.settings.tokenizer,
                     "seed": args.seed, "budgets": list(args.budgets), "rules": RULES, "buckets": list(BUCKETS),
                     "curves": {name: curve.spec for name, curve in curves}},
        "conversations": tally.conversations,
        "rows": [_row(key, pieces, tally.needles[key], tally.accounts.get(key)) for key, pieces in tally.rows.items()],
        "tiers": [{"tier": name, "px": memory.ladder[name].px, "visual_tokens": memory.ladder[name].tokens,
                   "pages": len(tally.sample), **summary(pieces), "compression": _ratio(pieces)}
                  for name, pieces in tally.frontier.items()],
        "cost": _cost(tally.conversations, tally.decodes),
    }


def _ratio(pieces: list[Piece]) -> float | None:
    spent = sum(p.spent for p in pieces)
    return round(sum(p.text_tokens for p in pieces) / spent, 2) if spent else None


def _row(key: tuple, pieces: list[Piece], needles: list[dict], accounting: Counter | None) -> dict[str, Any]:
    method, curve, budget = key
    buckets, tiers = defaultdict(list), defaultdict(list)
    for p in pieces:
        buckets[bucket_of(p.age)].append(p)
        tiers[p.tier].append(p)
    by_age = defaultdict(list)
    for x in needles:
        by_age[bucket_of(x["age"])].append(x["found"])
    return {
        "method": method, "curve": curve, "budget": budget, **summary(pieces),
        "compression": _ratio([p for p in pieces if p.kept]),
        "needles": {"found": sum(x["found"] for x in needles), "total": len(needles), "each": needles},
        "buckets": [{"bucket": bucket_label(i), "lo": BUCKETS[i], **summary(b),
                     "tiers": _tier_tokens(b),
                     "needles": [sum(by_age[i]), len(by_age[i])]} for i, b in sorted(buckets.items())],
        "by_tier": {t: {**summary(b), "compression": _ratio(b)} for t, b in tiers.items()},
        # What context.assemble said about the same contexts, summed over conversations: a check.
        "accounting": {k: round(v, 2) for k, v in accounting.items()} if accounting else None,
    }


def _tier_tokens(pieces: list[Piece]) -> dict[str, int]:
    """Text tokens held at each tier (or lost, and why)."""
    out: Counter[str] = Counter()
    for p in pieces:
        out[p.tier] += p.text_tokens
    return dict(out)


def _cost(conversations: list[dict], decodes: list[dict]) -> dict[str, Any]:
    pages = sum(c["pages"] for c in conversations)
    render = sum(c["render_seconds"] for c in conversations)
    views = defaultdict(list)
    for d in decodes:
        views[d["view"]].append(d["seconds"])
    return {"render_seconds": round(render, 2), "pages": pages,
            "render_seconds_per_page": round(render / pages, 3) if pages else None,
            "decodes": len(decodes), "decode_seconds": round(sum(d["seconds"] for d in decodes), 1),
            "decode_seconds_per_page": {v: round(sum(s) / len(s), 2) for v, s in sorted(views.items())}}


# -- output ---------------------------------------------------------------------------------------

def _f(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def table(report: dict[str, Any]) -> str:
    """The report as terminal tables: methods, the per-tier frontier, fidelity by age, cost."""
    out = [f"{'method':<11} {'curve':<12} {'budget':>6} {'tokens':>8} {'saved':>6} {'x':>5} {'fidelity':>8} "
           f"{'precision':>9} {'kept':>5} {'needles':>7}"]
    full = next(r for r in report["rows"] if r["method"] == "full-text")["tokens"]
    for r in report["rows"]:
        out.append(f"{r['method']:<11} {r['curve']:<12} {r['budget'] or '-':>6} {r['tokens']:>8.0f} "
                   f"{1 - r['tokens'] / full:>6.0%} {_f(r['compression'], '.1f'):>5} {_f(r['fidelity']):>8} "
                   f"{_f(r['precision']):>9} {_f(r['kept'], '.2f'):>5} "
                   f"{r['needles']['found']:>3}/{r['needles']['total']:<3}")
    out += ["", "per tier (the same sample pages at every tier):",
            f"{'tier':<9} {'px':>5} {'visual':>7} {'text tok':>8} {'x':>6} {'precision':>9} {'s/page':>7}"]
    for t in report["tiers"]:
        out.append(f"{t['tier']:<9} {t['px']:>5} {t['visual_tokens']:>7.1f} {t['text_tokens'] / t['pages']:>8.0f} "
                   f"{_f(t['compression'], '.2f'):>6} {_f(t['precision']):>9} {t['decode_seconds'] / t['pages']:>7.1f}")
    labels = [b["bucket"] for b in max((r["buckets"] for r in report["rows"]), key=len, default=[])]
    out += ["", "fidelity by age in turns (needles recalled/planted at that age):",
            f"{'method':<11} {'curve':<12} {'budget':>6} " + " ".join(f"{b:>11}" for b in labels)]
    for r in report["rows"]:
        cells = {b["bucket"]: f"{_f(b['fidelity'])} {b['needles'][0]}/{b['needles'][1]}" if b["needles"][1]
                 else _f(b["fidelity"]) for b in r["buckets"]}
        out.append(f"{r['method']:<11} {r['curve']:<12} {r['budget'] or '-':>6} "
                   + " ".join(f"{cells.get(b, '-'):>11}" for b in labels))
    out += ["", budget_table(report)]
    c = report["cost"]
    out += ["", f"cost: {c['pages']} pages rendered in {c['render_seconds']} s "
                f"({c['render_seconds_per_page']} s/page, append included); {c['decodes']} page reads, "
                f"{c['decode_seconds']} s ({', '.join(f'{v}: {s} s' for v, s in c['decode_seconds_per_page'].items())})"]
    return "\n".join(out)


def _needles(r: dict[str, Any]) -> str:
    return f"{r['needles']['found']}/{r['needles']['total']}"


def budget_table(report: dict[str, Any]) -> str:
    """Per curve and budget: tokens sent, share legible (fidelity) and needles legible in the context,
    under the rule now (fade, then drop) and the rule before (drop at the curve tiers), beside a
    plain window of the same budget (truncation)."""
    rows = {(r["method"], r["curve"], r["budget"]): r for r in report["rows"]}
    budgets = report["settings"].get("budgets") or []
    out = ["per budget: tokens sent, share of the conversation legible (fidelity), needles legible; "
           "now = a floor of recent turns, older text onto pages made for the context, then fade, then drop; "
           "before = drop at the curve tiers",
           f"{'curve':<12} {'budget':>6} {'tokens':>7} {'legible':>7} {'needles':>7} {'faded':>5} {'dropped':>7} | "
           f"{'before':>7} {'legible':>7} {'needles':>7} {'dropped':>7}"]
    for name in report["settings"]["curves"]:
        for budget in [None] + budgets:
            now, old = rows.get(("curve", name, budget)), rows.get(("drop", name, budget))
            if not now:
                continue
            a = now["accounting"] or {}
            cells = (f"{old['tokens']:>7.0f} {_f(old['fidelity']):>7} {_needles(old):>7} "
                     f"{(old['accounting'] or {}).get('dropped_pages', 0):>7.0f}") if old else f"{'-':>7} " * 3 + f"{'-':>7}"
            out.append(f"{name:<12} {budget or '-':>6} {now['tokens']:>7.0f} {_f(now['fidelity']):>7} "
                       f"{_needles(now):>7} {a.get('pages_faded_by_budget', 0):>5.0f} {a.get('dropped_pages', 0):>7.0f} | "
                       + cells)
    for budget in budgets:
        t = rows.get(("truncation", "", budget))
        if t:
            out.append(f"{'truncation':<12} {budget:>6} {t['tokens']:>7.0f} {_f(t['fidelity']):>7} {_needles(t):>7}")
    return "\n".join(out)


def best(report: dict[str, Any], fidelity: float = 0.99) -> dict[str, Any] | None:
    """The default curve from the frontier: the cheapest unbudgeted context that reads back at least
    ``fidelity`` of the conversation and recalls every needle. If none does: among those within
    ``FIDELITY_TIE`` of the best fidelity, the one recalling the most needles, then the cheapest."""
    rows = [r for r in report["rows"] if r["method"] == "curve" and r["budget"] is None]
    if not rows:
        return None
    good = [r for r in rows if (r["fidelity"] or 0) >= fidelity and r["needles"]["found"] == r["needles"]["total"]]
    if good:
        pick, why = min(good, key=lambda r: r["tokens"]), f"cheapest with fidelity >= {fidelity} and every needle"
    else:
        top = max(r["fidelity"] or 0 for r in rows)
        near = [r for r in rows if (r["fidelity"] or 0) >= top - FIDELITY_TIE]
        pick, why = max(near, key=lambda r: (r["needles"]["found"], -r["tokens"])), "most faithful, then needles"
    return {"budget": pick["budget"], "curve": pick["curve"], "fidelity": pick["fidelity"], "tokens": pick["tokens"],
            "needles": _needles(pick), "why": why, "spec": report["settings"]["curves"][pick["curve"]]}


def main(argv: list[str] | None = None) -> None:
    """``optimem lab`` without ``calibrate`` (``optimem.memory.lab.cli`` dispatches)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="optimem lab", description=__doc__.split("\n\n")[0],
                                     epilog="optimem lab calibrate --help: how densely a page can be typeset")
    parser.add_argument("--curves", help="comma-separated presets, JSON specs or name=JSON "
                                         f"(default: {DEFAULTS['curves']})")
    parser.add_argument("--jsonl", help="replay this file of {role, content, time?} turns instead of chitchat")
    parser.add_argument("--conversations", type=int, help="how many of the longest chitchat conversations (1)")
    parser.add_argument("--turns", type=int, help="keep the first N turns of each conversation (0: all)")
    parser.add_argument("--needles", type=int, help="facts planted per conversation (12)")
    parser.add_argument("--budgets", help="also score each curve's context under these token budgets, "
                                          "comma-separated (2000,4000,8000; '' or 0: none)")
    parser.add_argument("--budget", type=int, help="one budget (same as --budgets N; 0: none)")
    parser.add_argument("--recent-tokens", type=int, help="text kept as turns before sealing (2000)")
    parser.add_argument("--frontier-pages", type=int, help="pages read at every tier for the tier frontier (8)")
    parser.add_argument("--font-px", type=int, default=Settings().font_px)
    parser.add_argument("--backend", default="rapidocr", choices=BACKENDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="lab-report", help="folder for report.json and the plots")
    parser.add_argument("--quick", action="store_true", help="a tiny slice (160 turns, 3 needles): for tests")
    args = parser.parse_args(argv)
    if args.budget is not None and args.budgets is None:
        args.budgets = str(args.budget)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.budgets = sorted({int(b) for b in str(args.budgets).split(",") if b.strip() and int(b) > 0})
    except ValueError:
        parser.error(f"--budgets takes whole numbers of tokens, comma-separated; got {args.budgets!r}")

    try:
        report = run(args)
    except BadRequest as exc:  # a curve or a turn the service refused: say which, no traceback
        parser.error(str(exc))
    report["best"] = best(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    from optimem.memory.lab.plots import plot_all  # matplotlib: only when there is a report to plot
    plots = plot_all(report, out)
    print(table(report))
    if report["best"]:
        b = report["best"]
        print(f"default curve from the frontier ({b['why']}): {b['curve']} {json.dumps(b['spec'])} "
              f"(fidelity {b['fidelity']}, {b['tokens']:.0f} tokens, needles {b['needles']})")
    print(f"wrote {out / 'report.json'} and {', '.join(str(p) for p in plots)}")
