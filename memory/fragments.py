"""What a read of a page gives of each turn on it: the decoded lines of the turn, its typeset
header line ("user 19:38:") taken off, with the reader's mean confidence."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rapidfuzz import fuzz

from optimem.memory.store import SessionKeys, Store


@dataclass
class Fragment:
    """What one page (or the recent text) holds of one turn."""
    turn: int
    role: str
    time: str
    page: int | None          # None: still plain text
    tier: str                 # "text" for recent turns
    age: float
    start: int
    end: int
    decoded: str = ""
    score: float = 1.0        # the reader's confidence


def strip_header(line: dict, heads: list[str]) -> dict | None:
    """The typeset header ("user 19:38:") is not the turn's text. A reader of line boxes sees it
    alone (drop it); a reader of whole rows sees it in front of the text (cut it off)."""
    text = line["text"]
    for head in heads:
        if len(text) >= len(head) + 2 and fuzz.ratio(text[:len(head)], head) > 80:
            return {**line, "text": text[len(head):].lstrip()}
        if fuzz.ratio(text, head) > 80:
            return None
    return line


def fragments_from_decoded(spans: list[dict], decoded: dict | None, headers: dict[int, list[str]],
                           page: int, tier: str, age: float) -> list[Fragment]:
    by_turn: dict[int, list[dict]] = {}
    for line in (decoded or {}).get("lines", []):
        if line.get("turn") is not None:
            by_turn.setdefault(line["turn"], []).append(line)
    out = []
    for span in spans:
        lines = by_turn.get(span["index"], [])
        body = [line for line in (strip_header(l, headers.get(span["index"], [])) for l in lines) if line]
        scores = [l["score"] for l in body] or [0.0]
        out.append(Fragment(span["index"], span["role"], span["time"], page, tier, age, span["start"],
                            span["end"], "\n".join(l["text"] for l in body), sum(scores) / len(scores)))
    return out


def headers_of(store: Store, k: SessionKeys, page: int) -> dict[int, list[str]]:
    """The typeset header lines ("user 19:38:") of each turn on a page."""
    headers: dict[int, list[str]] = defaultdict(list)
    for t_index, _, line_text, kind in store.lines(k, page):
        if kind == "header":
            headers[t_index].append(line_text)
    return headers
