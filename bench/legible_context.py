"""Context assembly under the legible-pages rule (issue 22): one command, a table.

    python bench/legible_context.py [--turns 100000] [--reps 30]

Builds a session of ``--turns`` chitchat turns (as ``bench/run.py`` does), then per budget times
``Memory.context`` and ``context.assemble`` with the rule before (no floor) and now (the floor,
older text onto pages made for the context), interleaved, and counts the pages typeset over the
repeated calls (none when nothing moved: they are cached).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import TENANT, chat, ms, pct, timed  # noqa: E402

from optimem.memory import context, context_pages  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402
from optimem.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--budgets", default="8000,4000,2000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        m = Memory(Settings(data_dir=Path(data), worker=False)).open()
        try:
            m.create_session("s", tenant=TENANT)
            turns = chat(args.turns)
            started = time.perf_counter()
            for i in range(0, args.turns, 1000):
                m.append("s", turns[i:i + 1000], tenant=TENANT)
            m.settle("s", tenant=TENANT)
            print(f"built {args.turns:,} turns in {time.perf_counter() - started:.0f} s")
            s = m._open("s", TENANT)
            kept, _ = m._kept(s)
            text = m.store.text_turns(s.k)
            making = context.Making(m.settings.recent_floor_turns, context.made_pages(
                s.k.tag, m.layout, m.settings.tokenizer, s.curve, m.ladder, s.meta.turns))
            print("| budget | Memory.context p50 | assemble before p50 | assemble now p50 | made pages | "
                  "pages typeset over the repeated calls |")
            print("|---|---|---|---|---|---|")
            for budget in [int(b) for b in args.budgets.split(",")]:
                first = m.context("s", budget=budget, tenant=TENANT)
                drawn = context_pages.CACHE.typeset_pages
                service, before, now = [], [], []
                for _ in range(args.reps):
                    service += timed(lambda: m.context("s", budget=budget, tenant=TENANT), 1)
                    before += timed(lambda: context.assemble(text, kept, budget, ladder=m.ladder), 1)
                    now += timed(lambda: context.assemble(text, kept, budget, ladder=m.ladder, making=making), 1)
                print(f"| {budget:,} | {ms(pct(service, .5)):.2f} ms | {ms(pct(before, .5)):.2f} ms | "
                      f"{ms(pct(now, .5)):.2f} ms | {first.accounting.pages_made} | "
                      f"{context_pages.CACHE.typeset_pages - drawn} |")
        finally:
            m.close()


if __name__ == "__main__":
    main()
