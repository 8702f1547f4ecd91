"""The recall question set's sessions, rebuilt the same way every time (``bench/recall.py`` reads
them with ``bench/data/recall_questions.jsonl``):

    python bench/recall_set.py --show 0      # print session 0's turns (index, time, role, text)

Six long sessions, each three real chitchat-dataset conversations of 80-140 turns (taken in key
order) appended one after another, as if the same two people talked again a month later: the
second conversation's times are moved 30 days on, the third's 60 (each keeps its own minutes).
Sessions 0, 2 and 4 give the speakers names as roles (how a two-person chat is often imported);
1, 3 and 5 keep ``user``/``assistant`` (first speaker is the user). The seventh session is the
Chinese lab text (``memory/lab/data/zh.txt``, 22 turns, as the lab and the tests use it).

The questions were written by reading these turns: each points at its evidence turn(s).
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from optimem.memory.lab.corpus import chinese, conversations

QUESTIONS = Path(__file__).resolve().parent / "data" / "recall_questions.jsonl"
NAMES = {0: ("Maya", "Leo"), 2: ("Priya", "Tom"), 4: ("Ana", "Sam")}
PER_SESSION = 3
GAP = timedelta(days=30)
START = datetime(2024, 3, 5, 19, 0, tzinfo=timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def sessions() -> dict[str, list[dict]]:
    """session name -> its turns ({role, content, time}), in order."""
    picked = [turns for _, turns in conversations(min_turns=80) if len(turns) <= 140][:6 * PER_SESSION]
    out: dict[str, list[dict]] = {}
    for s in range(6):
        turns = []
        for j, conv in enumerate(picked[s * PER_SESSION:(s + 1) * PER_SESSION]):
            t0 = _parse(conv[0]["time"])
            for t in conv:
                role = NAMES[s][t["role"] != "user"] if s in NAMES else t["role"]
                turns.append({"role": role, "content": t["content"],
                              "time": _iso(START + j * GAP + (_parse(t["time"]) - t0))})
        out[f"chat{s}"] = turns
    out["zh"] = chinese()
    return out


def questions() -> list[dict]:
    return [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--show", help="session to print (chat0..chat5, zh)")
    ap.add_argument("--min-words", type=int, default=0)
    args = ap.parse_args()
    all_ = sessions()
    if args.show is None:
        for name, turns in all_.items():
            print(name, len(turns), turns[0]["time"], turns[-1]["time"])
        return
    for i, t in enumerate(all_[args.show]):
        if len(t["content"].split()) >= args.min_words:
            print(f"{i} {t['time'][5:10]} {t['role']}: {t['content']}")


if __name__ == "__main__":
    main()
