"""`optimem lab calibrate`: how much text a page can hold and still be read back, per tier.

Real chat text (English from chitchat-dataset, Chinese from ``lab_data/zh.txt``) is typeset at
each font size and line spacing of a sweep, and the first full page is read back by the active
reader at every view of the ladder. For each setting and tier: the text tokens the page holds
(cl100k, counted as the compactor counts a page), the compression against the tier's visual
tokens, and the character precision of the reading (1 - CER against what was typeset). Then, per
tier and language, the densest setting that still reads at >= 99%, 97% and 90%, and the default
the measurements support.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

import renderer
from memory import reading, recall as recalling, tokens
from memory.lab import machine, view_of
from memory.settings import Settings
from model import backends
from model.base import Backend
from model.tiers import Ladder, Tier, ladder as ladder_for

THRESHOLDS = (0.99, 0.97, 0.90)
ZH = Path(__file__).parent / "lab_data" / "zh.txt"


def english() -> list[dict]:
    from api.conversations import longest

    return longest()[1]


def chinese() -> list[dict]:
    """The Chinese chat paragraphs as alternating user/assistant turns, one minute apart."""
    paragraphs = [p.strip() for p in ZH.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return [{"role": ("user", "assistant")[i % 2], "content": text, "time": f"2024-07-01T09:{i % 60:02d}:00Z"}
            for i, text in enumerate(paragraphs)]


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


def page_tokens(page: renderer.Page, texts: list, tokenizer: str) -> int:
    total = 0
    for index in range(page.first_turn, page.last_turn + 1):
        turn = texts[index]
        start = page.first_offset if index == page.first_turn else 0
        end = page.end_offset if index == page.last_turn else len(turn.content)
        total += tokens.turn_tokens(turn.role, turn.content[start:end], tokenizer)
    return total


def measure(backend: Backend, ladder: Ladder, fonts: list[int], spacings: list[float], pages: int,
            tokenizer: str) -> list[dict[str, Any]]:
    languages = {"en": english(), "zh": chinese()}
    settings = [(lang, f, s) for lang in languages for f in fonts for s in spacings]
    grouped: dict[str, list[Tier]] = defaultdict(list)   # tiers that read alike, read once
    for tier in ladder.tiers:
        if not tier.gone:
            grouped[view_of(tier, backend)].append(tier)
    rows = []
    with tqdm(total=len(settings) * len(grouped) * pages, desc="reading calibration pages", unit="page") as bar:
        for lang, font_px, spacing in settings:
            layout = renderer.Layout(page_px=ladder.page_px, font_px=font_px, line_spacing=spacing)
            typeset, texts = first_full_pages(languages[lang], layout, pages)
            held = [page_tokens(p, texts, tokenizer) for p in typeset]
            for tiers in grouped.values():
                chars, errors, seconds = 0, 0.0, 0.0
                for page in typeset:
                    source = "\n".join(line.text for line in page.lines)
                    decoded = backend.decode([reading.page_view(page.png, page.lines, tiers[0], ladder.page_px)])[0]
                    n = len(recalling.squash(source))
                    chars += n
                    errors += min(n, recalling.char_error(decoded.text, source) * n)
                    seconds += decoded.seconds
                    bar.update()
                for tier in tiers:
                    per_page = sum(held) / len(held)
                    rows.append({"lang": lang, "font_px": font_px, "line_spacing": spacing, "tier": tier.name,
                                 "px": tier.px, "visual_tokens": round(tier.tokens, 2),
                                 "tokens_per_page": round(per_page), "compression": round(per_page / tier.tokens, 2),
                                 "precision": round(1 - errors / chars, 4), "chars": chars,
                                 "seconds_per_page": round(seconds / len(typeset), 2)})
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
    views = [t.name for t in ladder.tiers if not t.gone and t.crops == 0]
    return dict(zip(views, THRESHOLDS))


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
    parser.add_argument("--fonts", default="8,10,12,14,16", help="font sizes in px to sweep")
    parser.add_argument("--spacings", default="1.15,1.3", help="line spacings to sweep")
    parser.add_argument("--pages", type=int, default=1, help="full pages read per language and setting")
    parser.add_argument("--backend", default="rapidocr", choices=backends.NAMES)
    parser.add_argument("--out", default="lab-report", help="folder for calibration.json")
    parser.add_argument("--quick", action="store_true", help="one setting (12 px, 1.3): for tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.fonts, args.spacings = "12", "1.3"
    settings = Settings.from_env(backend=args.backend)
    backend = backends.load(settings.backend, settings.family, settings.model_path, settings.device,
                            settings.vllm_url)
    ladder = ladder_for(settings.family)
    started = time.perf_counter()
    rows = measure(backend, ladder, [int(f) for f in args.fonts.split(",")],
                   [float(s) for s in args.spacings.split(",")], args.pages, settings.tokenizer)
    report = {"what": "how densely a page can be typeset and still read back, per tier and language",
              "machine": machine(), "reader": reading.reader_id(backend), "family": ladder.family,
              "page_px": ladder.page_px, "tokenizer": settings.tokenizer, "pages": args.pages,
              "seconds": round(time.perf_counter() - started, 1), "rows": rows, "densest": densest(rows),
              "recommended": recommend(rows, required(ladder))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(table(report))
    print(f"wrote {out / 'calibration.json'}", file=sys.stderr)
