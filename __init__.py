"""optimem: optical memory for chatbots.

Recent turns stay text; older turns are typeset onto page images that fade with age; recall reads
them back. In-process::

    import optimem
    with optimem.Memory() as memory:              # embedded Redis under OPTIMEM_DATA_DIR
        memory.append("alice", [{"role": "user", "content": "My locker code is 4817."}])
        memory.recall("alice", query="locker code")

Over HTTP: ``optimem.Client(base_url, api_key)`` and ``optimem.AsyncClient`` with the same verbs.
Names load lazily, so ``import optimem`` stays cheap and the CPU path never imports torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from optimem._version import __version__

_EXPORTS = {
    "Memory": "optimem.memory.service",
    "Settings": "optimem.settings",
    "Client": "optimem.api.client",
    "AsyncClient": "optimem.api.client",
    "OptimemError": "optimem.errors",
    "BadRequest": "optimem.errors",
    "NotFound": "optimem.errors",
    "SessionExists": "optimem.errors",
    "ModelUnavailable": "optimem.errors",
    "Curve": "optimem.memory.curves",
    "Tier": "optimem.model.tiers",
    "Ladder": "optimem.model.tiers",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from optimem.api.client import AsyncClient, Client
    from optimem.errors import BadRequest, ModelUnavailable, NotFound, OptimemError, SessionExists
    from optimem.memory.curves import Curve
    from optimem.memory.service import Memory
    from optimem.model.tiers import Ladder, Tier
    from optimem.settings import Settings


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'optimem' has no attribute {name!r}")
