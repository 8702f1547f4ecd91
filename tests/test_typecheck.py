"""The package type-checks clean under mypy with the settings in pyproject.toml (tests/typecheck.py)."""
from __future__ import annotations

import importlib.util

import pytest

from tests.typecheck import ROOT, run_mypy


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (it is in the `test` extra: pip install -e '.[test]')")
def test_mypy_finds_no_error_in_the_package():
    result = run_mypy(ROOT)
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"mypy found errors (run `python tests/typecheck.py`):\n{report}"
    # A clean run that checked nothing would pass too: the mapping must have put the package in view.
    assert "Success: no issues found in" in report, report
    checked = int(report.rsplit(" in ", 1)[1].split()[0])
    assert checked > 50, f"mypy checked only {checked} files: is the optimem link right?\n{report}"
