"""Page images without a model (issue 19 item 3) and mosaic canvases drawn once (issue 25 item 9).

Images mode (``format=openai``) and the page and mosaic image routes need only the stored PNGs:
they never construct the model backend. A mosaic canvas is cached by (session, group, tier, its
pages' generation): a second context call draws none, a page joining the group draws it anew."""
from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from optimem.api.app import create_app
from optimem.memory import reading
from optimem.memory.lab.corpus import longest
from optimem.memory.service import Memory
from optimem.model import backends
from tests.conftest import settings_for


@pytest.fixture
def no_model(redis_server, tmp_path, monkeypatch):
    """A Memory whose backend factory refuses (and notes every thread that asked)."""
    asked: list[str] = []

    def refuse(settings):
        asked.append(threading.current_thread().name)
        raise RuntimeError("no model backend in this test")

    monkeypatch.setattr(backends, "load", refuse)
    m = Memory(settings_for(redis_server, tmp_path)).open()
    yield m, asked
    m.close(stop_server=False)


def test_images_mode_and_image_routes_never_load_the_model_backend(no_model, tenant):
    m, asked = no_model
    m.settings.api_keys = f"key-{tenant}:{tenant}"
    with TestClient(create_app(m)) as api:
        api.headers["Authorization"] = f"Bearer key-{tenant}"
        api.post("/v1/sessions", json={"id": "pics"}).raise_for_status()
        api.post("/v1/sessions/pics/turns", json={"turns": longest()[1][:200]}).raise_for_status()
        assert api.get("/v1/sessions/pics").json()["pages"] >= 2
        openai = api.get("/v1/sessions/pics/context", params={"format": "openai"})
        assert openai.status_code == 200, openai.text[:300]
        parts = [p for msg in openai.json()["messages"] if isinstance(msg["content"], list) for p in msg["content"]]
        assert any(p["type"] == "image_url" for p in parts)
        linked = api.get("/v1/sessions/pics/context", params={"format": "openai", "images": "url"})
        assert linked.status_code == 200, linked.text[:300]
        for path in ("/v1/sessions/pics/pages/0/image", "/v1/sessions/pics/pages/0/image?tier=full",
                     "/v1/sessions/pics/pages/1/image?tier=g1024", "/v1/sessions/pics/mosaics/mosaic4/0/image"):
            got = api.get(path)
            assert got.status_code == 200 and got.content.startswith(b"\x89PNG"), (path, got.status_code, got.text[:200])
    assert m._backend is None
    assert all(name == "optimem-load-reader" for name in asked), asked    # only the start-up warm-up tried


def test_a_second_context_draws_no_mosaic_canvas_until_a_page_joins_the_group(memory, tenant, monkeypatch):
    m = memory
    drawn: list[int] = []
    real = reading.canvas

    def counted(pngs, tier):
        drawn.append(len(pngs))
        return real(pngs, tier)

    monkeypatch.setattr(reading, "canvas", counted)
    chat = longest()[1]
    m.create_session("mosaic", tenant=tenant)
    m.append("mosaic", chat[:200], tenant=tenant)
    pages = m.session("mosaic", tenant=tenant).pages
    assert 1 <= pages < 4                             # group 0 of mosaic4, not full yet
    first = m.context("mosaic", format="openai", tenant=tenant)
    assert drawn == [pages]
    again = m.context("mosaic", format="openai", tenant=tenant)
    assert drawn == [pages] and again.messages == first.messages     # nothing moved: nothing drawn
    assert m.mosaic_image("mosaic", "mosaic4", 0, tenant=tenant) and drawn == [pages]
    while m.session("mosaic", tenant=tenant).pages == pages:         # a page joins group 0
        m.append("mosaic", chat[200:260], tenant=tenant)
        chat = chat[:200] + chat[260:]
    third = m.context("mosaic", format="openai", tenant=tenant)
    assert drawn[-1] == pages + 1 and third.messages != first.messages
    m.context("mosaic", format="openai", tenant=tenant)
    assert drawn[-1] == pages + 1 and len(drawn) == 2
