"""The memory inspector page: in a real browser (headless Chromium), and as plain HTML."""
from __future__ import annotations

import base64
import io
import os
import tempfile
import re
from pathlib import Path

import pytest
from PIL import Image

from optimem.api.app import create_app
from optimem.api.deps import HttpLinks
from optimem.memory.lab.corpus import longest
from tests.live import serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The README's screenshot: rewritten only when asked (OPTIMEM_SCREENSHOT=docs/inspector.png), so a
# test run leaves the tree clean.
SCREENSHOT = Path(os.environ.get("OPTIMEM_SCREENSHOT") or Path(tempfile.gettempdir()) / "optimem-inspector.png")
QUERY = "dungeons and dragons"  # said in turn 11, so on the first page


@pytest.fixture(scope="module")
def chat():
    return longest()[1][:200]  # two or three pages at recent_tokens=300


@pytest.fixture(scope="module")
def short_chat():
    return longest()[1][:100]  # one page: recall reads every page, seconds apiece on a CPU


@pytest.fixture
def keyed(memory, tenant):
    memory.settings.api_keys = f"key-{tenant}:{tenant}"
    return f"key-{tenant}"


def test_inspector_in_a_browser_shows_pages_turns_totals_and_recall(memory, tenant, keyed, short_chat):
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: run tests/browser-deps (as root: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the [test] extra)")
    memory.create_session("pal", tenant=tenant)
    memory.append("pal", short_chat, tenant=tenant)
    info, pages = memory.session("pal", tenant=tenant).model_dump(), memory.pages("pal", tenant=tenant)
    accounting = memory.context("pal", tenant=tenant).accounting.model_dump()
    assert 1 <= len(pages) <= 2

    with serve(create_app(memory)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # the browser sends the API key as the Basic auth password, on every image too
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          http_credentials={"username": "me", "password": keyed})
            page = context.new_page()
            page.set_default_timeout(180_000)  # recall reads pages with the CPU OCR
            page.goto(f"{url}/inspect")
            page.click("text=pal")
            page.wait_for_load_state("load")
            assert page.url.endswith("/inspect/pal")

            assert page.locator("#pages .page").count() == info["pages"] == len(pages)
            assert page.locator("#recent .turn").count() == info["turns"] - info["text_turns_from"]
            assert page.inner_text("#total-tokens") == str(accounting["total_tokens"])
            assert page.inner_text("#visual-tokens") == str(accounting["visual_tokens"])
            assert "dungeons and dragons" in page.inner_text("#page-0")  # the source, beside the page image
            images = page.locator("#pages img, .curve img")
            images.last.scroll_into_view_if_needed()
            page.wait_for_function("[...document.images].every(i => i.complete)")
            widths = page.eval_on_selector_all("#pages img", "els => els.map(e => e.naturalWidth)")
            assert widths == [p.px for p in pages]  # each page at its current tier, via the image endpoint
            assert page.eval_on_selector(".curve img", "e => e.naturalWidth") > 0

            page.evaluate("window.scrollTo(0, 0)")
            page.fill("input[name=q]", QUERY)
            page.click("form.recall button")
            page.wait_for_load_state("load")
            assert "q=dungeons" in page.url
            hits = page.locator("tr.hit")
            assert hits.count() >= 1
            first = hits.first.inner_text()
            assert "dungeons" in first.lower() and any(p.tier in first for p in pages)  # from a page, at its tier
            page.locator("#recall").scroll_into_view_if_needed()
            page.evaluate("window.scrollBy(0, -60)")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shot = Image.open(io.BytesIO(page.screenshot()))
            shot.convert("RGB").quantize(colors=256).save(SCREENSHOT, optimize=True)  # small enough to commit

            # The forget button on turn 11 (beside page 0's image), confirmed in the browser's dialog.
            page.once("dialog", lambda dialog: dialog.accept())
            page.locator("#page-0 #turn-11 form.forget button").click()
            page.wait_for_load_state("load")
            assert "forgotten=11" in page.url and "Turn 11 forgotten" in page.inner_text("#forgotten")
            assert "(forgotten)" in page.inner_text("#page-0 #turn-11")
            assert 11 in memory.forgotten("pal", tenant=tenant)
            assert "dungeons" not in memory.sources("pal", [11], tenant=tenant)[11]["content"]
        finally:
            browser.close()
    assert Image.open(SCREENSHOT).size == (1280, 900)


@pytest.fixture
def client(memory, keyed):
    from fastapi.testclient import TestClient

    with TestClient(create_app(memory)) as c:
        c.headers["Authorization"] = f"Bearer {keyed}"
        yield c


def test_a_session_that_keeps_no_source_shows_only_the_pages(client, memory, tenant, chat):
    memory.create_session("private", keep_source=False, tenant=tenant)
    memory.append("private", chat, tenant=tenant)
    html = client.get("/inspect/private")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    pages = [p.model_dump() for p in memory.pages("private", links=HttpLinks(""), tenant=tenant)]
    assert html.text.count('class="page"') == len(pages) >= 2
    assert html.text.count("nosource") == len(pages)
    sealed = [t["content"] for t in chat[:pages[-1]["first_turn"]]]
    assert not any(text in html.text for text in sealed if len(text) > 20)  # forgotten text is not shown
    assert all(f'{p["image_url"]}"' in html.text.replace("&amp;", "&") for p in pages)  # each at its tier now


def test_a_long_stretch_of_text_turns_shows_the_newest_and_says_how_many_are_not_shown(client, memory, tenant,
                                                                                     chat, monkeypatch):
    """A bulk import's backlog is thousands of text turns until the sealer catches up: the page
    shows the newest ``TURNS_SHOWN`` and says how many older ones it leaves out."""
    from optimem.api import inspector

    memory.create_session("backlog", tenant=tenant)
    memory.append("backlog", chat, tenant=tenant)
    text = memory.context("backlog", tenant=tenant).turns
    monkeypatch.setattr(inspector, "TURNS_SHOWN", 5)
    assert len(text) > 5
    html = client.get("/inspect/backlog").text
    shown = re.findall(r'id="turn-(\d+)"', html.split('<section id="recent">')[1])
    assert shown == [str(t.index) for t in text[-5:]]
    assert f"{len(text) - 5} older turns kept as text" in html and f"({len(text)})" in html


def test_an_unknown_session_is_a_404_page(client):
    r = client.get("/inspect/nobody")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert "no session &#39;nobody&#39;" in r.text
    assert client.get("/inspect/bad%20id!").status_code == 422


def test_the_session_list_and_the_curve_plot(client, memory, tenant, chat):
    memory.create_session("pal", curve="aggressive", tenant=tenant)
    memory.append("pal", chat, tenant=tenant)
    listing = client.get("/inspect")
    assert listing.status_code == 200 and re.search(r'href="[^"]*/inspect/pal"', listing.text)
    png = client.get("/inspect/pal/curve.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (720, 330)
    assert client.get("/inspect/nobody/curve.png").status_code == 404


def test_the_inspector_takes_the_api_key_as_basic_auth(client, keyed):
    assert client.get("/inspect", headers={"Authorization": "Bearer wrong"}).status_code == 401
    anonymous = client.get("/inspect", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
    basic = base64.b64encode(f"anyone:{keyed}".encode()).decode()
    assert client.get("/inspect", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_the_inspector_recall_runs_like_the_api_recall_in_a_slot_on_a_recall_thread(memory, tenant, keyed,
                                                                                    monkeypatch):
    """Never on the shared threadpool: it takes one of the recall slots (OPTIMEM_RECALL_CONCURRENCY)
    and says so on the page when every slot stays taken."""
    import threading

    from fastapi.testclient import TestClient

    from optimem.api import recall_slots as slots_module

    monkeypatch.setattr(slots_module, "SLOT_WAIT_S", 0.2)
    memory.settings.recall_concurrency = 1
    real, threads = memory.recall, []
    entered, release = threading.Event(), threading.Event()

    def recall(*args, **kwargs):
        threads.append(threading.current_thread().name)
        if not release.is_set():
            entered.set()
            assert release.wait(20)
        return real(*args, **kwargs)

    with TestClient(create_app(memory)) as c:
        c.headers["Authorization"] = f"Bearer {keyed}"
        c.post("/v1/sessions", json={"id": "s"})
        c.post("/v1/sessions/s/turns", json={"turns": [{"role": "user", "content": "we played chess on sunday"}]})
        monkeypatch.setattr(memory, "recall", recall)
        held = threading.Thread(target=lambda: c.post("/v1/sessions/s/recall", json={"turn": 0}))
        held.start()
        assert entered.wait(20)
        busy = c.get("/inspect/s", params={"q": "chess"})
        assert busy.status_code == 200 and "too many recalls at once" in busy.text
        release.set()
        held.join(20)
        shown = c.get("/inspect/s", params={"q": "chess"})
        assert shown.status_code == 200 and "too many recalls" not in shown.text and "sunday" in shown.text
    assert threads and all(name.startswith("optimem-recall-") for name in threads)


def test_the_forget_button_forgets_a_turn_for_an_admin_key_only_and_only_from_this_site(memory, tenant, chat):
    """The inspector's forget form: an admin key forgets the turn (as DELETE .../turns/{turn}) and
    comes back to the page, which says so; a read key sees no button and is refused; a post from
    another site (the browser's saved key riding along) is refused; a bad turn is a 422 page."""
    from fastapi.testclient import TestClient

    memory.create_session("f", tenant=tenant)
    memory.append("f", chat, tenant=tenant)
    memory.settings.api_keys = f"admin-{tenant}:{tenant},reader-{tenant}:{tenant}:read"
    with TestClient(create_app(memory), follow_redirects=False) as c:
        c.headers["Authorization"] = f"Bearer reader-{tenant}"
        assert "form class=\"forget\"" not in c.get("/inspect/f").text
        assert c.post("/inspect/f/forget", data={"turn": "11"}).status_code == 403
        c.headers["Authorization"] = f"Bearer admin-{tenant}"
        assert 'name="turn" value="11"' in c.get("/inspect/f").text
        away = c.post("/inspect/f/forget", data={"turn": "11"}, headers={"Origin": "https://elsewhere.example",
                                                                        "Sec-Fetch-Site": "cross-site"})
        assert away.status_code == 403 and 11 not in memory.forgotten("f", tenant=tenant)
        for bad in ("eleven", "", str(len(chat) + 5)):
            got = c.post("/inspect/f/forget", data={"turn": bad})
            assert got.status_code == 422 and "text/html" in got.headers["content-type"], (bad, got.text[:200])
        assert c.post("/inspect/nosuch/forget", data={"turn": "1"}).status_code == 404
        done = c.post("/inspect/f/forget", data={"turn": "11"},
                      headers={"Origin": str(c.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"})
        assert done.status_code == 303 and done.headers["location"] == "/inspect/f?forgotten=11#turn-11"
        assert memory.forgotten("f", tenant=tenant) == {11}
        shown = c.get(done.headers["location"]).text
        assert "Turn 11 forgotten" in shown and "(forgotten)" in shown
