"""Pick a backend by name. Imports are lazy: the CPU install never imports the GPU stack.

Backends never read the environment: ``load`` hands each one its settings explicitly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from optimem.model.base import Backend, ModelUnavailable
from optimem.model.tiers import ladder as ladder_for

if TYPE_CHECKING:
    from optimem.settings import Settings

NAMES = ("rapidocr", "deepseek-ocr2", "vllm")


def load(settings: "Settings") -> Backend:
    """The backend ``settings.backend`` names, built from ``settings`` (model_path, device, dtype,
    vllm_url, vllm_model, vllm_api_key; family and ocr_threads for the rapidocr reader)."""
    name = settings.backend
    if name == "rapidocr":
        from optimem.model.rapidocr_backend import RapidOcrBackend
        return RapidOcrBackend(ladder=ladder_for(settings.family),
                               threads=settings.ocr_threads if settings.ocr_threads > 0 else None)
    if name == "deepseek-ocr2":
        from optimem.model.deepseek_ocr2 import DeepseekOcr2Backend
        compile_ = settings.compile.strip().lower()
        return DeepseekOcr2Backend(model_path=settings.model_path, device=settings.device, dtype=settings.dtype,
                                   compile=None if not compile_ else compile_ not in ("0", "false", "no", "off"))
    if name == "vllm":
        from optimem.model.vllm_reader import VllmReader
        return VllmReader(url=settings.vllm_url, model=settings.vllm_model, api_key=settings.vllm_api_key)
    raise ModelUnavailable(f"unknown backend {name!r} in OPTIMEM_BACKEND; choose one of {NAMES}")
