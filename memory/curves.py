"""Forgetting curves: a page's age -> the tier it is kept at.

A curve is data (JSON), validated on load:
- ``{"kind": "step", "unit": "turns", "steps": [[0, "crops"], [200, "g1024"], ...]}``: from each age on, that tier.
- ``{"kind": "exponential", "unit": "turns", "half_life": 400}``: retention 2^(-age/half_life).
- ``{"kind": "power", "unit": "seconds", "scale": 3600, "exponent": 1.0}``: retention (1 + age/scale)^-exponent.
For the continuous kinds, retention is the share of the sharpest tier's visual tokens a page may
still cost: it gets the sharpest tier that costs no more than that, and is gone below the faintest.
``unit`` is "turns" (turns appended after the page's last turn) or "seconds" (since its last turn).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from optimem.errors import BadRequest
from optimem.model.tiers import LADDERS, Ladder, Tier

UNITS = ("turns", "seconds")
KEYS = {"step": {"kind", "unit", "steps"}, "exponential": {"kind", "unit", "half_life"},
        "power": {"kind", "unit", "scale", "exponent"}}
MAX_AGE = 1e12        # turns, or seconds (~31,700 years): far past any page's age
MAX_STEPS = 100
MAX_JSON_CHARS = 10_000

PRESETS: dict[str, dict[str, Any]] = {
    # The cheapest curve of the lab's frontier that keeps fidelity >= 99% and every needle (docs/lab:
    # 3,798 tokens, 99.5%, 12/12 on the 1,592-turn chat); "detailed" was the default before.
    "default": {"kind": "step", "unit": "turns", "steps": [[0, "mosaic4"], [2000, "mosaic16"], [5000, "gone"]]},
    "detailed": {"kind": "step", "unit": "turns", "steps": [
        [0, "crops"], [100, "g1024"], [300, "v768"], [800, "mosaic4"], [2000, "mosaic16"], [5000, "gone"]]},
    "keep": {"kind": "step", "unit": "turns", "steps": [[0, "crops"]]},
    "gentle": {"kind": "exponential", "unit": "turns", "half_life": 1000},
    "exponential": {"kind": "exponential", "unit": "turns", "half_life": 300},
    "aggressive": {"kind": "exponential", "unit": "turns", "half_life": 80},
    "power": {"kind": "power", "unit": "turns", "scale": 50, "exponent": 1.0},
    "daily": {"kind": "power", "unit": "seconds", "scale": 86400, "exponent": 1.0},
}


class CurveError(BadRequest):
    """The curve is not valid; the message says what to fix."""


@dataclass(frozen=True)
class Curve:
    spec: dict[str, Any]

    @property
    def unit(self) -> str:
        return self.spec["unit"]

    def retention(self, age: float) -> float:
        kind = self.spec["kind"]
        age = max(0.0, age)
        if kind == "exponential":
            return 2.0 ** (-age / self.spec["half_life"])
        if kind == "power":
            return (1.0 + age / self.spec["scale"]) ** (-self.spec["exponent"])
        raise TypeError("a step curve has tiers, not a retention")

    def tier(self, age: float, ladder: Ladder) -> Tier:
        if self.spec["kind"] == "step":
            name = self.spec["steps"][0][1]
            for start, step_name in self.spec["steps"]:
                if age >= start:
                    name = step_name
            return ladder[_ladder_name(name, ladder)]
        budget = self.retention(age) * ladder.sharpest.tokens
        for tier in ladder.tiers:
            if tier.tokens <= budget + 1e-9:
                return tier
        return ladder.tiers[-1]

    def to_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True)


def _ladder_name(name: str, ladder: Ladder) -> str:
    """A tier of another family's ladder, moved to the same position on this one (sharpest, next,
    ...; clamped to the faintest view; gone stays gone), so a curve means "fade at these ages" on
    every family, and a session keeps working when the operator switches families."""
    if name in ladder.names():
        return name
    if name == "gone":
        return ladder.tiers[-1].name
    position = next((other.index(name) for other in LADDERS.values() if name in other.names()), 0)
    views = [t.name for t in ladder.tiers if not t.gone]
    return views[min(position, len(views) - 1)]


def _preset_for(spec: dict[str, Any], ladder: Ladder) -> dict[str, Any]:
    """Step presets name DeepSeek-OCR 2 tiers; on another family's ladder they move by position."""
    if spec["kind"] != "step":
        return spec
    steps: list[list] = []
    for age, name in spec["steps"]:
        mapped = _ladder_name(name, ladder)
        if not steps or steps[-1][1] != mapped:
            steps.append([age, mapped])
    return {**spec, "steps": steps}


def _finite(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(spec: dict, key: str, positive: bool = True, most: float = MAX_AGE) -> float:
    value = spec.get(key)
    if value is None or not _finite(value):
        raise CurveError(f"{spec['kind']} curve needs a finite number {key!r}, got {_short(value)}")
    if positive and value <= 0:
        raise CurveError(f"{spec['kind']} curve needs {key!r} > 0, got {value}")
    if value > most:
        raise CurveError(f"{spec['kind']} curve needs {key!r} <= {most:g}, got {value:g}")
    return float(value)


def load(curve: str | dict | None, ladder: Ladder) -> Curve:
    """A preset name, a JSON string or a dict -> a validated Curve. Raises CurveError saying what is wrong."""
    if curve is None or curve == "":
        curve = "default"
    if isinstance(curve, str):
        if curve in PRESETS:
            curve = _preset_for(PRESETS[curve], ladder)
        else:
            if len(curve) > MAX_JSON_CHARS:
                raise CurveError(f"a curve is at most {MAX_JSON_CHARS} characters of JSON, got {len(curve)}")
            try:
                curve = json.loads(curve)
            except (json.JSONDecodeError, RecursionError):
                raise CurveError(f"unknown curve preset {_short(curve)}; presets: {sorted(PRESETS)}, "
                                 "or give a curve object") from None
    if not isinstance(curve, dict):
        raise CurveError("a curve is a preset name or an object with 'kind'")
    spec = dict(curve)
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in KEYS:
        raise CurveError(f"curve kind must be 'step', 'exponential' or 'power', got {_short(kind)}")
    unknown = sorted(str(key)[:40] for key in spec if key not in KEYS[kind])
    if unknown:
        raise CurveError(f"unknown key(s) {unknown[:5]} in a {kind} curve; it takes {sorted(KEYS[kind])}")
    spec.setdefault("unit", "turns")
    if not isinstance(spec["unit"], str) or spec["unit"] not in UNITS:
        raise CurveError(f"curve unit must be one of {UNITS}, got {_short(spec['unit'])}")
    if kind == "step":
        steps = spec.get("steps")
        if not isinstance(steps, list) or not steps:
            raise CurveError("step curve needs 'steps': a non-empty list of [age, tier] pairs")
        if len(steps) > MAX_STEPS:
            raise CurveError(f"a step curve has at most {MAX_STEPS} steps, got {len(steps)}")
        last_age, last_index = -1.0, -1
        for step in steps:
            if not (isinstance(step, (list, tuple)) and len(step) == 2):
                raise CurveError(f"each step is [age, tier], got {_short(step)}")
            age, name = step
            if not _finite(age) or age < 0 or age > MAX_AGE:
                raise CurveError(f"step age must be a finite number from 0 to {MAX_AGE:g}, got {_short(age)}")
            if age <= last_age:
                raise CurveError(f"step ages must increase, got {age} after {last_age}")
            if not isinstance(name, str) or name not in ladder.names():
                raise CurveError(f"unknown tier {_short(name)}; tiers of {ladder.family}: {ladder.names()}")
            index = ladder.index(name)
            if index < last_index:
                raise CurveError(f"tiers may only fade with age: {name!r} at {age} is sharper than the step before")
            last_age, last_index = age, index
        if steps[0][0] != 0:
            raise CurveError("the first step must start at age 0")
        spec["steps"] = [[s[0], s[1]] for s in steps]
    elif kind == "exponential":
        _number(spec, "half_life")
    elif kind == "power":
        _number(spec, "scale")
        _number(spec, "exponent", most=100)
    return Curve(spec)
