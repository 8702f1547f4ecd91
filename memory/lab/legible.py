"""`optimem lab --legible`: how much of a conversation a budgeted context shows legibly.

Presence is not legibility: a page in the context at mosaic16 is there, and the CPU reader gets a
quarter of its characters back. So each tier's character precision is measured once, on a sample
of pages read at every view (reading every page at every tier a budget puts it at takes hours on
two cores), and a turn counts as legible when the context holds it as text or on a page (sealed,
or made for the context) at a tier whose measured precision is >= ``LEGIBLE`` (97%); a planted
fact likewise, by the turn that states it. Per conversation, curve and budget: under the rule now
(``Memory.context``'s: a floor of recent turns, older text onto pages before pages fade below
legible), the rule before (recent text first, then fade), and a plain window of the budget
(truncation). Contexts come from ``context.assemble``, the function the service uses.

Conversations: chitchat's longest (sparse: ~15 tokens a turn) and denser ones made of the same
real chat, ``--dense`` utterances joined into a turn (~90 tokens at 6, closer to assistant chat),
cut to the lengths asked for (``--lengths``, 700 and 1,600 turns by default).
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from optimem.memory import context
from optimem.memory.lab import run as lab
from optimem.memory.lab.common import machine
from optimem.memory.lab.corpus import conversations, longest
from optimem.memory.service import Memory
from optimem.settings import Settings

LEGIBLE = 0.97
RULES = {"legible": "floor of recent turns, older text onto pages before pages fade below legible (issue 22)",
         "fade": "recent text first, then pages fade, then drop (issue 11)"}


def dense_chat(turns: int, per: int) -> list[dict]:
    """``turns`` turns of real chitchat, ``per`` consecutive utterances joined into each."""
    raw = [t for _, chat in conversations(limit=max(50, turns * per // 15)) for t in chat]
    return [{"role": ("user", "assistant")[i % 2], "content": " ".join(t["content"] for t in raw[i * per:(i + 1) * per]),
             "time": raw[i * per]["time"]} for i in range(min(turns, len(raw) // per))]


def chats(lengths: list[int], per: int) -> list[tuple[str, list[dict]]]:
    out = [("longest", longest()[1])]
    out += [(f"dense{per}x{n}", dense_chat(n, per)) for n in lengths]
    return out


def tier_precision(memory: Memory, rep: lab.Replayed, pages: int) -> dict[str, dict[str, Any]]:
    """Each tier's character precision on ``pages`` sample pages read at every view (once per view)."""
    sample = lab.sample_of(rep.pages, pages)
    views = [t for t in memory.ladder.tiers if not t.gone]
    readings = lab.read_pages(memory, rep, {r.page: {t.name for t in views} for r in sample})
    out = {}
    for tier in views:
        got = [readings[(r.page, memory.reader.cache_key(tier))] for r in sample]
        chars = sum(s.chars for g in got for s in g.spans)
        errors = sum(s.errors for g in got for s in g.spans)
        out[tier.name] = {"precision": round(1 - errors / chars, 4) if chars else None, "pages": len(sample),
                          "seconds_per_page": round(sum(g.seconds for g in got) / max(1, len(got)), 2)}
    return out


def shown(built: context.Assembled, legible: set[str]) -> set[int]:
    """Turns the context holds legibly: as text, or on a page at a legible tier."""
    out = {t.index for t in built.turns}
    for p in built.pages:
        if p.tier.name in legible:
            out.update(s["index"] for s in p.record.turns)
    return out


def measure(memory: Memory, rep: lab.Replayed, curves: list, budgets: list[int], legible: set[str],
            floor: int) -> list[dict[str, Any]]:
    count = len(rep.turns)
    plain = lab.plain_turns(rep, memory.settings.tokenizer)
    facts = {x.index for x in rep.needles}
    rows = []
    for name, curve in curves:
        placed = context.place(rep.pages, curve, memory.ladder, count)
        making = context.Making(floor, context.made_pages(rep.k.tag, memory.layout, memory.settings.tokenizer,
                                                          curve, memory.ladder, count))
        for budget in budgets:
            for rule, how in (("legible", making), ("fade", None)):
                started = time.perf_counter()
                built = context.assemble(rep.text, placed, budget, ladder=memory.ladder, making=how)
                ms = (time.perf_counter() - started) * 1000
                seen = shown(built, legible)
                a = built.accounting
                tiers: defaultdict[str, int] = defaultdict(int)
                for p in built.pages:
                    tiers[p.tier.name] += len({s["index"] for s in p.record.turns})
                rows.append({"conversation": rep.key, "turns": count, "curve": name, "budget": budget, "rule": rule,
                             "legible": round(len(seen) / count, 4),
                             "facts": [len(seen & facts), len(facts)], "tokens": a.total_tokens,
                             "text_turns": len(built.turns), "turns_by_tier": dict(tiers),
                             "pages_made": a.pages_made, "turns_moved": a.turns_moved_to_pages,
                             "faded": a.pages_faded_by_budget, "dropped": a.dropped_pages, "ms": round(ms, 1)})
        for budget in budgets:
            if name == curves[0][0]:
                kept = {t.index for t in context.assemble(plain, [], budget).turns}
                rows.append({"conversation": rep.key, "turns": count, "curve": "", "budget": budget,
                             "rule": "truncation", "legible": round(len(kept) / count, 4),
                             "facts": [len(kept & facts), len(facts)], "tokens": budget})
    return rows


def table(report: dict[str, Any]) -> str:
    out = ["tier precision (CPU reader, sample pages read at every view; legible: >= "
           f"{LEGIBLE:.0%}):", "  " + "  ".join(f"{t} {v['precision']}" for t, v in report["tiers"].items()), "",
           "share of turns shown legibly (text, or a page at a legible tier), facts legible; "
           "now = floor + text onto pages, before = text first then fade",
           f"{'conversation':<14} {'turns':>5} {'curve':<10} {'budget':>6} | {'now':>6} {'facts':>5} {'made':>4} "
           f"{'moved':>5} | {'before':>6} {'facts':>5} | {'trunc':>6} {'facts':>5}"]
    rows = report["rows"]
    index = {(r["conversation"], r["curve"], r["budget"], r["rule"]): r for r in rows}
    for r in rows:
        if r["rule"] != "legible":
            continue
        before = index[(r["conversation"], r["curve"], r["budget"], "fade")]
        trunc = index.get((r["conversation"], "", r["budget"], "truncation"))
        out.append(f"{r['conversation']:<14} {r['turns']:>5} {r['curve']:<10} {r['budget']:>6} | {r['legible']:>6.1%} "
                   f"{r['facts'][0]:>2}/{r['facts'][1]:<2} {r['pages_made']:>4} {r['turns_moved']:>5} | "
                   f"{before['legible']:>6.1%} {before['facts'][0]:>2}/{before['facts'][1]:<2} | "
                   + (f"{trunc['legible']:>6.1%} {trunc['facts'][0]:>2}/{trunc['facts'][1]:<2}" if trunc else ""))
    floors = report.get("floors") or []
    if floors:
        out += ["", f"the rule now with other floors (curve {rows[0]['curve']}): turns legible / text turns kept",
                f"{'conversation':<14} {'budget':>6} " + " ".join(f"{'floor ' + str(f):>14}" for f in
                                                                [report['settings']['recent_floor_turns']] + floors)]
        for r in rows:
            if r["rule"] != "legible" or r["curve"] != rows[0]["curve"]:
                continue
            cells = [r] + [index.get((r["conversation"], r["curve"], r["budget"], f"floor{f}")) for f in floors]
            out.append(f"{r['conversation']:<14} {r['budget']:>6} " + " ".join(
                f"{c['legible']:>7.1%} {c['text_turns']:>5}  " if c else f"{'-':>14}" for c in cells))
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["conversation"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False, sharey=True)
    styles = {"legible": "-", "fade": "-.", "truncation": "--"}
    report = {**report, "rows": [r for r in report["rows"] if r["rule"] in styles]}
    for ax, name in zip(axes[0], names):
        mine = [r for r in report["rows"] if r["conversation"] == name]
        for key in dict.fromkeys((r["curve"], r["rule"]) for r in mine):
            pts = sorted((r["budget"], r["legible"]) for r in mine if (r["curve"], r["rule"]) == key)
            label = "truncation" if key[1] == "truncation" else f"{key[0]} ({'now' if key[1] == 'legible' else 'before'})"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[key[1]], marker="o", ms=3, label=label)
        ax.set_title(f"{name} ({mine[0]['turns']} turns)", fontsize=9)
        ax.set_xlabel("budget (tokens)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"turns shown legibly (>= {LEGIBLE:.0%} characters)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="optimem lab --legible", description=__doc__.split("\n\n")[0])
    parser.add_argument("--legible", action="store_true")
    parser.add_argument("--budgets", default="2000,4000,8000,16000")
    parser.add_argument("--curves", default="default,detailed,exponential")
    parser.add_argument("--lengths", default="700,1600", help="dense conversations of these many turns")
    parser.add_argument("--dense", type=int, default=6, help="chitchat utterances joined into one turn")
    parser.add_argument("--needles", type=int, default=12)
    parser.add_argument("--sample-pages", type=int, default=3, help="pages read at every view for tier precision")
    parser.add_argument("--precision", help="reuse the tier precision of an earlier legible.json (no page read)")
    parser.add_argument("--floors", default="", help="also score the rule now with these recent-text floors "
                                                     "(turns, comma-separated; the setting is always scored)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="lab-report")
    args = parser.parse_args(argv)
    budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    rng = random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="optimem-lab-") as data:
        settings = Settings.from_env(data_dir=Path(data), redis_url="", worker=False, backend="rapidocr",
                                     redis_maxmemory="0", seal_background=False)
        memory = Memory(settings).open()
        try:
            curves = lab.parse_curves(args.curves, memory)
            rows, convs = [], []
            tiers = json.loads(Path(args.precision).read_text())["tiers"] if args.precision else None
            floors = sorted({int(f) for f in args.floors.split(",") if f.strip()} - {settings.recent_floor_turns})
            for n, (key, turns) in enumerate(chats([int(x) for x in args.lengths.split(",") if x], args.dense)):
                planted, needles = lab.plant(turns, args.needles, rng)
                rep = lab.replay(memory, key, f"l{n}", planted, needles)
                if tiers is None:   # measured once, on the first conversation, and reused for all
                    tiers = tier_precision(memory, rep, args.sample_pages)
                legible = {t for t, v in tiers.items() if (v["precision"] or 0) >= LEGIBLE}
                rows += measure(memory, rep, curves, budgets, legible, settings.recent_floor_turns)
                for floor in floors:   # the rule now with another floor: its rows only
                    rows += [dict(r, rule=f"floor{floor}") for r in measure(memory, rep, curves[:1], budgets, legible,
                                                                             floor) if r["rule"] == "legible"]
                convs.append({"key": key, "turns": len(rep.turns), "pages": len(rep.pages), "text_turns": len(rep.text)})
        finally:
            memory.close()
    report = {"what": "share of turns and facts a budgeted context shows legibly, per rule, curve and budget",
              "machine": machine(), "seconds": round(time.perf_counter() - started, 1), "legible": LEGIBLE,
              "settings": {"recent_tokens": settings.recent_tokens, "recent_floor_turns": settings.recent_floor_turns,
                           "font_px": settings.font_px, "dense": args.dense, "seed": args.seed, "budgets": budgets,
                           "curves": {name: c.spec for name, c in curves}, "rules": RULES},
              "tiers": tiers, "precision_from": args.precision, "floors": floors, "conversations": convs,
              "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "legible.json").write_text(json.dumps(report, indent=1))
    picture = plot(report, out / "legible.png")
    print(table(report))
    print(f"wrote {out / 'legible.json'} and {picture}")
