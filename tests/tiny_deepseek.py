"""A tiny random DeepSeek-OCR 2 checkpoint, built offline, for tests.

Same architecture and the same view sizes as the real model (SAM at 1024 and 768 px, learned
queries for 256 and 144 tokens, crops, view separator, MoE decoder), so token counts per tier,
the caching of visual tokens and the decode path are the real ones. Widths and depths are tiny and
the weights random: it proves shapes, token counts, caching and the decode path, never accuracy;
its "text" is noise.

Use the session fixture ``tiny_deepseek_dir`` (import it into a test module) or call
``build_tiny_deepseek(path)``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

SPECIAL = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>")  # ids 0, 1, 2, 3
BOS, EOS, PAD, IMAGE = range(4)


def tiny_tokenizer():
    """A byte-level BPE over the 256 byte symbols (no merges: lossless and tiny) plus the special
    tokens, adding BOS in front like the real tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIAL[BOS]} $A",
                                                       special_tokens=[(SPECIAL[BOS], BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL[BOS], eos_token=SPECIAL[EOS],
                                   pad_token=SPECIAL[PAD])


def tiny_config(vocab_size: int):
    from transformers import DeepseekOcr2Config

    return DeepseekOcr2Config(
        vision_config=dict(
            # SAM keeps its 1024 px input, 16 px patches and window 14; one of its two layers is global.
            sam_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                            output_channels=16, downsample_channels=[16, 32], mlp_dim=64,
                            initializer_range=0.02),  # the default 1e-10 makes every image look alike
            encoder_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, vocab_size=1, max_position_embeddings=1024,
                                rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        ),
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, mlp_layer_types=["dense", "sparse"],
                         n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16,
                         n_group=1, topk_group=1, max_position_embeddings=2048, bos_token_id=BOS,
                         eos_token_id=EOS, pad_token_id=PAD,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        image_token_id=IMAGE,
    )


def build_tiny_deepseek(path: Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint (model, tokenizer, processor) to ``path`` with save_pretrained."""
    import torch
    from transformers import DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
        DeepseekOcr2ImageProcessorPil,
    )

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = DeepseekOcr2ForConditionalGeneration(tiny_config(len(tokenizer)))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_deepseek_dir(tmp_path_factory) -> Path:
    return build_tiny_deepseek(tmp_path_factory.mktemp("tiny-deepseek-ocr2"))
