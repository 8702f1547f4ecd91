"""Exact identifiers after fading (issue 14): one command, a table and JSON.

    python bench/identifiers.py [--settings off,serif+6_r8+mono_l0] [--per-kind 12] [--seeds 14,15]
                                [--tiers crops,g1024,v768,mosaic4,mosaic16] [--out bench/identifiers.json]

For each identifier setting (``renderer.faces.IDENT_FACES``; "off" = before: identifiers set as
prose), generated identifiers of six kinds are planted as user turns in a real chitchat
conversation, typeset with the lab's layout and read back by the CPU reader from their own line
boxes at every tier's view: exact read-back per tier and kind, character precision of ordinary
text on the first pages, text tokens per full page on real chitchat (capacity), and milliseconds to
typeset a page of it in each setting (``--render-reps``, interleaved).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from optimem.memory.lab import identifiers  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.renderer.faces import IDENT_DEFAULT  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=f"off,{IDENT_DEFAULT}",
                        help="identifier settings to compare, comma-separated (first = before)")
    parser.add_argument("--per-kind", type=int, default=12)
    parser.add_argument("--seeds", default="14,15", help="generator seeds, comma-separated (pooled at the end)")
    parser.add_argument("--tiers", default=None, help="tier names (default: all but gone)")
    parser.add_argument("--prose-pages", type=int, default=2)
    parser.add_argument("--capacity-conversations", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "identifiers.json")
    parser.add_argument("--render-reps", type=int, default=3, help="timed typesetting runs per setting (0: none)")
    parser.add_argument("--picture", type=Path, default=None,
                        help="also draw a few identifiers in each setting at 1024 and 512 px (PNG), e.g. docs/lab/identifiers.png")
    args = parser.parse_args(argv)
    if args.picture:
        identifiers.picture(args.settings.split(","), args.picture)
    tiers = args.tiers.split(",") if args.tiers else None
    reports = []
    for setting in args.settings.split(","):
        for n, seed in enumerate(int(s) for s in args.seeds.split(",")):
            start = time.perf_counter()
            report = identifiers.run(setting, seed=seed, per_kind=args.per_kind, tiers=tiers,
                                     prose_pages=args.prose_pages,
                                     # capacity is real chitchat, the same for every seed
                                     capacity_conversations=0 if n else args.capacity_conversations)
            report["seconds"] = round(time.perf_counter() - start, 1)
            reports.append(report)
            print(f"{setting} seed {seed}: {report['seconds']} s", file=sys.stderr, flush=True)
    print(identifiers.table(reports))
    print()
    print(identifiers.pooled(reports))
    speed = {}
    if args.render_reps:
        speed = identifiers.typeset_ms(args.settings.split(","), args.capacity_conversations or 300, args.render_reps)
        print(f"typesetting real chitchat, ms a page (best of {args.render_reps}, interleaved): {speed}")
    capacity = [r for r in reports if "capacity" in r]
    for r in capacity[1:]:
        loss = 1 - r["capacity"]["tokens_per_page"] / capacity[0]["capacity"]["tokens_per_page"]
        print(f"capacity {r['ident']} vs {capacity[0]['ident']}: {loss:+.2%} tokens per page lost")
    args.out.write_text(json.dumps({"machine": machine(), "reports": reports, "typeset_ms_per_page": speed}, ensure_ascii=False, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
