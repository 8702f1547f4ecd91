"""The identifier benchmark: do exact strings (codes, emails, URLs, phone numbers, hashes,
confusable glyphs) read back exactly from faded pages?

Identifiers of each kind are generated from a seed, planted as user turns in a real chitchat
conversation (some with Chinese text around them), the conversation is typeset with the lab's
default layout, and each planted turn's own line boxes are read by the CPU reader at every tier's
view. A read-back is exact when the identifier's characters (whitespace ignored, as everywhere in
the lab) appear in what was read of its turn. Beside it: character precision of ordinary text
(other turns' lines on a few pages, same reader and views) and page capacity on real chitchat
(text tokens per full page), so what identifiers gain can be weighed against what prose loses.

``bench/identifiers.py`` runs it before (identifiers set as prose) and after (the identifier face).
"""
from __future__ import annotations

import random
import string
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from optimem import renderer
from optimem.renderer import identifiers as recogniser
from optimem.memory import reading, tokens
from optimem.memory.lab import corpus
from optimem.memory.recall import char_error, squash
from optimem.model.tiers import DEEPSEEK_OCR2, Ladder

KINDS = ("code", "email", "url", "phone", "hex", "confusable")
CONFUSABLE = "O0Il1rnmB8S5"
_UPPER_DIGITS = string.ascii_uppercase + string.digits
_ALNUM = string.ascii_letters + string.digits
_NAMES = "maya jonas priya tomasz aiko lucas fatima omar ingrid chen rafael noor elif dmitri".split()
_SURNAMES = "okafor lindqvist moreau tanaka silva novak haddad brennan kowalski ferreira".split()
_DOMAINS = "gmail.com fastmail.com proton.me outlook.com example.org mail.co.uk uni-bonn.de".split()
_HOSTS = "drive.example.com docs.acme.io shop-example.net tickets.example.org git.example.dev".split()


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _digits(rng: random.Random, n: int) -> str:
    return _pick(rng, string.digits, n)


def make(kind: str, rng: random.Random) -> str:
    """One identifier of ``kind``."""
    if kind == "code":
        shape = rng.randrange(4)
        if shape == 0:      # QX-4817-A2B
            return (f"{_pick(rng, string.ascii_uppercase, 2)}-{_digits(rng, 4)}-"
                    f"{rng.choice(string.ascii_uppercase)}{rng.choice(string.digits)}{rng.choice(string.ascii_uppercase)}")
        if shape == 1:      # K9X2-77QF
            return f"{_pick(rng, _UPPER_DIGITS, 4)}-{_pick(rng, _UPPER_DIGITS, 4)}"
        if shape == 2:      # ORD-58213-ZK
            return f"{_pick(rng, string.ascii_uppercase, 3)}-{_digits(rng, 5)}-{_pick(rng, string.ascii_uppercase, 2)}"
        return f"{_pick(rng, string.ascii_uppercase, 2)}{_digits(rng, 6)}"    # booking ref, AB482913
    if kind == "email":
        name, surname = rng.choice(_NAMES), rng.choice(_SURNAMES)
        local = rng.choice([f"{name}.{surname}{_digits(rng, 2)}", f"{name[0]}{surname}{_digits(rng, 3)}",
                            f"{name}_{surname[:3]}{_digits(rng, 1)}"])
        return f"{local}@{rng.choice(_DOMAINS)}"
    if kind == "url":
        host = rng.choice(_HOSTS)
        shape = rng.randrange(3)
        if shape == 0:
            return f"https://{host}/f/{_pick(rng, _ALNUM, 8)}"
        if shape == 1:
            return f"https://{host}/order?id={_digits(rng, 6)}"
        return f"www.{host.split('.', 1)[1]}/r/{_pick(rng, string.ascii_lowercase + string.digits, 6)}"
    if kind == "phone":
        shape = rng.randrange(4)
        if shape == 0:
            return f"+1 {rng.randint(201, 989)}-555-{_digits(rng, 4)}"
        if shape == 1:
            return f"({rng.randint(201, 989)}) 555-{_digits(rng, 4)}"
        if shape == 2:
            return f"+44 20 {_digits(rng, 4)} {_digits(rng, 4)}"
        return f"{rng.randint(201, 989)}.555.{_digits(rng, 4)}"
    if kind == "hex":
        value = _pick(rng, "0123456789abcdef", rng.choice([10, 12, 16]))
        while not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
            value = _pick(rng, "0123456789abcdef", len(value))
        return rng.choice(["", "", "0x"]) + value
    if kind == "confusable":
        value = _pick(rng, CONFUSABLE, rng.randint(8, 12))
        while sum(c.isdigit() for c in value) < 2 or sum(c.isalpha() for c in value) < 2:
            value = _pick(rng, CONFUSABLE, len(value))
        return value
    raise ValueError(f"unknown identifier kind {kind!r}; choose one of {KINDS}")


# How a user says it: Latin and Chinese sentences with a {v} slot, per kind.
LATIN = {
    "code": ["my order number is {v}, can you keep it?", "the locker code is {v}", "booking ref {v} for Friday"],
    "email": ["you can email me at {v}", "her address is {v} if you need it", "send it to {v} please"],
    "url": ["the link is {v}", "here: {v} (it expires soon)", "I saved the page at {v}"],
    "phone": ["call me on {v} after six", "the dentist's number is {v}", "my new phone is {v}"],
    "hex": ["the commit was {v}", "my recovery key is {v}", "device id {v}, keep it"],
    "confusable": ["the wifi password is {v}", "my license key is {v} exactly", "serial: {v}"],
}
CJK = {
    "code": "我的订单号是{v}，别忘了。", "email": "我的邮箱是{v}，有事联系。", "url": "链接在这里：{v}，明天过期。",
    "phone": "我的电话是{v}，晚上打。", "hex": "提交号是{v}。", "confusable": "无线密码是{v}，区分大小写。",
}


@dataclass
class Planted:
    kind: str
    value: str
    text: str       # the whole user turn
    cjk: bool
    index: int = -1  # turn index once planted


def generate(seed: int = 14, per_kind: int = 12, cjk_every: int = 4) -> list[Planted]:
    """``per_kind`` identifiers of each kind; every ``cjk_every``-th one said in Chinese."""
    rng = random.Random(seed)
    out = []
    for kind in KINDS:
        for n in range(per_kind):
            value = make(kind, rng)
            cjk = cjk_every > 0 and n % cjk_every == cjk_every - 1
            text = CJK[kind].format(v=value) if cjk else rng.choice(LATIN[kind]).format(v=value)
            out.append(Planted(kind, value, text, cjk))
    rng.shuffle(out)
    return out


def plant(turns: list[dict], planted: list[Planted], every: int = 6, jitter: random.Random | None = None) -> list[dict]:
    """The conversation with a planted user turn after every ``every`` real turns (its time copied
    from the turn before; ``jitter``: every +- 2 at random), as many real turns as that needs; sets
    each ``Planted.index`` (any object with ``text`` and ``index``)."""
    out: list[dict] = []
    source = iter(turns)
    for item in planted:
        for _ in range(every + (jitter.randint(-2, 2) if jitter else 0)):
            turn = next(source, None)
            if turn is not None:
                out.append(turn)
        item.index = len(out)
        out.append({"role": "user", "content": item.text, "time": (out[-1] if out else {}).get("time")})
    return out


def layout(ident: str, settings_layout: renderer.Layout | None = None) -> renderer.Layout:
    """The lab's default layout (12 px, 1.15 line spacing, the ladder's page) with identifiers set by ``ident``."""
    base = settings_layout or renderer.Layout(page_px=DEEPSEEK_OCR2.page_px, font_px=12, line_spacing=1.15)
    return renderer.Layout(page_px=base.page_px, font_px=base.font_px, line_spacing=base.line_spacing,
                           margin_px=base.margin_px, ident=ident)


def _turn_texts(turns: list[dict]) -> list[renderer.TurnText]:
    return [renderer.TurnText(i, t["role"], t["content"], t.get("time")) for i, t in enumerate(turns)]


def _views(ladder: Ladder, tiers: list[str] | None) -> dict[int, list[str]]:
    """Tier names grouped by view size: the CPU reader reads a page alike at any tier of one size."""
    out: dict[int, list[str]] = {}
    for tier in ladder.tiers:
        if not tier.gone and (tiers is None or tier.name in tiers):
            out.setdefault(tier.px, []).append(tier.name)
    return out


def read_turns(backend, pages: list[renderer.Page], wanted: set[int], px: int, page_px: int,
               ladder: Ladder) -> tuple[dict[int, str], float, int]:
    """What the reader makes of the wanted turns' text lines at one view size: text per turn
    (lines joined in reading order), seconds spent and lines read."""
    tier = next(t for t in ladder.tiers if t.px == px)
    got: dict[int, list[str]] = defaultdict(list)
    seconds, count = 0.0, 0
    for page in pages:
        lines = [line for line in page.lines if line.kind == "text" and line.turn in wanted]
        if not lines:
            continue
        view = reading.page_view(page.png, lines, tier, page_px)
        start = time.perf_counter()
        decoded = backend.decode([view])[0]
        seconds += time.perf_counter() - start
        count += len(lines)
        for line in decoded.lines:
            got[line.turn].append(line.text)
    return {turn: " ".join(texts) for turn, texts in got.items()}, seconds, count


def exact(value: str, read: str) -> bool:
    return squash(value) in squash(read)


def tokens_per_page(texts: list[renderer.TurnText], pages: list[renderer.Page]) -> float:
    """Text tokens per full page: what each full page holds of its turns' content."""
    full = [p for p in pages if p.full]
    count = 0
    for page in full:
        for t in range(page.first_turn, page.last_turn + 1):
            content = texts[t].content
            a = page.first_offset if t == page.first_turn else 0
            b = page.end_offset if t == page.last_turn else len(content)
            if b > a:
                count += tokens.count(content[a:b])
    return round(count / max(1, len(full)), 1)


def capacity(ident: str, conversations: int = 300) -> dict[str, Any]:
    """Text tokens per full page on real chitchat (the first ``conversations`` chats, one after
    another as one session), and how many identifier spans the recogniser set in its face."""
    turns: list[dict] = []
    for _, chat in corpus.conversations(limit=conversations):
        turns.extend(chat)
    texts = _turn_texts(turns)
    pages = renderer.typeset(texts, layout(ident))
    full = [p for p in pages if p.full]
    spans = sum(len(recogniser.find(t.content)) for t in texts) if ident != "off" else 0
    return {"turns": len(turns), "pages": len(pages), "full_pages": len(full),
            "tokens_per_page": tokens_per_page(texts, pages), "identifier_spans": spans}


def typeset_ms(idents: list[str], conversations: int = 300, reps: int = 3) -> dict[str, float]:
    """Milliseconds to typeset a page of real chitchat in each setting: the best of ``reps`` runs,
    the settings interleaved run by run so a busy machine slows them alike."""
    turns = [t for _, chat in corpus.conversations(limit=conversations) for t in chat]
    texts = _turn_texts(turns)
    best: dict[str, float] = {}
    for ident in idents:
        renderer.typeset(texts[:200], layout(ident))        # fonts and glyph caches warm
    for _ in range(reps):
        for ident in idents:
            start = time.perf_counter()
            pages = renderer.typeset(texts, layout(ident))
            ms = (time.perf_counter() - start) * 1000 / len(pages)
            best[ident] = round(min(best.get(ident, ms), ms), 2)
    return best


def run(ident: str, *, seed: int = 14, per_kind: int = 12, tiers: list[str] | None = None,
        prose_pages: int = 2, capacity_conversations: int = 300, backend=None,
        ladder: Ladder = DEEPSEEK_OCR2) -> dict[str, Any]:
    """The benchmark for one identifier setting: exact read-back per view and kind, prose
    precision, capacity. ``backend`` defaults to the CPU reader (lines mode)."""
    if backend is None:
        from optimem.model.rapidocr_backend import RapidOcrBackend
        backend = RapidOcrBackend(ladder, ident=ident)
    planted = generate(seed, per_kind)
    _, chat = corpus.longest()
    turns = plant(chat, planted)
    lay = layout(ident)
    texts = _turn_texts(turns)
    pages = renderer.typeset(texts, lay)
    by_turn = {p.index: p for p in planted}
    prose_turns = {line.turn for page in pages[:prose_pages] for line in page.lines
                   if line.kind == "text" and line.turn not in by_turn}
    prose_source = {t: turns[t]["content"] for t in prose_turns}
    report: dict[str, Any] = {"ident": ident, "seed": seed, "per_kind": per_kind, "layout": lay.__dict__,
                              "pages": len(pages),
                              # capacity where identifiers are dense (one planted turn in 7), for honesty
                              "planted_tokens_per_page": tokens_per_page(texts, pages), "views": {}, "misses": {}}
    for px, names in _views(ladder, tiers).items():
        got, seconds, count = read_turns(backend, pages, set(by_turn), px, lay.page_px, ladder)
        kinds: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
        misses = []
        for item in planted:
            ok = exact(item.value, got.get(item.index, ""))
            kinds[item.kind][0] += ok
            kinds[item.kind][1] += 1
            if not ok:
                misses.append({"kind": item.kind, "value": item.value, "cjk": item.cjk,
                               "read": got.get(item.index, "")})
        cjk = [exact(i.value, got.get(i.index, "")) for i in planted if i.cjk]
        prose, p_seconds, p_lines = read_turns(backend, pages[:prose_pages], prose_turns, px, lay.page_px, ladder)
        chars = sum(len(squash(s)) for s in prose_source.values())
        errors = sum(min(len(squash(s)), char_error(prose.get(t, ""), s) * len(squash(s)))
                     for t, s in prose_source.items())
        total = sum(v[0] for v in kinds.values())
        report["views"][str(px)] = {
            "tiers": names, "exact": round(total / len(planted), 4),
            "kinds": {k: {"exact": v[0], "of": v[1]} for k, v in kinds.items()},
            "cjk": {"exact": sum(cjk), "of": len(cjk)},
            "prose_precision": round(1 - errors / max(1, chars), 4), "prose_chars": chars,
            "seconds_per_turn": round(seconds / len(planted), 3), "prose_seconds": round(p_seconds, 1),
        }
        report["misses"][str(px)] = misses
    if capacity_conversations:
        report["capacity"] = capacity(ident, capacity_conversations)
    return report


def table(reports: list[dict[str, Any]]) -> str:
    """One row per setting and view: exact read-back overall and by kind, prose precision, capacity."""
    head = f"{'setting':<20} {'seed':>4} {'tiers':<13} {'exact':>6} " + " ".join(f"{k:>10}" for k in KINDS) + \
           f" {'cjk':>6} {'prose':>7} {'tok/page':>8}"
    rows = [head]
    for r in reports:
        cap = r.get("capacity", {}).get("tokens_per_page")
        for px, v in r["views"].items():
            kinds = " ".join(f"{v['kinds'][k]['exact']:>4}/{v['kinds'][k]['of']:<2}  " for k in KINDS)
            rows.append(f"{r['ident']:<20} {r['seed']:>4} {','.join(v['tiers']):<13} {v['exact']:>6.1%} {kinds}"
                        f"{v['cjk']['exact']:>3}/{v['cjk']['of']:<2} {v['prose_precision']:>7.4f} "
                        f"{cap if cap is not None else '-':>8}")
    return "\n".join(rows)


def pooled(reports: list[dict[str, Any]]) -> str:
    """Exact read-back per setting and view over every seed, per kind, and mean prose precision."""
    sums: dict[tuple[str, str], dict] = {}
    for r in reports:
        for px, v in r["views"].items():
            s = sums.setdefault((r["ident"], ",".join(v["tiers"])), {"kinds": {}, "prose": []})
            for kind, k in v["kinds"].items():
                got, of = s["kinds"].get(kind, (0, 0))
                s["kinds"][kind] = (got + k["exact"], of + k["of"])
            s["prose"].append(v["prose_precision"])
    rows = ["pooled over seeds: setting, tiers, exact, per kind, prose precision (mean)"]
    for (ident, tiers), s in sums.items():
        got, of = (sum(k[i] for k in s["kinds"].values()) for i in (0, 1))
        kinds = " ".join(f"{kind} {k[0]}/{k[1]}" for kind, k in s["kinds"].items())
        rows.append(f"{ident:<20} {tiers:<13} {got / of:6.1%} ({got}/{of})  {kinds}  prose {sum(s['prose']) / len(s['prose']):.4f}")
    return "\n".join(rows)


def picture(idents: list[str], path, texts: tuple[str, ...] = (
        "the wifi password is r01S5l1l", "my order number is QX-4817-A2B, can you keep it?",
        "the commit was 0x6e8efcc0c7")) -> None:
    """A PNG of the same short chat typeset with each identifier setting, at 1024 px and as the
    512 px mosaic cell sees it (scaled back up, so its blur shows): what the reader is given."""
    from PIL import Image, ImageDraw

    from optimem.renderer.views import view
    turns = [renderer.TurnText(i, "user", t, "2018-05-02T19:38:00Z") for i, t in enumerate(texts)]
    strips = []
    for ident in idents:
        page = renderer.typeset(turns, layout(ident))[0]
        bottom = max(line.box[3] for line in page.lines) + 8
        for px in (1024, 512):
            image = view(page.png, px).resize((1024, 1024), Image.Resampling.NEAREST)
            strip = image.crop((0, 0, 560, bottom)).convert("L")
            label = Image.new("L", (560, 18), 235)
            ImageDraw.Draw(label).text((8, 3), f"{ident} at {px} px", fill=0)
            strips += [label, strip]
    out = Image.new("L", (560, sum(s.height for s in strips)), 255)
    y = 0
    for s in strips:
        out.paste(s, (0, y))
        y += s.height
    out.save(path)
