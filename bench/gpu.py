"""GPU benchmark of the DeepSeek-OCR 2 backend at full size, with random bf16 weights.

The model is the real architecture built from its config (numbers from
shared/reference/deepseek-ocr.md: SAM ViT-B, a Qwen2-0.5B-shaped encoder, the DeepSeek-3B-MoE
decoder), so speed and memory are those of the real model; nothing is downloaded, and the weights
being random means the text it "reads" is noise. Encode and decode run through
``DeepseekOcr2Backend`` (image preprocessing, the encoder, the token-count check, greedy decoding
with the n-gram guard), the same code a checkpoint on disk runs through.

Reports encode pages/s per tier and batch size, decode tokens/s from cached visual tokens, and peak
GPU memory (torch.cuda.max_memory_allocated) per row; prints a table and writes JSON.

    python bench/gpu.py                      # needs CUDA; writes bench/gpu.json
    python bench/gpu.py --dry-run            # any machine: full config and parameter count (meta device)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

DEVICE = "cuda"
TIERS = ("crops", "g1024", "v768", "mosaic4", "mosaic16")
DECODE_TIERS = ("crops", "g1024", "v768")   # prompt lengths 833, 257, 145 (a mosaic canvas is 257 too)


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


def page_image(px: int, seed: int):
    """A white page of typewritten-looking lines, so preprocessing sees a real page's bytes."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (px, px), "white")
    draw = ImageDraw.Draw(im)
    for i, y in enumerate(range(6, px - 12, max(10, px // 64))):
        draw.text((6, y), f"#{seed}.{i} the quick brown fox jumps over the lazy dog 0123456789", fill="black")
    return im


def timed(fn, min_seconds: float, max_iters: int) -> tuple[float, int]:
    """Seconds per call after one warm-up call, averaged over enough calls."""
    fn()
    torch.cuda.synchronize()
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        torch.cuda.synchronize()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or iters >= max_iters:
            return elapsed / iters, iters


def build_backend(config, max_new_tokens: int):
    from transformers import DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    from optimem.model.deepseek_ocr2 import DeepseekOcr2Backend

    tokenizer = tiny_tokenizer()
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = DeepseekOcr2ForConditionalGeneration._from_config(config, dtype=torch.bfloat16,
                                                                   attn_implementation="sdpa")
    processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer)
    return DeepseekOcr2Backend.from_loaded(model, processor, "random-bench", max_new_tokens=max_new_tokens)


def run(args, config) -> list[dict]:
    from optimem.model.base import PageView
    from optimem.model.tiers import DEEPSEEK_OCR2

    backend = build_backend(config, args.new_tokens)
    rows = []

    def row(kind: str, tier: str, batch: int, fn, count) -> None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            seconds, iters = timed(fn, args.seconds, args.max_iters)
            per_s = count() / seconds
            r = {"kind": kind, "tier": tier, "batch": batch, "seconds": seconds, "iters": iters,
                 "per_second": per_s, "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "status": "ok"}
        except torch.cuda.OutOfMemoryError:
            r = {"kind": kind, "tier": tier, "batch": batch, "status": "oom",
                 "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        rows.append(r)
        print(fmt(r), flush=True)

    print(header(), flush=True)
    for name in args.tiers:
        tier = DEEPSEEK_OCR2[name]
        for batch in args.batch_sizes:
            views = [PageView(page_image(tier.canvas_px or tier.px, i), tier) for i in range(batch)]
            backend.batch_size = batch
            row("encode", name, batch, lambda: backend.encode(views), lambda: batch)

    for name in args.decode_tiers:
        tier = DEEPSEEK_OCR2[name]
        backend.batch_size = 1
        cached = backend.encode([PageView(page_image(tier.canvas_px or tier.px, 0), tier)])[0].tensor
        for batch in args.batch_sizes:
            features = [cached.to(DEVICE)] * batch
            made = {"tokens": 0}

            def decode(features=features, made=made):
                ids, _ = backend.generate_ids(features, min_new_tokens=args.new_tokens)
                made["tokens"] = sum(len(i) for i in ids)

            row("decode", name, batch, decode, lambda made=made: made["tokens"])
    return rows


def header() -> str:
    return f"{'kind':<7} {'tier':<9} {'batch':>5} {'s/call':>8} {'rate':>16} {'peak GiB':>9}"


def fmt(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['kind']:<7} {r['tier']:<9} {r['batch']:>5} {'':>8} {r['status']:>16} {r['peak_gib']:>9.1f}"
    unit = "pages/s" if r["kind"] == "encode" else "tokens/s"
    return (f"{r['kind']:<7} {r['tier']:<9} {r['batch']:>5} {r['seconds']:>8.3f} "
            f"{r['per_second']:>8.1f} {unit:<7} {r['peak_gib']:>9.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/gpu.json; none on --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="build the full config and count parameters only")
    p.add_argument("--tiers", nargs="+", default=list(TIERS), choices=TIERS)
    p.add_argument("--decode-tiers", nargs="+", default=list(DECODE_TIERS), choices=TIERS)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 32])
    p.add_argument("--new-tokens", type=int, default=256, help="tokens decoded per page")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per row")
    p.add_argument("--max-iters", type=int, default=10)
    args = p.parse_args(argv)

    if not args.dry_run and not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU and torch.cuda.is_available() is False here "
              "(use --dry-run to check the config on a CPU)", file=sys.stderr)
        return 2

    import transformers

    config = full_config()
    counts = count_parameters(config)
    print("DeepSeek-OCR 2, full size, parameters: "
          + ", ".join(f"{k} {v / 1e6:,.1f}M" for k, v in counts.items()), flush=True)
    report = {"config": config.to_dict(), "parameters": counts, "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "weights": "random bf16 (speed and memory only; the text read is noise)"}
    if args.dry_run:
        print(f"dry run: would encode tiers {args.tiers} and decode {args.new_tokens} tokens a page for "
              f"tiers {args.decode_tiers}, at batch sizes {args.batch_sizes}")
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
        return 0
    report["device"] = torch.cuda.get_device_name(0)
    report["rows"] = run(args, config)
    report["peak_gib"] = max(r["peak_gib"] for r in report["rows"])
    out = args.out or ROOT / "bench" / "gpu.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
