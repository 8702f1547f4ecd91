"""All configuration in one typed place, read from OPTIMEM_* environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("optimem")))
    redis_url: str = ""            # empty: the embedded Redis under data_dir
    redis_maxmemory: str = "0"     # embedded Redis memory cap ("4gb"); past it, caches are evicted first
    token_ttl: int = 7 * 86400     # seconds a cached visual-token entry lives (0: no expiry)
    backend: str = "rapidocr"      # rapidocr | deepseek-ocr2 | vllm
    family: str = "deepseek-ocr2"  # whose views and token costs pages are kept at
    model_path: str = ""           # local DeepSeek-OCR 2 weights (deepseek-ocr2 backend)
    device: str = ""               # "" = cuda; "cpu" must be said explicitly for the GPU backend
    vllm_url: str = ""
    upstream_url: str = ""         # the chat model the OpenAI-compatible proxy forwards to (its /v1 base URL)
    upstream_key: str = ""         # Bearer key for the upstream; "": pass the caller's on when optimem has no keys
    budget: int = 0                # the proxy's context budget (tokens) when a call names none; 0: no limit
    recent_tokens: int = 2000      # text kept as plain turns before older turns are sealed into pages
    font_px: int = 12              # 12 px at 1.15 line spacing: `optimem lab calibrate`, README "Results"
    line_spacing: float = 1.15
    tokenizer: str = "cl100k_base"
    curve: str = "default"
    max_turn_chars: int = 100_000
    recall_read_s: int = 60        # a recall reads unread pages itself for at most this long
    worker: bool = True            # run one model worker in-process
    api_keys: str = ""             # "key:tenant,key2:tenant2"; empty = no auth, tenant "default"

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"OPTIMEM_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", "float"):
                try:
                    values[f.name] = int(raw) if f.type == "int" else float(raw)
                except ValueError:
                    raise ValueError(f"OPTIMEM_{f.name.upper()} must be a number, got {raw!r}") from None
            elif f.type in ("bool",):
                values[f.name] = raw.lower() not in ("0", "false", "no", "")
            elif f.name == "data_dir":
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)

    def tenants(self) -> dict[str, str]:
        pairs = (item.split(":", 1) for item in self.api_keys.split(",") if item.strip())
        return {key.strip(): tenant.strip() for key, tenant in pairs}
