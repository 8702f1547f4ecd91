"""What the lab run and the calibration share: the machine a report was measured on, and the
distinct views a reader sees of a ladder's tiers."""
from __future__ import annotations

import os
import platform
import time
from typing import Any

from optimem.memory import reading
from optimem.model.base import Backend
from optimem.model.tiers import Ladder, Tier


def machine() -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {"platform": platform.platform(), "python": platform.python_version(), "cores": cores,
            "processor": platform.processor() or platform.machine(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def reader(backend: Backend, ladder: Ladder) -> reading.Reader:
    """A ``Reader`` without a store, for pages that never were in one: only its ``id`` and
    ``cache_key`` (what the backend reads alike) are of use."""
    return reading.Reader(None, backend, ladder)  # type: ignore[arg-type]


def views(tiers: list[Tier] | tuple[Tier, ...], backend: Backend, ladder: Ladder) -> dict[str, list[Tier]]:
    """The tiers (gone left out) grouped by what the backend reads alike (``Reader.cache_key``: for
    a reader, the image size), sharpest first: read one of each group, and the reading holds for all
    of them, as it does in the service's decode cache."""
    key = reader(backend, ladder).cache_key
    out: dict[str, list[Tier]] = {}
    for tier in tiers:
        if not tier.gone:
            out.setdefault(key(tier), []).append(tier)
    return out


def tiers_named(ladder: Ladder, names: str | None) -> list[Tier]:
    """The ladder's tiers named in a comma-separated list (None or "": all but gone), in ladder order."""
    if not names:
        return [t for t in ladder.tiers if not t.gone]
    wanted = {ladder[n.strip()].name for n in names.split(",") if n.strip()}  # KeyError names the ladder's
    return [t for t in ladder.tiers if t.name in wanted and not t.gone]
