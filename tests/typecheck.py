#!/usr/bin/env python3
"""Type-check the package with mypy (the settings are ``[tool.mypy]`` in pyproject.toml).

    python tests/typecheck.py              # prints mypy's report, exits with mypy's status

The repository root is the package ``optimem`` (pyproject maps ``optimem`` onto ``.``), so a checker
that finds modules by folder sees no ``optimem`` anywhere. This builds the mapping it lacks: a folder
outside the tree whose ``optimem`` is a link to the root, put on MYPYPATH, and checks ``-p optimem``
from there. The folder and mypy's cache are kept in the system's temporary folder, one pair per
checkout, so a second run only re-reads what changed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "optimem"


def workspace(root: Path = ROOT) -> Path:
    """The folder holding ``optimem`` -> root (made or repaired here) and mypy's cache."""
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    home = Path(tempfile.gettempdir()) / f"optimem-mypy-{tag}"
    link = home / PACKAGE
    home.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == root):
        link.unlink(missing_ok=True)
        link.symlink_to(root, target_is_directory=True)
    return home


def run_mypy(root: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """mypy over the package through the link; its output and exit status, unchanged."""
    home = workspace(root)
    env = {**os.environ, "MYPYPATH": str(home)}
    cmd = [sys.executable, "-m", "mypy", "-p", PACKAGE,
           "--config-file", str(root / "pyproject.toml"), "--cache-dir", str(home / "cache")]
    # Run from the mapping folder: the paths mypy reports (and the config's excludes) start at optimem/.
    return subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=timeout)


def main() -> int:
    result = run_mypy()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
