import pytest

from optimem.memory.curves import PRESETS, CurveError, load
from optimem.model.tiers import DEEPSEEK_OCR, DEEPSEEK_OCR2


def test_step_curve_fades_through_the_tiers_in_order():
    curve = load(PRESETS["detailed"], DEEPSEEK_OCR2)
    names = [curve.tier(age, DEEPSEEK_OCR2).name for age in (0, 99, 100, 300, 800, 2000, 5000, 10**6)]
    assert names == ["crops", "crops", "g1024", "v768", "mosaic4", "mosaic16", "gone", "gone"]
    default = load(PRESETS["default"], DEEPSEEK_OCR2)
    names = [default.tier(age, DEEPSEEK_OCR2).name for age in (0, 1999, 2000, 4999, 5000)]
    assert names == ["mosaic4", "mosaic4", "mosaic16", "mosaic16", "gone"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_never_gets_sharper_with_age(preset):
    curve = load(preset, DEEPSEEK_OCR2)
    costs = [curve.tier(age, DEEPSEEK_OCR2).tokens for age in range(0, 200_000, 97)]
    assert costs == sorted(costs, reverse=True)


def test_exponential_half_life_halves_the_token_share():
    curve = load({"kind": "exponential", "half_life": 100}, DEEPSEEK_OCR2)
    assert curve.retention(100) == pytest.approx(0.5)
    # 833 tokens at age 0; half of it (416) is below crops, so g1024 (257) is the sharpest that fits
    assert curve.tier(0, DEEPSEEK_OCR2).name == "crops"
    assert curve.tier(100, DEEPSEEK_OCR2).name == "g1024"
    assert curve.tier(10_000, DEEPSEEK_OCR2).name == "gone"


def test_power_law_in_seconds():
    curve = load({"kind": "power", "unit": "seconds", "scale": 3600, "exponent": 2}, DEEPSEEK_OCR)
    assert curve.unit == "seconds"
    assert curve.tier(0, DEEPSEEK_OCR).name == "large"
    assert curve.tier(3600 * 100, DEEPSEEK_OCR).name == "gone"


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown curve preset"),
    ({"kind": "spline"}, "kind must be"),
    ({"kind": "step", "steps": []}, "non-empty"),
    ({"kind": "step", "steps": [[0, "crops"], [10, "blurry"]]}, "unknown tier 'blurry'"),
    ({"kind": "step", "steps": [[0, "crops"], [10, "v768"], [5, "gone"]]}, "must increase"),
    ({"kind": "step", "steps": [[0, "v768"], [10, "crops"]]}, "only fade"),
    ({"kind": "step", "steps": [[3, "crops"]]}, "start at age 0"),
    ({"kind": "exponential", "half_life": -1}, "half_life"),
    ({"kind": "exponential", "half_life": "soon"}, "half_life"),
    ({"kind": "power", "scale": 10}, "exponent"),
    ({"kind": "exponential", "half_life": 5, "unit": "weeks"}, "unit"),
])
def test_invalid_curves_say_what_to_fix(spec, message):
    with pytest.raises(CurveError, match=message):
        load(spec, DEEPSEEK_OCR2)
