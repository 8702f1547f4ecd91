"""DeepSeek-OCR 2 backend on a tiny random checkpoint (CPU), and the vLLM reader against a real
local HTTP server. The tiny model proves token counts, caching and the decode path, not accuracy."""
from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image, ImageDraw

from optimem.model import backends
from optimem.model.base import Backend, DecodedLine, LineBox, ModelUnavailable, PageView, attribute_turns
from optimem.model.deepseek_ocr2 import (
    DeepseekOcr2Backend,
    NoRepeatNGramWindow,
    encoder_view,
    weights_revision,
)
from optimem.model.tiers import DEEPSEEK_OCR2 as LADDER
from optimem.model.visual_tokens import CorruptTokens, VisualTokens
from optimem.model.vllm_reader import VllmReader
from optimem.settings import Settings
from tests.tiny_deepseek import tiny_deepseek_dir  # noqa: F401  (session fixture)

NEW_TOKENS = 24


def page(px: int, text: str = "hello world 123") -> Image.Image:
    im = Image.new("RGB", (px, px), "white")
    draw = ImageDraw.Draw(im)
    for row in range(0, px - 20, 24):
        draw.text((8, 8 + row), f"{text} {row}", fill="black")
    return im


def view(tier: str, text: str = "hello world 123") -> PageView:
    t = LADDER[tier]
    return PageView(page(t.canvas_px or t.px, text), t)


@pytest.fixture(scope="module")
def backend(tiny_deepseek_dir):
    """Loaded the way a user loads it: by name, from the environment's settings, on an explicit CPU."""
    env = {"OPTIMEM_BACKEND": "deepseek-ocr2", "OPTIMEM_MODEL_PATH": str(tiny_deepseek_dir),
           "OPTIMEM_DEVICE": "cpu", "OPTIMEM_DTYPE": "bfloat16"}
    b = backends.load(Settings.from_env(env))
    b.max_new_tokens = NEW_TOKENS   # random weights loop; keep the tests short
    return b


def test_backend_meets_the_interface(backend):
    assert isinstance(backend, Backend)
    assert backend.name == "deepseek-ocr2" and backend.ladder is LADDER
    assert backend.dtype == torch.bfloat16 and backend.device.type == "cpu"


def test_each_tier_costs_its_ladder_tokens(backend):
    tiers = ["crops", "g1024", "v768", "mosaic4", "mosaic16"]
    tokens = backend.encode([view(t) for t in tiers])
    assert [(vt.tier, tuple(vt.tensor.shape)) for vt in tokens] == [
        ("crops", (833, 32)), ("g1024", (257, 32)), ("v768", (145, 32)), ("mosaic4", (257, 32)),
        ("mosaic16", (257, 32))]
    assert all(vt.tensor.dtype == torch.bfloat16 and vt.revision == backend.revision for vt in tokens)
    assert [vt.n_tokens for vt in tokens] == [LADDER[t].canvas_tokens for t in tiers]


def test_encode_batches_by_tier_and_keeps_the_callers_order(backend):
    backend.batch_size = 2
    try:
        order = ["v768", "g1024", "v768", "v768", "g1024"]
        assert [vt.tier for vt in backend.encode([view(t) for t in order])] == order
    finally:
        backend.batch_size = 8


def test_a_single_mosaic_cell_is_read_at_mosaic_scale(backend):
    tier = LADDER["mosaic4"]
    cell = page(tier.px)
    shown = encoder_view(cell, tier)
    assert shown.size == (tier.canvas_px, tier.canvas_px)
    assert shown.crop((0, 0, tier.px, tier.px)).tobytes() == cell.tobytes()
    assert backend.encode([PageView(cell, tier)])[0].n_tokens == 257


def test_visual_tokens_round_trip_bf16_exactly(backend):
    vt = backend.encode([view("v768")])[0]
    back = VisualTokens.from_bytes(vt.to_bytes())
    assert back.tensor.dtype == torch.bfloat16 and back.tensor.shape == vt.tensor.shape
    assert back.tensor.view(torch.uint8).numpy().tobytes() == vt.tensor.view(torch.uint8).numpy().tobytes()
    assert (back.tier, back.revision) == ("v768", backend.revision)


def test_corrupt_visual_tokens_are_caught():
    data = bytearray(VisualTokens(torch.randn(145, 32).to(torch.bfloat16), "v768", "r1").to_bytes())
    flipped = bytearray(data)
    flipped[-3] ^= 0x01                     # one bit in the tensor data
    with pytest.raises(CorruptTokens, match="checksum"):
        VisualTokens.from_bytes(bytes(flipped))
    for bad in (bytes(data[: len(data) // 2]), b"", b"not safetensors at all"):
        with pytest.raises(CorruptTokens):
            VisualTokens.from_bytes(bad)


def test_decode_from_cached_tokens_equals_decode_from_pixels(backend):
    """Cached tokens (through bytes) give the decoder the same input as transformers' own pixel path."""
    from transformers import GenerationConfig

    views = [view("g1024", "alpha"), view("g1024", "omega")]
    cached = [VisualTokens.from_bytes(vt.to_bytes()) for vt in backend.encode(views)]
    ids_cached, _ = backend.generate_ids([vt.tensor for vt in cached])

    pixels = backend.processor.image_processor([v.image for v in views], return_tensors="pt",
                                               crop_to_patches=False, tile_size=1024)
    prompt = backend.prompt_ids(257)
    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS,
                              pad_token_id=backend.tokenizer.pad_token_id)
    with torch.inference_mode():
        out = backend.model.generate(input_ids=prompt.expand(2, -1), attention_mask=torch.ones(2, prompt.shape[0]),
                                     pixel_values=pixels["pixel_values"].to(torch.bfloat16),
                                     generation_config=config)
    ids_pixels = out[:, prompt.shape[0]:].tolist()
    for a, b in zip(ids_cached, ids_pixels):   # ours stops at end of sequence; the reference does not
        assert a == b[: len(a)] and len(a) > 0

    by_pixels = backend.decode(views)
    by_tokens = backend.decode_tokens(cached)
    assert [d.text for d in by_tokens] == [d.text for d in by_pixels]
    assert all(0.0 < line.score <= 1.0 for d in by_tokens for line in d.lines)


def test_crop_tier_decodes_from_cache_like_from_pixels(backend):
    v = view("crops")
    cached = VisualTokens.from_bytes(backend.encode([v])[0].to_bytes())
    assert backend.decode_tokens([cached])[0].text == backend.decode([v])[0].text


def test_tokens_of_another_revision_are_refused(backend):
    vt = backend.encode([view("v768")])[0]
    vt.revision = "someone-else"
    with pytest.raises(ValueError, match="revision"):
        backend.decode_tokens([vt])


def test_ngram_guard_bans_what_would_repeat_an_ngram_in_the_window():
    prompt = [7, 7, 7]                             # the prompt is never looked at
    loop = [10, 11, 12, 13] * 3                    # generated: a loop of period 4
    ids = torch.tensor([prompt + loop])
    guard = NoRepeatNGramWindow(ngram_size=4, window_size=20, prompt_length=3)
    scores = guard(ids, torch.zeros(1, 20))
    # prefix (11, 12, 13) was followed by 10 before: 10 is banned, nothing else
    assert torch.isinf(scores[0, 10]) and torch.isfinite(scores[0]).sum() == 19
    assert torch.isfinite(NoRepeatNGramWindow(4, 20, 3, whitelist=[10])(ids, torch.zeros(1, 20))).all()
    # the earlier occurrence slid out of a small window: nothing banned
    spaced = torch.tensor([prompt + [11, 12, 13, 10] + [20] * 8 + [11, 12, 13]])
    assert torch.isfinite(NoRepeatNGramWindow(4, 8, 3)(spaced, torch.zeros(1, 21))).all()
    assert torch.isinf(NoRepeatNGramWindow(4, 20, 3)(spaced, torch.zeros(1, 21))[0, 10])
    with pytest.raises(ValueError):
        NoRepeatNGramWindow(1, 10, 0)


def repeats(ids: list[int], n: int, window: int) -> bool:
    """Does any n-gram occur twice within ``window`` tokens?"""
    for end in range(n, len(ids) + 1):
        gram, start = ids[end - n:end], max(0, end - window)
        if any(ids[i:i + n] == gram for i in range(start, end - n)):
            return True
    return False


def test_ngram_guard_ends_a_decoding_loop(tiny_deepseek_dir):
    """The random decoder loops; with the guard in the real generate loop, no 4-gram repeats."""
    tokens = None
    runs = {}
    for label, n, window in (("guarded", 4, 40), ("unguarded", 64, 64)):   # 64 > new tokens: never fires
        b = DeepseekOcr2Backend(tiny_deepseek_dir, device="cpu", dtype="bfloat16", max_new_tokens=40,
                                ngram_size=n, ngram_window=window)
        tokens = tokens or b.encode([view("v768")])[0]
        runs[label] = b.generate_ids([tokens.tensor])[0][0]
    assert repeats(runs["unguarded"], 4, 40), "the tiny model no longer loops; pick another seed"
    assert not repeats(runs["guarded"], 4, 40)


def test_decoded_lines_are_attributed_to_turns():
    boxes = [LineBox(3, (0, 0, 1, 1), "#3 user 10:02"), LineBox(3, (0, 0, 1, 1), "what is the capital of France"),
             LineBox(4, (0, 0, 1, 1), "#4 assistant 10:03"), LineBox(4, (0, 0, 1, 1), "Paris, since 987 or so")]
    lines = [DecodedLine("what is the capita1 of France", 0.9), DecodedLine("Paris, since 987 or s0", 0.8),
             DecodedLine("zzzz", 0.1)]
    attribute_turns(lines, boxes)
    assert [line.turn for line in lines] == [3, 4, 4]


def test_missing_weights_name_the_setting(tmp_path, tiny_deepseek_dir, monkeypatch):
    monkeypatch.setenv("OPTIMEM_MODEL_PATH", str(tiny_deepseek_dir))   # never read: settings come in
    with pytest.raises(ModelUnavailable, match="OPTIMEM_MODEL_PATH is not set"):
        DeepseekOcr2Backend(device="cpu")
    with pytest.raises(ModelUnavailable, match="OPTIMEM_MODEL_PATH=.*not a directory"):
        DeepseekOcr2Backend(tmp_path / "nowhere", device="cpu")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"OPTIMEM_MODEL_PATH=.*lacks .*\*\.safetensors"):
        DeepseekOcr2Backend(tmp_path, device="cpu")


def test_no_cuda_means_no_start_unless_cpu_is_asked_for(tiny_deepseek_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("OPTIMEM_DEVICE", "cpu")   # never read: settings come in
    with pytest.raises(ModelUnavailable, match="OPTIMEM_DEVICE=cpu") as err:
        DeepseekOcr2Backend(tiny_deepseek_dir)
    assert "OPTIMEM_BACKEND=rapidocr" in str(err.value)
    with pytest.raises(ModelUnavailable, match="OPTIMEM_BACKEND=rapidocr"):
        DeepseekOcr2Backend(tiny_deepseek_dir, device="cuda")


def test_revision_survives_a_copy_and_changes_with_the_weights(tiny_deepseek_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_deepseek_dir, copy)
    assert weights_revision(copy) == weights_revision(tiny_deepseek_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert weights_revision(copy) != weights_revision(tiny_deepseek_dir)


# --- vLLM reader -------------------------------------------------------------------------------

class _Server:
    """A real HTTP server on 127.0.0.1 that answers like vLLM's OpenAI API and records requests."""

    def __init__(self, status: int = 200):
        self.requests: list[dict] = []
        self.listed = 0   # GET /v1/models calls
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict):
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                server.listed += 1
                self._send(200, {"object": "list", "data": [{"id": "deepseek-ai/DeepSeek-OCR-2"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body,
                                        "authorization": self.headers.get("Authorization")})
                if status != 200:
                    return self._send(status, {"error": {"message": "boom"}})
                n = len(server.requests)
                text = f"page {n} line one\npage {n} line two"
                pieces = [f"page {n}", " line one", "\n", f"page {n}", " line two"]
                self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "logprobs": {"content": [{"token": p, "logprob": -0.1}
                                                                       for p in pieces]}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def vllm_server():
    s = _Server()
    yield s
    s.close()


def test_vllm_reader_sends_the_recipe_request(vllm_server):
    reader = backends.load(Settings(backend="vllm", vllm_url=vllm_server.url + "/v1"))
    assert isinstance(reader, Backend) and reader.name == "vllm"
    assert reader.model == reader.revision == "deepseek-ai/DeepSeek-OCR-2"   # asked the server
    out = reader.decode([view("v768"), view("g1024")])
    assert [d.text.splitlines()[1] for d in out] in (["page 1 line two", "page 2 line two"],
                                                      ["page 2 line two", "page 1 line two"])
    assert all(len(d.lines) == 2 and d.lines[0].score == pytest.approx(0.905, abs=1e-3) for d in out)
    sizes = set()
    for req in vllm_server.requests:
        assert req["path"] == "/v1/chat/completions"
        body = req["body"]
        assert body["model"] == "deepseek-ai/DeepSeek-OCR-2" and body["temperature"] == 0
        assert body["vllm_xargs"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
        image_part, text_part = body["messages"][0]["content"]
        assert text_part == {"type": "text", "text": "Free OCR."}
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        sizes.add(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size)
    assert sizes == {(768, 768), (1024, 1024)}
    with pytest.raises(NotImplementedError):
        reader.encode([view("v768")])


def test_vllm_reader_takes_model_and_key_from_settings(vllm_server):
    reader = backends.load(Settings(backend="vllm", vllm_url=vllm_server.url, vllm_model="served-ocr",
                                    vllm_api_key="sekrit"))
    assert reader.model == reader.revision == "served-ocr" and vllm_server.listed == 0   # did not ask
    reader.decode([view("v768")])
    (req,) = vllm_server.requests
    assert req["body"]["model"] == "served-ocr" and req["authorization"] == "Bearer sekrit"


def test_vllm_reader_errors_are_clear(monkeypatch):
    monkeypatch.setenv("OPTIMEM_VLLM_URL", "http://127.0.0.1:9")   # never read: settings come in
    with pytest.raises(ModelUnavailable, match="OPTIMEM_VLLM_URL"):
        VllmReader()
    with pytest.raises(ModelUnavailable, match="OPTIMEM_VLLM_URL=http://127.0.0.1:9"):
        VllmReader("http://127.0.0.1:9", timeout=2)
    failing = _Server(status=500)
    try:
        reader = VllmReader(failing.url, model="m")
        with pytest.raises(RuntimeError, match="500"):
            reader.decode([view("v768")])
    finally:
        failing.close()


# --- issue 20: device pixels, compiled encoder, static cache, one-turn reads, lanes ------------

def _processor_pixels(backend, images, tier):
    if tier.crops:
        kwargs = dict(crop_to_patches=True, min_patches=tier.crops, max_patches=tier.crops,
                      size={"height": tier.px, "width": tier.px})
    else:
        kwargs = dict(crop_to_patches=False, tile_size=tier.canvas_px or tier.px)
    return backend.processor.image_processor(images, return_tensors="pt", **kwargs)


@pytest.mark.parametrize("tier", ["g1024", "v768", "mosaic4", "mosaic16"])
def test_device_pixels_equal_the_pil_processor_where_nothing_is_resized(backend, tier):
    from optimem.model import pixels

    t = LADDER[tier]
    images = [encoder_view(page(t.px, f"page {i}"), t) for i in range(2)]   # a mosaic cell goes on its canvas
    ref = _processor_pixels(backend, images, t)
    glob, local, n_local = pixels.encoder_input(images, pixels.Shown(t.canvas_px or t.px), torch.device("cpu"),
                                                torch.float32)
    assert local is None and n_local == [0, 0]
    assert torch.equal(glob, ref["pixel_values"])


def test_device_pixels_stay_within_the_stated_bound_where_a_resize_happens(backend):
    """A 1024 page shown at 768, and the crops tier's 1536 px upsample: PIL resizes in fixed point,
    torch in float; the bound in model/pixels.py (max 0.12, mean 1e-3 after normalization)."""
    from optimem.model import pixels

    cpu = torch.device("cpu")
    images = [page(1024, f"page {i}") for i in range(2)]
    ref = _processor_pixels(backend, images, LADDER["v768"])
    glob, _, _ = pixels.encoder_input(images, pixels.Shown(768), cpu, torch.float32)
    diff = (glob - ref["pixel_values"]).abs()
    assert glob.shape == (2, 3, 768, 768) and diff.max() <= 0.12 and diff.mean() <= 1e-3

    ref = _processor_pixels(backend, images, LADDER["crops"])
    glob, local, n_local = pixels.encoder_input(images, pixels.Shown(1024, 4), cpu, torch.float32)
    assert torch.equal(glob, ref["pixel_values"]) and n_local == [4, 4]
    diff = (local - ref["pixel_values_local"]).abs()
    assert local.shape == (8, 3, 768, 768) and diff.max() <= 0.12 and diff.mean() <= 1e-3
    # a page that is not square is padded with the processor's grey, centred
    wide = [page(1024).resize((1024, 600))]
    assert torch.equal(pixels.encoder_input(wide, pixels.Shown(1024), cpu, torch.float32)[0],
                       _processor_pixels(backend, wide, LADDER["g1024"])["pixel_values"])


def test_device_pixels_give_the_pil_processors_visual_tokens(backend):
    views = [view(t) for t in ("g1024", "v768", "mosaic4", "crops")]
    backend.pixels = "pil"
    try:
        by_pil = backend.encode(views)
    finally:
        backend.pixels = "device"
    by_device = backend.encode(views)
    assert [vt.n_tokens for vt in by_device] == [LADDER[v.tier.name].canvas_tokens for v in views]
    for a, b in zip(by_device[:3], by_pil[:3]):
        assert torch.equal(a.tensor, b.tensor)
    assert (by_device[3].tensor.float() - by_pil[3].tensor.float()).abs().max() < 0.05   # crops: resized locals


def test_static_and_dynamic_caches_give_the_same_ids(backend):
    feats = [vt.tensor for vt in backend.encode([view("g1024", "alpha"), view("g1024", "beta"), view("g1024", "x")])]
    backend.decode_batch_size = 4   # three views: padded to the bucket of 4 with the static cache
    try:
        dynamic = backend.generate_ids(feats, static_cache=False)
        static = backend.generate_ids(feats, static_cache=True)
    finally:
        backend.decode_batch_size = 4
    assert static[0] == dynamic[0] and len(static[0]) == 3 and all(len(ids) > 0 for ids in static[0])
    assert [[round(p, 3) for p in ps] for ps in static[1]] == [[round(p, 3) for p in ps] for ps in dynamic[1]]


def test_the_ngram_guard_holds_with_the_static_cache(tiny_deepseek_dir):
    b = DeepseekOcr2Backend(tiny_deepseek_dir, device="cpu", dtype="bfloat16", max_new_tokens=40,
                            ngram_size=4, ngram_window=40, static_cache=True)
    ids = b.generate_ids([b.encode([view("v768")])[0].tensor], static_cache=True)[0][0]
    assert len(ids) > 8 and not repeats(ids, 4, 40)


def test_compiled_encoder_is_warmed_at_start_and_never_compiles_on_a_request(tiny_deepseek_dir, caplog):
    """CPU: dynamo traces and guards with its "eager" backend, as inductor would on a GPU."""
    import logging

    from torch._dynamo.utils import counters

    b = DeepseekOcr2Backend(tiny_deepseek_dir, device="cpu", dtype="bfloat16", max_new_tokens=8,
                            batch_size=2, compile=True, static_cache=False)
    b.compile_backend = "eager"
    eager = [vt.tensor for vt in b.encode([view("g1024", "a"), view("v768", "b")])]
    with caplog.at_level(logging.INFO, logger="optimem.model.deepseek_ocr2"):
        seconds = b.warm()
    assert sorted(b._compiled) == [768, 1024] and seconds["compile_1024"] > 0 and not b.warming
    assert "encoder at 1024 px compiled and warmed in" in caplog.text
    graphs = counters["stats"]["unique_graphs"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = b.encode([view("g1024", "a"), view("v768", "b")])                 # batch 1: padded to 2
        three = b.encode([view("g1024", "a"), view("g1024", "c"), view("g1024", "d")])   # 3: padded to 4
    assert counters["stats"]["unique_graphs"] == graphs and "compiled on a request" not in caplog.text
    assert [torch.equal(vt.tensor, e) for vt, e in zip(got, eager)] == [True, True]
    assert torch.equal(three[0].tensor, eager[0]) and [vt.n_tokens for vt in three] == [257] * 3


def test_a_failing_compile_falls_back_to_the_eager_encoder_with_a_log_line(tiny_deepseek_dir, caplog):
    import logging

    b = DeepseekOcr2Backend(tiny_deepseek_dir, device="cpu", dtype="bfloat16", compile=True, static_cache=False)
    b.compile_backend = "no-such-backend"
    with caplog.at_level(logging.WARNING, logger="optimem.model.deepseek_ocr2"):
        b.warm()
    assert not b._compiled and "the eager encoder runs" in caplog.text
    assert b.encode([view("v768")])[0].n_tokens == 145


def turn_view(tier: str = "g1024") -> PageView:
    t = LADDER[tier]
    boxes = [LineBox(5, (8, 8 + 24 * k, 300, 22 + 24 * k), f"line {k}") for k in (3, 4)]
    return PageView(page(t.px, "turn text"), t, boxes)


def test_one_turn_reads_its_lines_as_one_small_view(backend):
    """decode_lines = the lines cropped at the page's tier onto a 768 canvas, encoded (145 tokens)
    and decoded with a budget for two lines: the same text as decoding that crop by hand."""
    from optimem.model.line_crop import line_crop

    v = turn_view()
    crop = line_crop(v)
    assert crop.px == 768 and crop.max_new_tokens < 200
    # the lines' box (8..300 x 80..118) and a 4 px margin, moved to the top left, unscaled, on white
    assert crop.image.crop((0, 0, 300, 46)).tobytes() == v.image.crop((4, 76, 304, 122)).tobytes()
    assert crop.image.crop((300, 46, 768, 768)).getextrema() == ((255, 255),) * 3
    (got,) = backend.decode_lines([v])
    tokens = backend.encode([PageView(crop.image, LADDER["v768"])])[0]
    ids, _ = backend.generate_ids([tokens.tensor], max_new_tokens=crop.max_new_tokens)
    assert got.text == backend.tokenizer.decode(ids[0], skip_special_tokens=True).strip() and got.text
    assert got.lines and all(line.turn == 5 and 0.0 < line.score <= 1.0 for line in got.lines)
    assert backend.decode_lines([PageView(v.image, v.tier, [])])[0].text == ""
    assert backend.reads_line_subsets


def test_lanes_batch_callers_from_many_threads_by_tier(backend):
    from concurrent.futures import ThreadPoolExecutor

    lane = backend._lanes["encode"]
    lane.window_s = 0.5   # generous: the four callers below arrive well within it
    try:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda text: backend.encode([view("v768", text)])[0], ["a", "b", "c", "d"]))
    finally:
        lane.window_s = 0.005
    assert lane.batches[-1] == ("v768", 4) and [vt.n_tokens for vt in got] == [145] * 4


def test_a_lane_never_waits_for_another():
    import threading
    import time as clock

    from optimem.model.batching import Lane

    release = threading.Event()
    slow = Lane("page", lambda key, items: (release.wait(5), items)[1], max_batch=4)
    fast = Lane("turn", lambda key, items: [i * 2 for i in items], max_batch=4)
    threading.Thread(target=slow.call, args=("k", [1]), daemon=True).start()
    clock.sleep(0.05)
    start = clock.monotonic()
    assert fast.call("k", [1, 2]) == [2, 4] and clock.monotonic() - start < 1.0
    release.set()
    with pytest.raises(ZeroDivisionError):
        Lane("x", lambda key, items: [1 / 0], max_batch=1).call("k", [0])


def test_vllm_reader_reads_one_turn_from_a_crop(vllm_server):
    reader = VllmReader(vllm_server.url, model="m")
    assert reader.reads_line_subsets
    (got,) = reader.decode_lines([turn_view()])
    assert got.text and all(line.turn == 5 for line in got.lines)
    body = vllm_server.requests[0]["body"]
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (768, 768)
    assert body["max_tokens"] < 200
    assert reader.decode_lines([PageView(page(1024), LADDER["g1024"], [])])[0].text == ""
    assert len(vllm_server.requests) == 1


def test_device_normalization_matches_the_processors_arithmetic_at_every_level():
    import numpy as np

    from optimem.model import pixels

    levels = np.arange(256, dtype=np.uint8)
    x = (levels.astype(np.float64) * (1 / 255)).astype(np.float32)          # the processor's rescale
    expected = torch.from_numpy((x - np.float32(0.5)) / np.float32(0.5))    # and normalize
    assert torch.equal(pixels.normalize(torch.from_numpy(levels), torch.float32), expected)


def test_the_static_cache_decoder_is_used_only_once_warmed_in_each_lane(tiny_deepseek_dir):
    b = DeepseekOcr2Backend(tiny_deepseek_dir, device="cpu", dtype="bfloat16", max_new_tokens=8,
                            decode_batch_size=2, static_cache=True)
    assert not b._static_ready            # a request before warm-up decodes with the dynamic cache
    seconds = b.warm()
    assert b._static_ready and not b.warming
    assert set(seconds) == {f"decode_{lane}_batch_{n}" for lane in ("page", "turn") for n in (1, 2)}
    tokens = b.encode([view("v768")])[0]
    assert b.decode_tokens([tokens])[0].text == b.decode_tokens([tokens])[0].text


def test_a_turn_taller_than_768_px_goes_on_a_1024_view(backend):
    from optimem.model.line_crop import line_crop

    t = LADDER["crops"]
    boxes = [LineBox(9, (8, 8 + 24 * k, 1000, 22 + 24 * k), f"line {k}") for k in range(36)]   # 8..862 px
    crop = line_crop(PageView(page(t.px), t, boxes))
    assert crop.px == 1024 and crop.image.size == (1024, 1024)
    assert crop.lines[0].box[:2] == (4, 4) and crop.max_new_tokens == 48 * 36 + 8
    backend.max_new_tokens = 4   # the backend's cap bounds a crop's budget too: keep the test short
    try:
        (got,) = backend.decode_lines([PageView(page(t.px), t, boxes)])
    finally:
        backend.max_new_tokens = NEW_TOKENS
    assert all(line.turn == 9 for line in got.lines)


def typeset_pages(n: int) -> list[bytes]:
    from optimem.memory.lab.corpus import longest
    from optimem.renderer import TurnText, typeset

    turns = [TurnText(i, t["role"], t["content"]) for i, t in enumerate(longest()[1][:60 * n])]
    pngs = [p.png for p in typeset(turns)][:n]
    assert len(pngs) == n
    return pngs


@pytest.mark.parametrize("tier", ["crops", "g1024", "v768", "mosaic4", "mosaic16"])
def test_views_made_on_the_device_are_the_renderers_pixels_bit_for_bit(tier, monkeypatch):
    """model/device_views.py: PIL's Lanczos in its own fixed-point arithmetic, and the mosaic canvas
    (a group not yet full too), equal to renderer.view / renderer.mosaic on typeset pages (shrunk
    two pages at a time, so the chunking is crossed too)."""
    import numpy as np

    from optimem import renderer
    from optimem.model import device_views

    monkeypatch.setattr(device_views, "CHUNK", 2)

    t = LADDER[tier]
    pngs = typeset_pages(5)
    if t.per_canvas > 1:
        stacks = [pngs[:min(5, t.per_canvas)], pngs[:3]]
        want = [renderer.mosaic([renderer.view(p, t.px) for p in s], t.per_canvas, t.canvas_px) for s in stacks]
    else:
        stacks = [[p] for p in pngs[:2]]
        want = [renderer.view(s[0], t.px) for s in stacks]
    got = device_views.views([[device_views.decoded(p) for p in s] for s in stacks], t, torch.device("cpu"))
    for g, w in zip(got, want):
        assert np.array_equal(g.permute(1, 2, 0).numpy(), np.asarray(w.convert("RGB")))


def test_encode_pages_gives_the_tokens_of_the_renderers_views(backend):
    """encode_pages (views made on the device) equals encode of the views PIL makes, per tier;
    stacks of one tier and page size from many callers go through the encode lane as one batch."""
    from concurrent.futures import ThreadPoolExecutor

    from optimem import renderer
    from optimem.model.base import PageStack, shrinks_pages

    assert shrinks_pages(backend)
    pngs = typeset_pages(4)
    for name in ("crops", "g1024", "v768", "mosaic4"):
        t = LADDER[name]
        stack = pngs[:3] if t.per_canvas > 1 else pngs[:1]
        image = renderer.mosaic([renderer.view(p, t.px) for p in stack], 4, t.canvas_px) if t.per_canvas > 1 \
            else renderer.view(stack[0], t.px)
        got = backend.encode_pages([PageStack(stack, t)])[0]
        want = backend.encode([PageView(image, t)])[0]
        assert got.tier == name and got.n_tokens == t.canvas_tokens and torch.equal(got.tensor, want.tensor), name
    lane = backend._lanes["encode"]
    lane.window_s = 0.5
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda p: backend.encode_pages([PageStack([p], LADDER["v768"])]), pngs[:3]))
    finally:
        lane.window_s = 0.005
    assert lane.batches[-1] == (("pages", "v768", (1024, 1024)), 3)
