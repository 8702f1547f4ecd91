"""Token accounting follows the downstream model family: its page size, its views and their costs."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from optimem.memory.lab.corpus import longest
from optimem.memory import curves
from optimem.memory.service import Memory
from optimem.model.tiers import LADDERS, QWEN25_VL, ladder, openai_tile_tokens, qwen_vl_tokens
from tests.conftest import settings_for


@pytest.fixture(scope="module")
def chat():
    return longest()[1][:200]


def test_qwen_costs_one_token_per_28px_square():
    assert qwen_vl_tokens(1008) == 36 * 36 + 2 and qwen_vl_tokens(392) == 14 * 14 + 2
    assert all(t.px % 28 == 0 for t in QWEN25_VL.tiers)


@pytest.mark.parametrize("px, detail, tokens", [
    (512, "high", 85 + 170), (768, "high", 85 + 4 * 170), (1024, "high", 85 + 4 * 170),  # scaled to 768 first
    (2048, "high", 85 + 4 * 170), (300, "high", 85 + 170), (768, "low", 85),
])
def test_openai_tiles_cost_85_plus_170_per_512px_tile(px, detail, tokens):
    assert openai_tile_tokens(px, detail) == tokens


@pytest.mark.parametrize("family", sorted(LADDERS))
def test_every_preset_curve_works_on_every_family(family):
    fades = ladder(family)
    for name in curves.PRESETS:
        curve = curves.load(name, fades)
        tiers = [curve.tier(age, fades) for age in (0, 50, 150, 500, 1000, 3000, 10_000)]
        assert [fades.tiers.index(t) for t in tiers] == sorted(fades.tiers.index(t) for t in tiers)  # only fades
    assert curves.load("detailed", fades).tier(0, fades) == fades.sharpest


def session(redis_server, tmp_path, tenant, family: str, turns: list[dict]) -> tuple[Memory, dict]:
    memory = Memory(settings_for(redis_server, tmp_path, family=family)).open()
    memory.create_session(family, curve="keep", tenant=tenant)  # a preset: on every family, the sharpest tier
    memory.append(family, turns, tenant=tenant)
    return memory, memory.context(family, format="openai", tenant=tenant).model_dump()


def test_the_same_conversation_costs_what_each_family_charges(redis_server, tmp_path, tenant, chat):
    seen = {}
    for family in ("deepseek-ocr2", "qwen2.5-vl", "openai-tiles"):
        memory, ctx = session(redis_server, tmp_path, tenant, family, chat)
        try:
            a, fades = ctx["accounting"], memory.ladder
            pages = memory.pages(family, tenant=tenant)  # typed: PageSpans
            assert pages and a["pages"] == len(pages)
            assert a["visual_tokens"] == pytest.approx(len(pages) * fades.sharpest.tokens)
            png = memory.page_image(family, 0, "full", tenant=tenant)
            assert Image.open(io.BytesIO(png)).size == (fades.page_px, fades.page_px)  # typeset at the family's size
            parts = [p for p in ctx["messages"][0]["content"] if p["type"] == "image_url"]
            url = parts[0]["image_url"]["url"]
            seen_px = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size[0]
            assert seen_px == fades.sharpest.px
            if family == "openai-tiles":  # the cost holds only if the image is sent at that detail
                assert all(p["image_url"]["detail"] == "high" for p in parts)
            else:
                assert all("detail" not in p["image_url"] for p in parts)
            seen[family] = (a["visual_tokens"] / len(pages), len(pages), a["compression"])
        finally:
            memory.close()
    assert seen["deepseek-ocr2"][0] == 833 and seen["qwen2.5-vl"][0] == 1298 and seen["openai-tiles"][0] == 765
    assert seen["openai-tiles"][1] > seen["deepseek-ocr2"][1]  # a 768 px page holds less than a 1024 px one
    assert len({s[2] for s in seen.values()}) == 3


def test_low_detail_tiers_are_sent_as_low_detail(redis_server, tmp_path, tenant, chat):
    memory, _ = session(redis_server, tmp_path, tenant, "openai-tiles", chat)
    try:
        memory.set_curve("openai-tiles", {"kind": "step", "steps": [[0, "low"], [60, "low4"]]}, tenant=tenant)
        ctx = memory.context("openai-tiles", format="openai", tenant=tenant).model_dump()
        parts = [p["image_url"] for p in ctx["messages"][0]["content"] if p["type"] == "image_url"]
        tiers = [p.tier for p in memory.pages("openai-tiles", tenant=tenant)]
        assert {"low", "low4"} <= set(tiers) and all(p["detail"] == "low" for p in parts)
        assert len(parts) < len(tiers)  # four low4 pages share one 512 px canvas: 85 tokens for all four
        low4_groups = {p.page // 4 for p in memory.pages("openai-tiles", tenant=tenant) if p.tier == "low4"}
        assert ctx["accounting"]["visual_tokens"] == pytest.approx(   # a canvas costs 85 however full it is
            85 * tiers.count("low") + 85 * len(low4_groups))
    finally:
        memory.close()
