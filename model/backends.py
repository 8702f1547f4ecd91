"""Pick a backend by name. Imports are lazy: the CPU install never imports the GPU stack."""
from __future__ import annotations

from model.base import Backend, ModelUnavailable
from model.tiers import ladder as ladder_for

NAMES = ("rapidocr", "deepseek-ocr2", "vllm")


def load(name: str, family: str = "deepseek-ocr2", model_path: str = "", device: str = "",
         vllm_url: str = "") -> Backend:
    if name == "rapidocr":
        from model.rapidocr_backend import RapidOcrBackend
        return RapidOcrBackend(ladder=ladder_for(family))
    if name == "deepseek-ocr2":
        from model.deepseek_ocr2 import DeepseekOcr2Backend
        return DeepseekOcr2Backend(model_path=model_path or None, device=device or None)
    if name == "vllm":
        from model.vllm_reader import VllmReader
        return VllmReader(url=vllm_url or None)
    raise ModelUnavailable(f"unknown backend {name!r} in OPTIMEM_BACKEND; choose one of {NAMES}")
