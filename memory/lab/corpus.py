"""Real conversations for the lab (and the demo, the tests and the benchmarks): the
chitchat-dataset package (7,168 human chats), a user's own JSONL, and the Chinese chat text the
calibration typesets (``data/zh.txt``, shipped with the package)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

DATA = Path(__file__).parent / "data"
ZH = DATA / "zh.txt"


def chitchat() -> dict:
    import chitchat_dataset

    return json.loads(Path(chitchat_dataset._PATH).read_text())


def chitchat_turns(conversation: dict) -> list[dict]:
    """One turn per utterance; the first speaker is 'user', the other 'assistant'."""
    speakers: list[str] = []
    turns = []
    for group in conversation["messages"]:
        for message in group:
            if message["sender"] not in speakers:
                speakers.append(message["sender"])
            role = "user" if speakers.index(message["sender"]) == 0 else "assistant"
            if message["text"].strip():
                turns.append({"role": role, "content": message["text"], "time": message["timestamp"]})
    return turns


# The dataset's longest chat is machine-made filler ("The purple pasta talked softly.", 2,895 times).
GENERATED = {"8286bed4-2538-41c7-9dca-5d81ddc48553"}


def longest() -> tuple[str, list[dict]]:
    """The human conversation with the most turns (1,580)."""
    data = chitchat()
    best = max(sorted(set(data) - GENERATED), key=lambda key: sum(len(g) for g in data[key]["messages"]))
    return best, chitchat_turns(data[best])


def conversations(limit: int | None = None, min_turns: int = 0) -> Iterator[tuple[str, list[dict]]]:
    data = chitchat()
    count = 0
    for key in sorted(set(data) - GENERATED):
        turns = chitchat_turns(data[key])
        if len(turns) >= min_turns:
            yield key, turns
            count += 1
            if limit is not None and count >= limit:
                return


def jsonl_turns(path: Path) -> list[dict]:
    """A user's own conversation: one {role, content, time?} object per line."""
    turns = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                turns.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON ({exc.msg})") from None
    return turns


def english() -> list[dict]:
    """The English chat the calibration typesets: the longest human chitchat conversation."""
    return longest()[1]


def chinese() -> list[dict]:
    """The Chinese chat paragraphs as alternating user/assistant turns, one minute apart."""
    paragraphs = [p.strip() for p in ZH.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return [{"role": ("user", "assistant")[i % 2], "content": text, "time": f"2024-07-01T09:{i % 60:02d}:00Z"}
            for i, text in enumerate(paragraphs)]
