"""One time module (``memory/times.py``): what callers send becomes the stored form, which reads back
as the same instant and sorts as times do."""
from __future__ import annotations

import time

import pytest

from optimem.errors import BadRequest
from optimem.memory import times


@pytest.mark.parametrize("sent, stored", [
    ("2024-05-01T12:30:00Z", "2024-05-01T12:30:00Z"),
    ("2024-05-01T14:30:00+02:00", "2024-05-01T12:30:00Z"),
    ("2024-05-01T12:30:00", "2024-05-01T12:30:00Z"),             # naive means UTC
    ("2024-05-01T12:30:00.987654Z", "2024-05-01T12:30:00Z"),      # to the second
    ("2024-05-01", "2024-05-01T00:00:00Z"),
])
def test_a_callers_time_is_stored_in_utc_to_the_second(sent, stored):
    assert times.normalise(sent) == stored
    assert times.iso(times.parse(stored)) == stored


@pytest.mark.parametrize("sent, words", [
    ("yesterday", "not ISO 8601"), (12, "must be an ISO 8601 string"), ("2" * 65, "65 characters"),
    ("9999-12-31T23:59:59-05:00", "outside years 1-9999"),
])
def test_what_is_not_a_time_is_a_bad_request_that_says_so(sent, words):
    with pytest.raises(BadRequest, match=words):
        times.normalise(sent)


def test_no_time_means_now_and_stored_times_sort_as_they_happen():
    assert abs(times.parse(times.normalise(None)) - time.time()) < 5
    assert abs(times.parse(times.normalise("")) - times.parse(times.now())) <= 1
    stamps = [0, 86_399, 1_700_000_000, 1_700_000_001, 4_102_444_800]
    assert sorted(times.iso(s) for s in reversed(stamps)) == [times.iso(s) for s in stamps]
    assert times.iso(0) == "1970-01-01T00:00:00Z"
