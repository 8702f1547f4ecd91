"""All configuration in one typed place: every ``OPTIMEM_*`` environment variable is a field here.

``Settings()`` is the defaults and ``Settings(**values)`` exactly those values: neither looks at the
environment. ``Settings.from_env(**overrides)`` reads ``OPTIMEM_<FIELD>`` for each field (keyword
overrides win). Nothing else in optimem reads ``OPTIMEM_*``: the model backends, the CLI and the API
are handed a ``Settings``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import platformdirs

PREFIX = "OPTIMEM_"
_FALSE = ("0", "false", "no", "off", "")


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
    dtype: str = ""                # deepseek-ocr2 weights dtype; "": bfloat16 on CUDA, float32 on CPU
    compile: str = ""              # deepseek-ocr2: torch.compile the encoder and the static-cache decoder at start; "": on for CUDA, off on CPU
    worker_batch: int = 0          # jobs a worker runs at once per kind (encode, decode); 0: 8 for deepseek-ocr2, 1 for the CPU reader
    vllm_url: str = ""             # the vLLM server (vllm backend), e.g. http://127.0.0.1:8000
    vllm_model: str = ""           # the model name it serves; "": its first from /v1/models
    vllm_api_key: str = ""         # Bearer key for the vLLM server, if it wants one
    upstream_url: str = ""         # the chat model the OpenAI-compatible proxy forwards to (its /v1 base URL)
    upstream_key: str = ""         # Bearer key for the upstream; "": pass the caller's on when optimem has no keys
    budget: int = 0                # the proxy's context budget (tokens) when a call names none; 0: PROXY_BUDGET
    upstream_timeout_s: float = 600.0   # the proxy waits this long for the upstream's answer (generation is slow)
    upstream_connect_s: float = 10.0    # ... but only this long to connect to it
    memory_mode: str = "images"    # the proxy's memory when a call names none: images | tool | both
    recent_tokens: int = 2000      # text kept as plain turns before older turns are sealed into pages
    recent_floor_turns: int = 4    # under a budget, the newest turns that always stay text; older text moves onto legible pages
    seal_background: bool = True   # seal pages just after an append answers (a thread per process), not inside it
    font_px: int = 12              # 12 px at 1.15 line spacing: `optimem lab calibrate`, README "Results"
    line_spacing: float = 1.15
    tokenizer: str = "cl100k_base"
    curve: str = "default"
    max_turn_chars: int = 100_000
    max_body_bytes: int = 0        # the largest request body read; 0: just above the largest valid append (body_limit)
    recall_read_s: int = 60        # a recall reads unread pages itself for at most this long
    # recall's meaning model beside words: "stems" (shipped, numpy), "minilm", "wordllama", a local
    # folder, or "words" / "" for words alone
    embed_model: str = "stems"
    read_threads: int = 1          # page reads at once per process (a dedicated pool, off the request threads)
    ocr_threads: int = 0           # the CPU reader's threads for one read; 0: every core the process may use, at most 4
    recall_concurrency: int = 64   # recalls at once per process, on their own threads (not FastAPI's pool); past it 503
    recall_compute: int = 2        # of those, computing at once (the rest wait for reads or a turn): about the cores
    tenant_recalls: int = 32       # one tenant's recalls at once, across every API process (Redis); past it 429; 0: no cap
    tenant_appends_per_s: int = 1000  # one tenant's append calls a second, across processes; past it 429; 0: no cap
    jobs_max: int = 10_000         # model jobs (read-ahead) the stream holds; past it the oldest are shed (0: no cap)
    shutdown_s: float = 3.0        # on SIGTERM: seconds in-flight requests get to finish before the server stops
    worker: bool = True            # run one model worker in-process
    retier_sweep_s: float = 60.0   # a worker re-tiers time-curved sessions left alone this often (0: never)
    api_keys: str = ""             # "key:tenant[:read|write|admin],..."; empty = no auth, tenant "default"
    log: str = "WARNING"           # the CLI's logging level
    log_format: str = "text"       # text | json (JSON lines with request id, tenant and session)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> "Settings":
        """Defaults, then each ``OPTIMEM_<FIELD>`` set in ``environ`` (default ``os.environ``), then
        ``overrides``. A malformed number raises ValueError naming its variable."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f.name)
            raw = env.get(name)
            if raw is not None:
                values[f.name] = _parse(name, raw, hints[f.name])
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        self.tenants()   # a bad OPTIMEM_API_KEYS stops whoever builds these settings, not the first request

    def tenants(self) -> Mapping[str, str]:
        """The key -> tenant map of ``api_keys`` (parsed once per value); ValueError when it is malformed."""
        return api_keys(self.api_keys)

    def scopes(self) -> Mapping[str, str]:
        """The key -> scope map of ``api_keys``: read, write or admin (full rights, as a key without one)."""
        return api_scopes(self.api_keys)

    def body_limit(self) -> int:
        """The largest request body the API reads: ``max_body_bytes``, else just above the largest valid
        append (MAX_TURNS_PER_APPEND turns of ``max_turn_chars`` one-byte characters plus their JSON)."""
        if self.max_body_bytes > 0:
            return self.max_body_bytes
        return MAX_TURNS_PER_APPEND * (self.max_turn_chars + TURN_JSON_BYTES) + 64 * 1024

    def proxy_budget(self) -> int:
        """The proxy's context budget when a call names none: ``budget``, else one that fits common models."""
        return self.budget if self.budget > 0 else PROXY_BUDGET


MAX_TURNS_PER_APPEND = 1000   # one append's turns (the API's TurnsIn); bounds the default body limit
TURN_JSON_BYTES = 512         # a turn's JSON around its content: keys, role (<= 64), time (<= 64), escapes
# 32k tokens: the context of common open models (Qwen2.5-VL, Llama 3.x at their default serving length),
# less room for the answer; without a budget a long session sent every page and rebuilt every canvas.
PROXY_BUDGET = 24_000


SCOPES = ("read", "write", "admin")   # what a key may do; each scope holds the ones before it


@lru_cache(maxsize=64)
def _key_entries(text: str) -> Mapping[str, tuple[str, str]]:
    """``"key:tenant[:scope],..."`` as key -> (tenant, scope); no scope is full rights ("admin").
    ValueError naming OPTIMEM_API_KEYS when an entry has no colon, an empty key or tenant, an
    unknown scope, or a key given twice (each would open or misroute a tenant)."""
    keys: dict[str, tuple[str, str]] = {}
    for n, item in enumerate(text.split(",")):
        if not item.strip():
            continue   # a trailing comma
        key, colon, rest = (part.strip() for part in item.partition(":"))
        tenant, _, scope = (part.strip() for part in rest.partition(":"))
        where = f"OPTIMEM_API_KEYS entry {n + 1}"
        if not colon:
            raise ValueError(f"{where} has no ':'; write key:tenant,key2:tenant2 (or key:tenant:read|write|admin)")
        if not key or not tenant:
            raise ValueError(f"{where} has an empty {'key' if not key else 'tenant'}; every entry needs both "
                             "(an unset variable in key:$TENANT leaves one empty)")
        if scope and scope not in SCOPES:
            raise ValueError(f"{where} has the scope {scope!r}; a scope is one of {', '.join(SCOPES)} "
                             "(or none: full rights)")
        if key in keys:
            raise ValueError(f"{where} repeats a key of an earlier entry; each key names one tenant")
        keys[key] = (tenant, scope or "admin")
    return MappingProxyType(keys)   # cached: nobody may change it


@lru_cache(maxsize=64)
def api_keys(text: str) -> Mapping[str, str]:
    """The key -> tenant map of ``OPTIMEM_API_KEYS`` (see ``_key_entries``)."""
    return MappingProxyType({key: tenant for key, (tenant, _) in _key_entries(text).items()})


def api_scopes(text: str) -> Mapping[str, str]:
    """The key -> scope map of ``OPTIMEM_API_KEYS``: read, write or admin (no scope given: admin)."""
    return MappingProxyType({key: scope for key, (_, scope) in _key_entries(text).items()})


def env_name(field_name: str) -> str:
    """The environment variable behind a field: ``recent_tokens`` -> ``OPTIMEM_RECENT_TOKENS``."""
    return PREFIX + field_name.upper()


def as_env(**values: Any) -> dict[str, str]:
    """Fields as the environment variables a child process's ``Settings.from_env`` reads back
    (``serve --workers N`` hands its children the Redis it started this way)."""
    unknown = set(values) - {f.name for f in fields(Settings)}
    if unknown:
        raise TypeError(f"not settings: {sorted(unknown)}")
    return {env_name(name): ("1" if value else "0") if isinstance(value, bool) else str(value)
            for name, value in values.items()}


def _parse(name: str, raw: str, kind: Any) -> Any:
    if kind is bool:
        return raw.strip().lower() not in _FALSE
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if kind is Path:
        return Path(raw).expanduser()
    return raw
