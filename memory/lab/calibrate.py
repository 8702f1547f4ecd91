"""`optimem lab calibrate`: how much text a page can hold and still be read back, per tier.

Real chat text (English from chitchat-dataset, Chinese from ``data/zh.txt`` beside this module) is
typeset at each font size and line spacing of a sweep, and the first full page is read back by the
active reader at every view of the ladder. For each setting and tier: the text tokens the page holds
(cl100k, counted as the compactor counts a page), the compression against the tier's visual
tokens, and the character precision of the reading (1 - CER against what was typeset). Then, per
tier and language, the densest setting that still reads at >= 99%, 97% and 90%, and the default
the measurements support.

Needs no ``Memory`` and no Redis: pages come straight from ``optimem.renderer``, each view from
``reading.page_view`` and the reading from the backend's ``decode``. ``--quick`` reads one short
page per language at the default setting and the two sharpest views (seconds on a CPU): a check
that the pipeline works, not a calibration.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from optimem import renderer
from optimem.memory import reading, recall as recalling, tokens
from optimem.memory.lab.common import machine, reader, tiers_named, views
from optimem.memory.lab.corpus import chinese, english
from optimem.model import backends
from optimem.model.base import Backend
from optimem.model.tiers import Ladder, Tier, ladder as ladder_for
from optimem.settings import Settings

THRESHOLDS = (0.99, 0.97, 0.90)
LANGUAGES = {"en": english, "zh": chinese}
QUICK_CHARS = 300     # --quick: about this much text per language, on one page


def first_full_pages(turns: list[dict], layout: renderer.Layout, count: int) -> tuple[list[renderer.Page], list]:
    """The first ``count`` full pages of the turns, repeated as often as it takes to fill them."""
    n = len(turns)
    while True:
        texts = [renderer.TurnText(i, t["role"], t["content"], t.get("time"))
                 for i, t in enumerate(islice(cycle(turns), n))]
        full = [p for p in renderer.typeset(texts, layout) if p.full]
        if len(full) >= count:
            return full[:count], texts
        n *= 2


def first_pages(turns: list[dict], layout: renderer.Layout, count: int, chars: int) -> tuple[list[renderer.Page], list]:
    """The first ``count`` pages of only the first ``chars`` characters of the turns (the last one
    cut short): pages that need not be full, for a quick look."""
    kept, left = [], chars
    for t in turns:
        if left <= 0:
            break
        kept.append({**t, "content": t["content"][:left]})
        left -= len(kept[-1]["content"])
    texts = [renderer.TurnText(i, t["role"], t["content"], t.get("time")) for i, t in enumerate(kept)]
    return renderer.typeset(texts, layout)[:count], texts


def page_tokens(page: renderer.Page, texts: list, tokenizer: str) -> int:
    total = 0
    for index in range(page.first_turn, page.last_turn + 1):
        turn = texts[index]
        start = page.first_offset if index == page.first_turn else 0
        end = page.end_offset if index == page.last_turn else len(turn.content)
        total += tokens.turn_tokens(turn.role, turn.content[start:end], tokenizer)
    return total


def read_back(backend: Backend, page: renderer.Page, tier: Tier, page_px: int) -> tuple[int, float, float]:
    """(source characters, edits, seconds) of one page read at one tier's view; a misread costs at
    most the whole page. The source is every text line typeset: header prefixes are metadata the
    reader does not read (``RapidOcrBackend(headers=False)``) and recall strips them anyway."""
    source = "\n".join(line.text for line in page.lines if line.kind != "header")
    decoded = backend.decode([reading.page_view(page.png, page.lines, tier, page_px)])[0]
    n = len(recalling.squash(source))
    return n, min(n, recalling.char_error(decoded.text, source) * n), decoded.seconds


def measure(backend: Backend, ladder: Ladder, fonts: list[int], spacings: list[float], pages: int,
            tokenizer: str, tiers: Iterable[Tier] | None = None, chars: int = 0) -> list[dict[str, Any]]:
    """One row per language, setting and tier. ``tiers``: which to read (default: every tier but
    gone); tiers the backend reads alike are read once. ``chars``: typeset only that much text per
    language (0: whole full pages)."""
    languages = {lang: load() for lang, load in LANGUAGES.items()}
    settings = [(lang, f, s) for lang in languages for f in fonts for s in spacings]
    grouped = views(list(ladder.tiers if tiers is None else tiers), backend, ladder)  # read alike: read once
    rows = []
    with tqdm(total=len(settings) * len(grouped) * pages, desc="reading calibration pages", unit="page") as bar:
        for lang, font_px, spacing in settings:
            layout = renderer.Layout(page_px=ladder.page_px, font_px=font_px, line_spacing=spacing)
            typeset, texts = (first_pages(languages[lang], layout, pages, chars) if chars
                              else first_full_pages(languages[lang], layout, pages))
            held = [page_tokens(p, texts, tokenizer) for p in typeset]
            for same in grouped.values():
                chars_read, errors, seconds = 0, 0.0, 0.0
                for page in typeset:
                    n, e, s = read_back(backend, page, same[0], ladder.page_px)
                    chars_read, errors, seconds = chars_read + n, errors + e, seconds + s
                    bar.update()
                per_page = sum(held) / len(held)
                for tier in same:
                    rows.append({"lang": lang, "font_px": font_px, "line_spacing": spacing, "tier": tier.name,
                                 "px": tier.px, "visual_tokens": round(tier.tokens, 2),
                                 "tokens_per_page": round(per_page), "compression": round(per_page / tier.tokens, 2),
                                 "precision": round(1 - errors / chars_read, 4),
                                 "chars": chars_read, "seconds_per_page": round(seconds / len(typeset), 2)})
    return rows


def densest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per language, tier and threshold: the setting holding the most tokens that still reads back."""
    out = []
    for lang in sorted({r["lang"] for r in rows}):
        for tier in dict.fromkeys(r["tier"] for r in rows):
            for threshold in THRESHOLDS:
                ok = [r for r in rows if r["lang"] == lang and r["tier"] == tier and r["precision"] >= threshold]
                top = max(ok, key=lambda r: (r["tokens_per_page"], r["precision"]), default=None)
                out.append({"lang": lang, "tier": tier, "threshold": threshold,
                            **({k: top[k] for k in ("font_px", "line_spacing", "tokens_per_page", "compression",
                                                    "precision")} if top else {"font_px": None})})
    return out


def required(ladder: Ladder) -> dict[str, float]:
    """What a default must meet: the three sharpest views (crops aside: they only add detail) read
    back at 99%, 97% and 90%. A page spends its first hundreds of turns at the first two, and the
    default curve keeps it longest at the third (mosaic4); fainter tiers are meant to fade."""
    names = [t.name for t in ladder.tiers if not t.gone and t.crops == 0]
    return dict(zip(names, THRESHOLDS))


def recommend(rows: list[dict[str, Any]], need: dict[str, float]) -> dict[str, Any] | None:
    """The densest (font_px, line_spacing) at which every language meets ``need`` at every tier
    named there; ties go to the larger font (more margin)."""
    good = []
    for font_px, spacing in {(r["font_px"], r["line_spacing"]) for r in rows}:
        mine = [r for r in rows if (r["font_px"], r["line_spacing"]) == (font_px, spacing)]
        if all(r["precision"] >= need[r["tier"]] for r in mine if r["tier"] in need):
            held = min(r["tokens_per_page"] for r in mine)  # the language that holds least
            good.append((held, font_px, spacing))
    if not good:
        return None
    _, font_px, spacing = max(good, key=lambda g: (g[0], g[1]))
    return {"font_px": font_px, "line_spacing": spacing, "required": need,
            "tokens_per_page": {r["lang"]: r["tokens_per_page"] for r in rows
                                if (r["font_px"], r["line_spacing"]) == (font_px, spacing)}}


def table(report: dict[str, Any]) -> str:
    rows = report["rows"]
    tiers = list(dict.fromkeys(r["tier"] for r in rows))
    out = [f"{'lang':<4} {'font':>4} {'spacing':>7} {'tok/page':>8} " + " ".join(f"{t:>15}" for t in tiers),
           f"{'':<4} {'':>4} {'':>7} {'':>8} " + " ".join(f"{'x   precision':>15}" for _ in tiers)]
    for key in dict.fromkeys((r["lang"], r["font_px"], r["line_spacing"]) for r in rows):
        mine = {r["tier"]: r for r in rows if (r["lang"], r["font_px"], r["line_spacing"]) == key}
        first = next(iter(mine.values()))
        out.append(f"{key[0]:<4} {key[1]:>4} {key[2]:>7} {first['tokens_per_page']:>8} " + " ".join(
            f"{mine[t]['compression']:>6.1f} {mine[t]['precision']:>8.4f}" for t in tiers))
    out += ["", "densest setting that still reads back at >= 99 / 97 / 90% (font px/spacing: tokens a page, "
                "compression):", f"{'lang':<4} {'tier':<9} " + " ".join(f"{f'>= {t:.0%}':>24}" for t in THRESHOLDS)]
    cells = defaultdict(list)
    for d in report["densest"]:
        cells[(d["lang"], d["tier"])].append(
            f"{d['font_px']}/{d['line_spacing']}: {d['tokens_per_page']} {d['compression']:.1f}x" if d["font_px"]
            else "-")
    for (lang, tier), texts in cells.items():
        out.append(f"{lang:<4} {tier:<9} " + " ".join(f"{t:>24}" for t in texts))
    rec = report["recommended"]
    out.append("")
    out.append(f"recommended default: font_px={rec['font_px']}, line_spacing={rec['line_spacing']} "
               f"(every language >= {', '.join(f'{v:.0%} at {k}' for k, v in rec['required'].items())}; "
               f"tokens a page: {rec['tokens_per_page']})" if rec else "no setting met the requirement")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="optimem lab calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fonts", help="font sizes in px to sweep (8,10,12,14,16)")
    parser.add_argument("--spacings", help="line spacings to sweep (1.15,1.3)")
    parser.add_argument("--pages", type=int, default=1, help="pages read per language and setting")
    parser.add_argument("--tiers", help="comma-separated tiers to read (default: every tier but gone)")
    parser.add_argument("--chars", type=int, default=0,
                        help="typeset only this many characters per language, pages not full (0: full pages)")
    parser.add_argument("--backend", default="rapidocr", choices=backends.NAMES)
    parser.add_argument("--out", default="lab-report", help="folder for calibration.json")
    parser.add_argument("--quick", action="store_true",
                        help=f"the default font and spacing, the two sharpest views, one page of about "
                             f"{QUICK_CHARS} characters per language: a check that it runs (seconds), for tests")
    args = parser.parse_args(argv)
    settings = Settings.from_env(backend=args.backend)
    ladder = ladder_for(settings.family)
    try:
        tiers = tiers_named(ladder, args.tiers)
    except KeyError as exc:
        parser.error(exc.args[0])
    if args.quick:
        args.fonts = args.fonts or str(settings.font_px)
        args.spacings = args.spacings or str(settings.line_spacing)
        args.chars = args.chars or QUICK_CHARS
    args.fonts, args.spacings = args.fonts or "8,10,12,14,16", args.spacings or "1.15,1.3"
    backend = backends.load(settings)
    if args.quick and not args.tiers:  # the two sharpest views (for the CPU reader: 1024 and 768 px)
        tiers = [t for same in list(views(tiers, backend, ladder).values())[:2] for t in same]
    started = time.perf_counter()
    rows = measure(backend, ladder, [int(f) for f in args.fonts.split(",")],
                   [float(s) for s in args.spacings.split(",")], args.pages, settings.tokenizer, tiers, args.chars)
    report_tiers = [t.name for t in tiers]  # a default is judged on the tiers read, no others
    report = {"what": "how densely a page can be typeset and still read back, per tier and language",
              "machine": machine(), "reader": reader(backend, ladder).id, "family": ladder.family,
              "page_px": ladder.page_px, "tokenizer": settings.tokenizer, "pages": args.pages,
              "chars": args.chars or None, "tiers": report_tiers,
              "seconds": round(time.perf_counter() - started, 1), "rows": rows, "densest": densest(rows),
              "recommended": recommend(rows, {t: v for t, v in required(ladder).items() if t in report_tiers})}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(table(report))
    print(f"wrote {out / 'calibration.json'}", file=sys.stderr)
