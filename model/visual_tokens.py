"""Visual tokens: what the encoder made of one view, as bytes a cache can keep and check.

The tensor is the decoder's input for one view, ``[n_tokens, hidden]`` (for DeepSeek-OCR 2: local
crops, then the global view, then the view separator), in the model's own dtype. Bytes are a
safetensors file whose metadata names the tier and the model revision and carries a SHA-256 of the
raw tensor data, so a flipped bit in a cache is caught on load instead of silently read back as
different text. bf16 goes through byte for byte.

torch and safetensors (the ``deepseek`` extra) load on first use, not on import: the module imports
on a CPU-only install, where nothing makes visual tokens.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FORMAT = "optimem-visual-tokens/1"
_KEY = "tokens"


class CorruptTokens(ValueError):
    """Stored visual tokens failed their checksum or could not be parsed; recompute them from the page."""


@dataclass
class VisualTokens:
    tensor: torch.Tensor   # [n_tokens, hidden]
    tier: str
    revision: str          # the model revision that made them; another revision must not read them

    @property
    def n_tokens(self) -> int:
        return int(self.tensor.shape[0])

    def to_bytes(self) -> bytes:
        from safetensors.torch import save as st_save

        t = self.tensor.detach().to("cpu").contiguous()
        meta = {"format": FORMAT, "shape": ",".join(map(str, t.shape)), "dtype": _dtype_name(t.dtype),
                "tier": self.tier, "revision": self.revision, "sha256": _digest(t)}
        return st_save({_KEY: t}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> "VisualTokens":
        """Parse and verify; raises ``CorruptTokens`` when anything does not add up."""
        from safetensors.torch import load as st_load

        meta = _metadata(data)
        if meta.get("format") != FORMAT:
            raise CorruptTokens(f"not optimem visual tokens (format {meta.get('format')!r})")
        try:
            tensor = st_load(bytes(data))[_KEY]
        except Exception as e:  # safetensors raises its own error type for truncated or mangled data
            raise CorruptTokens(f"visual tokens do not parse: {e}") from None
        shape = ",".join(map(str, tensor.shape))
        if shape != meta.get("shape") or _dtype_name(tensor.dtype) != meta.get("dtype"):
            raise CorruptTokens(f"visual tokens are {shape} {tensor.dtype}, metadata says "
                                f"{meta.get('shape')} {meta.get('dtype')}")
        if _digest(tensor) != meta.get("sha256"):
            raise CorruptTokens("visual tokens failed their checksum")
        return cls(tensor, meta.get("tier", ""), meta.get("revision", ""))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _digest(t: torch.Tensor) -> str:
    import torch

    raw = t.contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (an 8-byte little-endian length, then JSON)."""
    try:
        (size,) = struct.unpack("<Q", bytes(data[:8]))
        if size > len(data) - 8:
            raise ValueError("header runs past the end")
        header = json.loads(bytes(data[8:8 + size]))
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a mapping")
        return meta
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise CorruptTokens(f"visual tokens header does not parse: {e}") from None
