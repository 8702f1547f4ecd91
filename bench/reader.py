"""How well and how fast the CPU reader reads whole pages back, per tier, before and after.

    python bench/reader.py [--pages N] [--configs before,after,...] [--out bench/reader.json]

Real chat text (the chitchat-dataset conversations) is typeset onto full-resolution pages, by
the project's renderer when it is importable and otherwise by a plain Pillow typesetter (DejaVu
Sans, 12 px on 1024 px). Each page is shrunk to every distinct view of the DeepSeek-OCR 2 ladder
and read whole by ``RapidOcrBackend`` in each configuration (``CONFIGS``): ``before`` is the
reader as it was (every line box read, headers included, one crop per recogniser call, one
onnxruntime thread), ``after`` the one kept; the others are the levers tried one at a time.
Reported per view and configuration: character error rate of the turns' text (the body lines;
header prefixes stripped from the decoded lines with ``memory.fragments.strip_header`` exactly as
recall and the lab do, so reading or skipping headers is compared on what readers keep;
whitespace ignored, Levenshtein distance over the source's length, summed over pages), the share
of lines given the right turn, and the median seconds per page (wall clock, and CPU seconds over
all threads). The configurations are interleaved page by page, so a busy machine slows all alike.
Prints a before/after table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from rapidfuzz.distance import Levenshtein


from optimem.model.base import LineBox, PageView  # noqa: E402
from optimem.model.rapidocr_backend import RapidOcrBackend  # noqa: E402
from optimem.model.tiers import DEEPSEEK_OCR2, Tier  # noqa: E402

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
GENERATED = {"8286bed4-2538-41c7-9dca-5d81ddc48553"}   # the dataset's machine-made filler chat


# --- chat text -------------------------------------------------------------------------------

def chat_turns(limit_chars: int) -> list[dict]:
    """Turns from chitchat-dataset conversations, in order, until about ``limit_chars`` of text.

    A turn is one speaker's run of messages (the dataset already groups them so), one message a line.
    """
    import chitchat_dataset

    with open(chitchat_dataset._PATH) as f:
        convos = json.load(f)
    turns, total = [], 0
    for key in sorted(set(convos) - GENERATED):
        convo = convos[key]
        first = None
        for group in convo["messages"]:
            first = first or group[0]["sender"]
            text = "\n".join(m["text"].strip() for m in group if m["text"].strip())
            if not text:
                continue
            role = "user" if group[0]["sender"] == first else "assistant"
            turns.append({"role": role, "time": group[0]["timestamp"], "text": text})
            total += len(text)
            if total >= limit_chars:
                return turns
    return turns


# --- typesetting (the renderer's, or a plain stand-in) -----------------------------------------

def typeset_plain(turns: list[dict], page_px: int = 1024, font_px: int = 12,
                  margin: int = 24) -> list[tuple[Image.Image, list[LineBox]]]:
    """Pillow stand-in for renderer.typeset: a header line per turn, then its text, word-wrapped."""
    font = ImageFont.truetype(FONT, font_px)
    bold = ImageFont.truetype(FONT.replace("Sans.ttf", "Sans-Bold.ttf"), font_px)
    step = round(font_px * 1.45)
    width = page_px - 2 * margin
    pages: list[tuple[Image.Image, list[LineBox]]] = []
    image = draw = None
    lines: list[LineBox] = []
    y = page_px

    def put(text: str, turn: int, kind: str, face: ImageFont.FreeTypeFont) -> None:
        nonlocal image, draw, lines, y
        if y + step > page_px - margin:
            image = Image.new("RGB", (page_px, page_px), "white")
            draw = ImageDraw.Draw(image)
            lines = []
            pages.append((image, lines))
            y = margin
        draw.text((margin, y), text, font=face, fill="black")
        lines.append(LineBox(turn, (margin, y, margin + round(draw.textlength(text, font=face)), y + step),
                             text, kind))
        y += step

    for i, turn in enumerate(turns):
        put(f"#{i} {turn['role']} · {turn['time'][:16].replace('T', ' ')}", i, "header", bold)
        for para in turn["text"].split("\n"):
            line = ""
            for word in para.split():
                trial = f"{line} {word}".strip()
                if line and font.getlength(trial) > width:
                    put(line, i, "text", font)
                    line = word
                else:
                    line = trial
            if line:
                put(line, i, "text", font)
    return pages


def typeset(turns: list[dict], font_px: int) -> tuple[str, int, list[tuple[Image.Image, list[LineBox]]]]:
    """(typesetter used, page px, pages as (image, line boxes)): the renderer's when it is there."""
    try:
        from optimem import renderer
        layout = renderer.Layout(page_px=DEEPSEEK_OCR2.page_px, font_px=font_px)
        texts = [renderer.TurnText(i, t["role"], t["text"], t["time"]) for i, t in enumerate(turns)]
        pages = renderer.typeset(texts, layout)
    except (ImportError, AttributeError):
        return "pillow-stand-in", 1024, typeset_plain(turns, 1024, font_px)
    return "renderer", layout.page_px, [(renderer.view(p.png, layout.page_px), list(p.lines)) for p in pages]


def view(image: Image.Image, lines: list[LineBox], tier: Tier, page_px: int) -> PageView:
    """The page shrunk to the tier's view (by the renderer when present), its boxes scaled alike."""
    try:
        from optimem import renderer
        return PageView(renderer.view(_png(image), tier.px), tier, renderer.scale_lines(lines, page_px, tier.px))
    except (ImportError, AttributeError):
        k = tier.px / page_px
        shrunk = image if tier.px == page_px else image.resize((tier.px, tier.px), Image.LANCZOS)
        return PageView(shrunk, tier, [LineBox(l.turn, tuple(round(v * k) for v in l.box), l.text, l.kind)
                                       for l in lines])


def _png(image: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# --- the run ---------------------------------------------------------------------------------

# name -> RapidOcrBackend keyword arguments
CONFIGS: dict[str, dict] = {
    "before": {"headers": True, "batch": 1, "threads": 1},
    "no-headers": {"headers": False, "batch": 1, "threads": 1},
    "no-headers+batch8": {"headers": False, "batch": 8, "threads": 1},
    "no-headers+2threads": {"headers": False, "batch": 1, "threads": 2},
    "no-headers+openvino": {"headers": False, "batch": 1, "threads": 1, "engine": "openvino"},
    "page-mode": {"mode": "page", "threads": 1},
    "after": {},            # the defaults: what the service runs
}
DEFAULT_CONFIGS = "before,after,no-headers+batch8,no-headers+2threads,no-headers+openvino"


def body(decoded_lines: list, lines: list[LineBox]) -> str:
    """The turns' text of a reading: header prefixes stripped as recall does it."""
    from optimem.memory.fragments import strip_header

    heads: dict[int, list[str]] = {}
    for line in lines:
        if line.kind == "header":
            heads.setdefault(line.turn, []).append(line.text)
    kept = []
    for got in decoded_lines:
        line = strip_header({"text": got.text}, heads.get(got.turn, []) if got.turn is not None
                            else [h for hs in heads.values() for h in hs])
        if line:
            kept.append(line["text"])
    return "\n".join(kept)


def readers(names: list[str]) -> dict[str, RapidOcrBackend]:
    out = {}
    for name in names:
        try:
            out[name] = RapidOcrBackend(**CONFIGS[name])
            out[name]._load()
        except Exception as exc:  # noqa: BLE001  (an engine not installed here: say so, go on)
            print(f"skipped {name}: {exc}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=3, help="pages to read (default 3)")
    parser.add_argument("--font", type=int, default=12, help="font px for the stand-in typesetter")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"of: {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args(argv)

    turns = chat_turns(limit_chars=args.pages * 6000)
    typesetter, page_px, pages = typeset(turns, args.font)
    pages = pages[:args.pages]
    views = sorted({t.px: t for t in DEEPSEEK_OCR2.tiers if not t.gone}.values(), key=lambda t: -t.px)
    chosen = readers(args.configs.split(","))
    for reader in chosen.values():     # warm up outside the timings
        reader.decode([view(pages[0][0], pages[0][1], views[-1], page_px)])

    load_before = os.getloadavg()
    rows = []
    for tier in views:
        runs: dict[str, list[dict]] = {name: [] for name in chosen}
        for image, lines in pages:
            page_view = view(image, lines, tier, page_px)
            text_lines = [l for l in lines if l.kind != "header"]
            source = squash("\n".join(l.text for l in text_lines))
            for name, reader in chosen.items():    # interleaved: all see the same machine load
                started = time.process_time()
                got = reader.decode([page_view])[0]
                runs[name].append({"edits": Levenshtein.distance(squash(body(got.lines, lines)), source),
                                   "chars": len(source), "right": _turns_right(got.lines, lines),
                                   "read": len(got.lines), "wall": got.seconds, "cpu": time.process_time() - started})
        for name, done in runs.items():
            total = {k: sum(r[k] for r in done) for k in ("edits", "chars", "right", "read")}
            rows.append({"px": tier.px, "tiers": [t.name for t in DEEPSEEK_OCR2.tiers if t.px == tier.px],
                         "config": name, "cer": total["edits"] / max(1, total["chars"]),
                         "turn_accuracy": total["right"] / max(1, total["read"]),
                         "seconds_per_page": statistics.median(r["wall"] for r in done),
                         "cpu_seconds_per_page": statistics.median(r["cpu"] for r in done),
                         "pages": len(done), "chars": total["chars"], "lines_read": total["read"]})
            r = rows[-1]
            print(f"{tier.px:>5} px  {name:<22} CER {100 * r['cer']:7.2f}%  turns {100 * r['turn_accuracy']:6.1f}%"
                  f"  {r['seconds_per_page']:6.2f} s/page ({r['cpu_seconds_per_page']:.2f} CPU-s)", flush=True)

    report = {
        "what": "rapidocr whole-page read-back of typeset chat pages, per DeepSeek-OCR 2 view and configuration",
        "typesetter": typesetter, "font_px": args.font, "page_px": page_px, "pages": len(pages),
        "configs": {name: {"kwargs": CONFIGS[name], "revision": r.revision, "threads": r.threads, "batch": r.batch}
                    for name, r in chosen.items()},
        "cpus": os.cpu_count(), "machine": platform.platform(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    print()
    print(table(rows))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return report


def _turns_right(decoded: list, lines: list[LineBox]) -> int:
    """How many decoded lines carry the turn of a typeset line they read most like (short lines
    such as "lol" recur across turns, so any of the equally close ones counts)."""
    right = 0
    for got in decoded:
        distance = {i: Levenshtein.normalized_distance(squash(got.text), squash(l.text)) for i, l in enumerate(lines)}
        best = min(distance.values())
        right += any(got.turn == lines[i].turn for i, d in distance.items() if d == best)
    return right


def table(rows: list[dict]) -> str:
    """One row per view: seconds per page and CER per configuration, ``before`` first."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    head = "| view px | tiers | " + " | ".join(f"{c} s/page | {c} CER" for c in configs) + " |"
    out = [head, "|" + "---|" * (2 + 2 * len(configs))]
    for px in dict.fromkeys(r["px"] for r in rows):
        cells = []
        for c in configs:
            r = next(r for r in rows if r["px"] == px and r["config"] == c)
            cells += [f"{r['seconds_per_page']:.2f}", f"{100 * r['cer']:.2f}%"]
        tiers = next(r["tiers"] for r in rows if r["px"] == px)
        out.append(f"| {px} | {', '.join(tiers)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
