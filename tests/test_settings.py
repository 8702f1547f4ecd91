"""Settings: every OPTIMEM_* variable in one typed place, read from the environment only when asked;
backends get their settings handed in and never read the environment."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from optimem.model import backends
from optimem.model.base import ModelUnavailable
from optimem.model.tiers import QWEN25_VL
from optimem.settings import Settings, env_name
from tests.import_rules import ROOT, discover

FIELDS = {f.name for f in dataclasses.fields(Settings)}
# Files that still read an OPTIMEM_* variable themselves, waiting to be switched to Settings. A
# ratchet: the test fails once one of them no longer does, so the entry goes.
READS_ENV = re.compile(r"""(?:environ|getenv)\b[^"'\n]{0,16}["']OPTIMEM_([A-Z0-9_]+)"""
                       r"""|["']OPTIMEM_([A-Z0-9_]+)["']\s+(?:not\s+)?in\s+(?:os\.)?environ\b""")


@pytest.fixture
def env(monkeypatch):
    """A clean slate: no OPTIMEM_* variable from the machine running the tests."""
    import os
    for name in list(os.environ):
        if name.startswith("OPTIMEM_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_construction_never_reads_the_environment(env):
    env.setenv("OPTIMEM_RECENT_TOKENS", "5")
    env.setenv("OPTIMEM_BACKEND", "vllm")
    env.setenv("OPTIMEM_WORKER", "0")
    assert Settings() == Settings.from_env({})
    s = Settings(data_dir=Path("/tmp/x"), redis_url="unix:///tmp/r.sock", worker=False, recent_tokens=300)
    assert (s.recent_tokens, s.backend, s.worker, s.log) == (300, "rapidocr", False, "WARNING")
    assert Settings().recent_tokens == 2000 and Settings().worker is True


def test_from_env_reads_every_field_and_overrides_win(env):
    env.setenv("OPTIMEM_RECENT_TOKENS", "300")
    env.setenv("OPTIMEM_LINE_SPACING", "1.5")
    env.setenv("OPTIMEM_WORKER", "0")
    env.setenv("OPTIMEM_DATA_DIR", "/srv/optimem")
    env.setenv("OPTIMEM_DTYPE", "bfloat16")
    env.setenv("OPTIMEM_VLLM_MODEL", "served")
    env.setenv("OPTIMEM_VLLM_API_KEY", "k")
    env.setenv("OPTIMEM_LOG", "DEBUG")
    s = Settings.from_env(backend="vllm", recent_tokens=42)
    assert (s.recent_tokens, s.line_spacing, s.worker, s.data_dir) == (42, 1.5, False, Path("/srv/optimem"))
    assert (s.backend, s.dtype, s.vllm_model, s.vllm_api_key, s.log) == ("vllm", "bfloat16", "served", "k", "DEBUG")


def test_every_field_has_its_variable():
    defaults = Settings()
    env = {}
    for f in dataclasses.fields(Settings):
        value = getattr(defaults, f.name)
        env[env_name(f.name)] = ("0" if value is True else "1" if value is False
                                 else str(value + 1) if isinstance(value, (int, float)) else f"/x/{f.name}")
    env[env_name("api_keys")] = "/x/key:/x/tenant"   # a key map must be well formed (see below)
    s = Settings.from_env(env)
    for f in dataclasses.fields(Settings):
        assert getattr(s, f.name) != getattr(defaults, f.name), f"{env_name(f.name)} was not read"
        assert type(getattr(s, f.name)) is type(getattr(defaults, f.name)), f.name


@pytest.mark.parametrize("raw,expected", [("1", True), ("true", True), ("yes", True), ("0", False),
                                          ("false", False), ("No", False), ("off", False), ("", False)])
def test_booleans(raw, expected):
    assert Settings.from_env({"OPTIMEM_WORKER": raw}).worker is expected


@pytest.mark.parametrize("name,raw", [("OPTIMEM_RECENT_TOKENS", "x"), ("OPTIMEM_TOKEN_TTL", "1.5"),
                                      ("OPTIMEM_LINE_SPACING", "wide")])
def test_a_malformed_number_names_its_variable(name, raw):
    with pytest.raises(ValueError, match=f"^{name} must be a number, got '{raw}'$"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("keys, says", [
    ("key1:tenantA,:tenantC", "entry 2 has an empty key"),
    ("key1:", "entry 1 has an empty tenant"),
    ("key1:a,key2", "entry 2 has no ':'"),
    ("k:a, k:b", "entry 2 repeats a key"),
])
def test_a_malformed_key_map_stops_the_settings_naming_the_variable(keys, says):
    with pytest.raises(ValueError, match=f"^OPTIMEM_API_KEYS {says}"):
        Settings.from_env({"OPTIMEM_API_KEYS": keys})
    with pytest.raises(ValueError, match="OPTIMEM_API_KEYS"):
        Settings(api_keys=keys)


@pytest.mark.parametrize("keys", ["k1:a,:c", "k1", "k:a,k:b"])
def test_optimem_serve_stops_on_a_malformed_key_map_with_a_clear_message(keys, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPTIMEM_API_KEYS": keys, "OPTIMEM_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "optimem.api.cli", "serve", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("optimem: OPTIMEM_API_KEYS entry") and "Traceback" not in done.stderr


def test_the_body_limit_is_just_above_the_largest_valid_append():
    s = Settings()
    largest = 1000 * (s.max_turn_chars + 100)          # 1000 turns of max_turn_chars plus their JSON keys
    assert largest < s.body_limit() < largest * 1.01
    assert Settings(max_turn_chars=10).body_limit() < 1_000_000
    assert Settings(max_body_bytes=5000).body_limit() == 5000


def test_settings_are_mutable_and_name_tenants():
    s = Settings()
    s.api_keys = "k1:alice, k2:bob,"
    assert s.tenants() == {"k1": "alice", "k2": "bob"}
    assert Settings().tenants() == {}


def test_every_optimem_variable_in_the_package_is_a_setting():
    """A message that tells the user to set OPTIMEM_X names a real setting."""
    for module in discover().values():
        for name in re.findall(r"OPTIMEM_([A-Z][A-Z0-9_]*)", module.path.read_text(encoding="utf-8")):
            assert name.lower() in FIELDS, f"{module.path.relative_to(ROOT)} names OPTIMEM_{name}, not a setting"


def test_only_settings_reads_optimem_variables():
    readers = {}
    for module in discover().values():
        found = [a or b for a, b in READS_ENV.findall(module.path.read_text(encoding="utf-8"))]
        if found:
            readers[module.path.relative_to(ROOT).as_posix()] = found
    assert not readers, f"read OPTIMEM_* through Settings.from_env(), not the environment: {readers}"


# --- backends.load(settings) ------------------------------------------------------------------------

def test_load_builds_the_cpu_reader_at_the_family_ladder():
    reader = backends.load(Settings(family="qwen2.5-vl"))
    assert reader.name == "rapidocr" and reader.ladder is QWEN25_VL


def test_load_never_reads_the_environment(env, tmp_path):
    env.setenv("OPTIMEM_VLLM_URL", "http://127.0.0.1:9")
    env.setenv("OPTIMEM_MODEL_PATH", str(tmp_path))
    with pytest.raises(ModelUnavailable, match="OPTIMEM_VLLM_URL is not set"):
        backends.load(Settings(backend="vllm"))
    with pytest.raises(ModelUnavailable, match="OPTIMEM_MODEL_PATH is not set"):
        backends.load(Settings(backend="deepseek-ocr2", device="cpu"))


def test_load_names_an_unknown_backend():
    with pytest.raises(ModelUnavailable, match="unknown backend 'tesseract' in OPTIMEM_BACKEND"):
        backends.load(Settings(backend="tesseract"))


def test_as_env_round_trips_through_from_env():
    from optimem.settings import as_env

    env = as_env(redis_url="unix:///tmp/r.sock", worker=False, recent_tokens=700)
    assert env == {"OPTIMEM_REDIS_URL": "unix:///tmp/r.sock", "OPTIMEM_WORKER": "0", "OPTIMEM_RECENT_TOKENS": "700"}
    s = Settings.from_env(env)
    assert (s.redis_url, s.worker, s.recent_tokens) == ("unix:///tmp/r.sock", False, 700)
    with pytest.raises(TypeError):
        as_env(no_such_setting=1)
