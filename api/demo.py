"""`optimem demo`: replay a long real conversation through the API and print what happened."""
from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Iterator

import httpx
from tqdm import tqdm

from optimem.memory.lab.corpus import longest

SESSION = "demo"


@contextlib.contextmanager
def client(url: str | None) -> Iterator[httpx.Client]:
    if url:
        with httpx.Client(base_url=url, timeout=600) as c:
            yield c
        return
    from fastapi.testclient import TestClient

    from optimem.api.app import create_app

    with TestClient(create_app(), base_url="http://optimem") as c:  # runs the app's start and stop
        yield c


def ok(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        raise SystemExit(f"optimem answered {response.status_code}: {response.text}")
    return response.json() if response.content else {}


def distinctive_word(text: str) -> str:
    """The longest word of the text: something to ask about that is not everywhere."""
    words = sorted(set(re.findall(r"[A-Za-z]{5,}", text)), key=lambda w: (-len(w), w))
    return words[0] if words else text.split()[0]


def fading_strip(png: bytes):
    """Page 0 at every tier of the active ladder, side by side at true scale, labelled."""
    from PIL import Image, ImageDraw, ImageFont

    from optimem import renderer
    from optimem.settings import Settings
    from optimem.model.tiers import ladder

    tiers = [t for t in ladder(Settings.from_env().family).tiers if not t.gone]
    views = [renderer.view(png, t.px).convert("RGB") for t in tiers]
    font = ImageFont.truetype(str(Path(renderer.__file__).parent / "fonts" / "DejaVuSans.ttf"), 28)
    strip = Image.new("RGB", (sum(v.width for v in views) + 20 * len(views), views[0].height + 50), "white")
    x = 0
    for tier, v in zip(tiers, views):
        strip.paste(v, (x, 50))
        ImageDraw.Draw(strip).text((x, 8), f"{tier.name}: {tier.tokens:g} tokens", fill="black", font=font)
        x += v.width + 20
    return strip


def sealed(c, wait: float, quiet_s: float = 2.0) -> int:
    """Pages of the session once sealing has caught up: pages are sealed just after the appends
    answer, and reads don't wait for a backlog (they serve unsealed turns as text), so the demo
    waits here until the page count has held for ``quiet_s`` (or ``wait`` runs out)."""
    deadline, last, steady = time.monotonic() + wait, -1, time.monotonic()
    with tqdm(desc="sealing pages", unit="page") as bar:
        while time.monotonic() < deadline:
            pages = ok(c.get(f"/v1/sessions/{SESSION}"))["pages"]
            if pages != last:
                bar.update(pages - max(last, 0))
                last, steady = pages, time.monotonic()
            elif pages and time.monotonic() - steady >= quiet_s:
                break
            time.sleep(0.25)
    return last


def run(url: str | None, turns: int, out: str, curve: str, wait: float) -> None:
    key, conversation = longest()
    conversation = conversation[:turns]
    print(f"Replaying chitchat conversation {key}: {len(conversation)} real turns "
          f"({conversation[0]['time']} .. {conversation[-1]['time']})")
    with client(url) as c:
        c.delete(f"/v1/sessions/{SESSION}")
        ok(c.post("/v1/sessions", json={"id": SESSION, "curve": curve}))
        started = time.perf_counter()
        for i in tqdm(range(0, len(conversation), 25), desc="appending turns", unit="batch"):
            ok(c.post(f"/v1/sessions/{SESSION}/turns", json={"turns": conversation[i:i + 25]}))
        answered_s = time.perf_counter() - started
        pages = sealed(c, wait)
        append_s = time.perf_counter() - started
        print(f"Appended in {answered_s:.1f} s (answers); {pages} pages sealed by {append_s:.1f} s "
              f"({1000 * append_s / max(1, pages):.0f} ms per sealed page, typesetting included)")

        backlog = ok(c.get("/healthz"))["jobs_backlog"]
        with tqdm(total=backlog, desc="reading pages in the background", unit="page") as bar:
            deadline = time.monotonic() + wait
            while backlog and time.monotonic() < deadline:
                time.sleep(1)
                left = ok(c.get("/healthz"))["jobs_backlog"]
                bar.total = max(bar.total, bar.n + left)
                bar.update(max(0, backlog - left))
                backlog = left

        ctx = ok(c.get(f"/v1/sessions/{SESSION}/context"))
        print()
        print(f"{'page':>4} {'turns':>11} {'tier':>9} {'px':>5} {'age':>6} {'text tok':>9} {'visual tok':>10} {'ratio':>6}")
        for p in ctx["pages"]:
            print(f"{p['page']:>4} {p['first_turn']:>5}-{p['last_turn']:<5} {p['tier']:>9} {p['px']:>5} "
                  f"{p['age']:>6.0f} {p['text_tokens']:>9} {p['visual_tokens']:>10.1f} "
                  f"{p['text_tokens'] / p['visual_tokens']:>6.1f}")
        a = ctx["accounting"]
        print(f"recent text: {len(ctx['turns'])} turns, {a['recent_text_tokens']} tokens; pages: {a['pages']} "
              f"({a['pages_forgotten']} forgotten) standing for {a['text_tokens_replaced']} text tokens at "
              f"{a['visual_tokens']} visual tokens: {a['compression']}x")
        full_text = sum(t["tokens"] for t in ctx["turns"]) + a["text_tokens_replaced"]
        print(f"context: {a['total_tokens']:.0f} tokens instead of {full_text} as plain text")

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for p in ctx["pages"]:
            for tier in ("full", p["tier"]):
                image = c.get(f"/v1/sessions/{SESSION}/pages/{p['page']}/image", params={"tier": tier})
                (folder / f"page-{p['page']:03d}-{tier}.png").write_bytes(image.content)
        if ctx["pages"]:
            full = c.get(f"/v1/sessions/{SESSION}/pages/0/image", params={"tier": "full"}).content
            fading_strip(full).save(folder / "fading.png")
        print(f"page images (full resolution and as the model sees them now, and fading.png: page 0 at "
              f"every tier) in {folder.resolve()}")

        print("\nRecall")
        oldest = ctx["pages"][0] if ctx["pages"] else {"first_turn": 0, "last_turn": 0}
        probe = distinctive_word(" ".join(t["content"] for t in conversation[oldest["first_turn"]:oldest["last_turn"] + 1]))
        asks = [("the first thing the user said", {"turn": "first", "role": "user"}),
                (f"what was said about {probe!r}", {"query": probe, "limit": 2}),
                ("turn 40", {"turn": 40})]
        for label, body in asks:
            got = ok(c.post(f"/v1/sessions/{SESSION}/recall", json=body))
            print(f"- {label} ({got['seconds']:.2f} s, {got['pages_read']} pages read):")
            for hit in got["hits"]:
                where = f"page {hit['page']} at {hit['tier']}" if hit["page"] is not None else "recent text"
                error = f", char error {hit['char_error']:.1%}" if hit.get("char_error") is not None else ""
                print(f"    turn {hit['turn']} ({hit['role']}, {where}, age {hit['age']:.0f}, "
                      f"confidence {hit['confidence']:.2f}{error})")
                print(f"      read:   {hit['text'][:110]!r}")
                if hit.get("source") is not None:
                    print(f"      source: {hit['source'][:110]!r}")
