"""`optimem demo` (the README's first command) shows what it promises: pages sealed, their tiers,
and recalls read back from those pages, not a conversation left as text."""
from __future__ import annotations

import re

from optimem.api import demo


def test_the_demo_seals_pages_and_recalls_from_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPTIMEM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OPTIMEM_REDIS_URL", "")
    monkeypatch.setenv("OPTIMEM_API_KEYS", "")
    demo.run(None, turns=600, out=str(tmp_path / "pages"), curve="default", wait=120)   # as `optimem demo`
    out = capsys.readouterr().out
    sealed = int(re.search(r"; (\d+) pages sealed by", out).group(1))
    assert sealed >= 6                                            # 600 turns: ~12,700 tokens, 2,000 stay text
    assert re.search(r"^\s+0\s+0-\d+\s+mosaic4", out, re.M)      # page 0 listed at the default curve's tier
    assert "turn 0 (user, page 0 at mosaic4" in out               # the first thing said, read from its page
    assert (tmp_path / "pages").is_dir() and any((tmp_path / "pages").iterdir())
