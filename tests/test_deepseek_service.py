"""OPTIMEM_BACKEND=deepseek-ocr2 through the same API as the CPU reader, on a tiny random checkpoint:
visual tokens are encoded by workers from the job stream, cached in Redis, served as embeddings,
and recall decodes from them. Proves the plumbing and token counts, not reading accuracy."""
from __future__ import annotations

import base64

import pytest
import torch
from fastapi.testclient import TestClient

from optimem.api.app import create_app
from optimem.memory.lab.corpus import longest
from optimem.memory import jobs
from optimem.memory.service import Memory
from optimem.memory.store import JOBS, SessionKeys
from optimem.model.visual_tokens import VisualTokens
from tests.conftest import settings_for
from tests.tiny_deepseek import tiny_deepseek_dir  # noqa: F401  (session fixture)


@pytest.fixture
def memory(redis_server, tmp_path, tiny_deepseek_dir, monkeypatch):
    """The GPU backend on the tiny checkpoint, on CPU; conftest's ``api`` fixture serves it."""
    settings = settings_for(redis_server, tmp_path, backend="deepseek-ocr2", model_path=str(tiny_deepseek_dir),
                            device="cpu", dtype="bfloat16")
    m = Memory(settings).open()
    m.backend.max_new_tokens = 12   # random weights ramble; keep decoding short
    yield m
    m.close()


def drain(memory: Memory) -> int:
    worker = jobs.Worker(memory.store.r, memory.handle_job, name="test")
    done = 0
    while (n := worker.run_once(block_ms=10)):
        done += n
    return done


def test_pages_are_encoded_by_workers_and_served_as_embeddings(api, memory, tenant):
    api.post("/v1/sessions", json={"id": "gpu", "curve": {"kind": "step", "steps": [[0, "g1024"], [60, "v768"]]}})
    api.post("/v1/sessions/gpu/turns", json={"turns": longest()[1][:200]})
    assert drain(memory) >= 2
    k = SessionKeys(tenant, "gpu")
    ctx = api.get("/v1/sessions/gpu/context", params={"format": "embeddings"}).json()
    by_tier = {image["tier"]: image for image in ctx["images"]}
    assert by_tier["g1024"]["n_tokens"] == 257 and by_tier["v768"]["n_tokens"] == 145
    for image in ctx["images"]:
        tokens = VisualTokens.from_bytes(base64.b64decode(image["safetensors_base64"]))
        assert tokens.tensor.dtype == torch.bfloat16 and tokens.n_tokens == image["n_tokens"]
        cached = memory.store.cached_tokens(k, image["unit"], image["tier"], memory.backend.revision)
        assert torch.equal(VisualTokens.from_bytes(cached).tensor, tokens.tensor)  # the worker's cache is served
    images = [seg for seg in ctx["layout"] if seg["type"] == "image"]
    assert [seg["n_tokens"] for seg in images] == [image["n_tokens"] for image in ctx["images"]]
    served = api.get("/v1/sessions/gpu/context", params={"format": "embeddings", "images": "url"}).json()
    raw = api.get(served["images"][0]["tokens_url"])
    assert raw.headers["content-type"] == "application/octet-stream"
    assert VisualTokens.from_bytes(raw.content).n_tokens == served["images"][0]["n_tokens"]


def test_a_page_read_decodes_from_cached_tokens_like_from_pixels(api, memory, tenant):
    api.post("/v1/sessions", json={"id": "dec", "curve": "keep"})
    api.post("/v1/sessions/dec/turns", json={"turns": longest()[1][:120]})
    drain(memory)
    k = SessionKeys(tenant, "dec")
    crops = memory.ladder["crops"]
    from_pixels = memory.backend.decode([memory.reader.view(k, 0, crops)])[0].text
    assert memory.reader.decoded(k, 0, crops)["text"] == from_pixels
    assert memory.store.cached_decoded(k, 0, "crops", memory.reader.id)["text"] == from_pixels


def test_recall_of_one_turn_reads_only_its_lines(api, memory, tenant):
    """The GPU backend reads a turn like the CPU reader does: its line boxes, cropped from the page
    at the page's tier, as one small view (decode_lines), cached per turn; the page is not read."""
    from optimem.model.base import PageView
    from optimem.renderer import scale_lines, view

    api.post("/v1/sessions", json={"id": "one", "curve": "keep"})
    api.post("/v1/sessions/one/turns", json={"turns": longest()[1][:120]})
    got = api.post("/v1/sessions/one/recall", json={"turn": 1}).json()
    hit = got["hits"][0]
    assert hit["page"] == 0 and hit["tier"] == "crops" and 0 <= hit["confidence"] <= 1
    k = SessionKeys(tenant, "one")
    crops = memory.ladder["crops"]
    cached = memory.store.cached_decoded(k, 0, "crops:t1", memory.reader.id)
    assert cached is not None and memory.store.cached_decoded(k, 0, "crops", memory.reader.id) is None
    lines = scale_lines(memory.reader.turn_lines(k, 0, 1), memory.ladder.page_px, crops.px)
    direct = memory.backend.decode_lines([PageView(view(memory.store.png(k, 0), crops.px), crops, lines)])[0]
    assert cached["text"] == direct.text and cached["text"]
    assert {line["turn"] for line in cached["lines"]} == {1}


def test_the_worker_sends_encode_jobs_of_one_tier_as_one_batch(memory, tenant):
    memory.create_session("many", curve="keep", tenant=tenant)
    memory.append("many", longest()[1][:400], tenant=tenant)   # several pages, one encode job each
    r = memory.store.r
    waiting = jobs.backlog(r)
    assert waiting >= 3
    lane = memory.backend._lanes["encode"]
    lane.window_s = 0.5     # the worker's jobs start together; a CPU this slow needs the room
    worker = jobs.Worker(r, memory.handle_job, name="batcher", batch=8)
    try:
        assert worker.run_once(block_ms=10) == waiting
    finally:
        lane.window_s = 0.005
    # one batch of stored pages, their views made on the device (encode_pages)
    assert (("pages", "crops", (1024, 1024)), waiting) in lane.batches and jobs.backlog(r) == 0


def test_the_worker_makes_views_on_the_device_with_the_tokens_of_pil_views(memory, tenant, monkeypatch):
    """Encode jobs hand the backend the stored pages (encode_pages): the view of each tier, a mosaic
    canvas too, is made on the model's device, and the cached tokens are those of the view
    renderer.view / renderer.mosaic make with PIL (encode), exactly."""
    from optimem.memory.reading import canvas, token_unit
    from optimem.model.base import PageView

    curve = {"kind": "step", "steps": [[0, "g1024"], [100, "v768"], [200, "mosaic4"]]}
    memory.create_session("dv", curve=curve, tenant=tenant)
    memory.append("dv", longest()[1][:400], tenant=tenant)
    made = []
    monkeypatch.setattr(memory.backend, "encode", lambda views: made.append(views) or [])   # PIL views: not made
    drain(memory)
    monkeypatch.undo()
    assert made == []
    k = SessionKeys(tenant, "dv")
    placed = {p.tier.name: p.record.page for p in memory._kept(memory._open("dv", tenant))[0]}
    assert {"g1024", "v768", "mosaic4"} <= set(placed)
    for name, page in placed.items():
        tier = memory.ladder[name]
        cache_as = memory.backend.revision
        if tier.per_canvas > 1:
            cache_as += ":" + memory.store.canvas_generation(k, range(page // 4 * 4, page // 4 * 4 + 4))
        cached = memory.store.cached_tokens(k, token_unit(page, tier), name, cache_as)
        assert cached is not None, f"{name}: no tokens cached by the worker"
        if tier.per_canvas > 1:
            view = PageView(canvas(memory.store.pngs(k, range(page // 4 * 4, page // 4 * 4 + 4)), tier), tier)
        else:
            view = memory.reader.view(k, page, tier)
        by_pil_view = memory.backend.encode([view])[0]
        assert torch.equal(VisualTokens.from_bytes(cached).tensor, by_pil_view.tensor), name


def test_a_corrupted_token_entry_is_recomputed_not_served(api, memory, tenant):
    api.post("/v1/sessions", json={"id": "bad", "curve": "keep"})
    api.post("/v1/sessions/bad/turns", json={"turns": longest()[1][:120]})
    drain(memory)
    k = SessionKeys(tenant, "bad")
    key = k.token_cache("0", "crops", memory.backend.revision)
    good = memory.store.r.get(key)
    broken = bytearray(good)
    broken[-5] ^= 0xFF
    memory.store.r.set(key, bytes(broken))
    got = api.get("/v1/sessions/bad/tokens/0", params={"tier": "crops"})
    assert got.status_code == 200
    recomputed = VisualTokens.from_bytes(got.content).tensor
    assert torch.equal(recomputed, VisualTokens.from_bytes(good).tensor)
    assert torch.equal(VisualTokens.from_bytes(memory.store.r.get(key)).tensor, recomputed)
    assert memory.store.r.ttl(key) > 0


def test_a_job_left_by_a_dead_worker_is_claimed_by_another(memory, tenant):
    memory.create_session("claim", curve="keep", tenant=tenant)
    memory.append("claim", longest()[1][:240], tenant=tenant)   # >= 2 pages: one encode job each (keep-source)
    r = memory.store.r
    dead = r.xreadgroup(jobs.GROUP, "dead-worker", {JOBS: ">"}, count=100)   # takes the jobs, then dies
    taken = len(dead[0][1])
    assert taken >= 2 and jobs.backlog(r) >= taken
    live = jobs.Worker(r, memory.handle_job, name="live", claim_after_ms=0)
    done = 0
    while (n := live.run_once(block_ms=10)):
        done += n
    assert done >= taken and jobs.backlog(r) == 0
    assert memory.store.cached_tokens(SessionKeys(tenant, "claim"), "0", "crops", memory.backend.revision)


def test_embeddings_need_the_gpu_backend(redis_server, reader, tmp_path):
    with Memory(settings_for(redis_server, tmp_path), backend=reader) as cpu, TestClient(create_app(cpu)) as c:
        c.post("/v1/sessions", json={"id": "cpu"})
        r = c.get("/v1/sessions/cpu/context", params={"format": "embeddings"})
        assert r.status_code == 422 and "OPTIMEM_BACKEND=deepseek-ocr2" in r.json()["detail"]


def test_a_mosaic_canvas_that_gains_a_page_is_encoded_again(memory, tenant):
    """A mosaic group's canvas tokens are cached per pages drawn on it: a group encoded while it
    had one page is encoded again once more pages join it (never served with the new pages missing)."""
    from optimem.memory.reading import canvas
    from optimem.model.base import PageView

    curve = {"kind": "step", "steps": [[0, "mosaic4"]]}
    memory.create_session("grow", curve=curve, tenant=tenant)
    chat = longest()[1]
    k = SessionKeys(tenant, "grow")
    memory.append("grow", chat[:100], tenant=tenant)
    assert memory.store.seal_state(k)[1] == 1           # one page sealed: group 0 holds one page
    first = memory.reader.encoded(k, 0, memory.ladder["mosaic4"])
    memory.append("grow", chat[100:300], tenant=tenant)
    assert memory.store.seal_state(k)[1] >= 4
    drain(memory)
    tier = memory.ladder["mosaic4"]
    now = memory.reader.encoded(k, 0, tier)
    full = memory.backend.encode([PageView(canvas(memory.store.pngs(k, range(4)), tier), tier)])[0]
    assert torch.equal(now.tensor, full.tensor) and not torch.equal(first.tensor, full.tensor)
    ctx = memory.context("grow", format="embeddings", tenant=tenant)       # what a model is sent
    served = next(image for image in ctx.images if image.unit == "m0")
    assert torch.equal(VisualTokens.from_bytes(base64.b64decode(served.safetensors_base64)).tensor, full.tensor)


def test_a_mosaic_canvas_is_one_encode_job_not_one_per_page(memory, tenant):
    """Retiering sends one encode job per mosaic canvas (its pages noted as queued all the same,
    so the next append sends none for them again), and one per page at the other tiers."""
    r = memory.store.r
    drain(memory)                                    # what earlier tests left
    curve = {"kind": "step", "steps": [[0, "g1024"], [120, "mosaic4"]]}
    memory.create_session("onejob", curve=curve, tenant=tenant)
    memory.append("onejob", longest()[1][:600], tenant=tenant)
    k = SessionKeys(tenant, "onejob")
    entries = [{key.decode(): value.decode() for key, value in fields.items()}
               for _, fields in r.xrange(JOBS) if fields[b"session"] == b"onejob"]
    placed = memory._kept(memory._open("onejob", tenant))[0]
    mosaic = [p.record.page for p in placed if p.tier.name == "mosaic4"]
    groups = {page // 4 for page in mosaic}
    assert len(mosaic) > len(groups) >= 2
    sent = [(e["tier"], int(e["page"])) for e in entries if e["kind"] == "encode"]
    assert sorted(page for tier, page in sent if tier == "mosaic4") == \
        sorted(max(page for page in mosaic if page // 4 == group) for group in groups)   # each canvas's newest page
    assert sorted(page for tier, page in sent if tier == "g1024") == \
        sorted(p.record.page for p in placed if p.tier.name == "g1024")
    assert {int(page): tier.decode() for page, tier in r.hgetall(k.queued).items()} == \
        {p.record.page: p.tier.name for p in placed}
    drain(memory)
    for group in groups:                             # every canvas encoded, once
        assert memory.store.cached_tokens(k, f"m{group}", "mosaic4", memory.backend.revision + ":" +
                                          memory.store.canvas_generation(k, range(group * 4, group * 4 + 4)))


def test_callers_asking_for_the_same_unencoded_page_together_share_one_encode(memory, tenant, monkeypatch):
    """A context call and a worker job (here: four threads) asking for a page's visual tokens at
    once run the encoder once in this process; all get the same tokens."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    memory.create_session("shared", curve="keep", tenant=tenant)
    memory.append("shared", longest()[1][:120], tenant=tenant)
    k = SessionKeys(tenant, "shared")
    crops = memory.ladder["crops"]
    real, calls, lock = memory.backend.encode_pages, [], threading.Lock()

    def slow(stacks):
        with lock:
            calls.append(len(stacks))
        time.sleep(0.5)                 # the others arrive while this one runs
        return real(stacks)

    monkeypatch.setattr(memory.backend, "encode_pages", slow)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: memory.reader.encoded(k, 0, crops), range(4)))
    assert calls == [1]
    assert all(torch.equal(g.tensor, got[0].tensor) for g in got)
    assert memory.reader._encoding == {}
