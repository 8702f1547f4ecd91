"""Shared fixtures: one real embedded Redis for the run, a Memory per test in its own tenant."""
from __future__ import annotations

import hashlib
import re

import pytest

from optimem.memory.redis_server import EmbeddedRedis
from optimem.memory.service import Memory
from optimem.settings import Settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("optimem-data")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reader():
    from optimem.model.rapidocr_backend import RapidOcrBackend

    return RapidOcrBackend()


def settings_for(server: EmbeddedRedis, tmp_path, **overrides) -> Settings:
    values = dict(data_dir=tmp_path, redis_url=f"unix://{server.socket}", worker=False, recent_tokens=300,
                  seal_background=False)   # pages sealed inside append: tests read them at once
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def tenant(request) -> str:
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9]", "", request.node.name)[:40] + digest


@pytest.fixture
def memory(redis_server, reader, tmp_path):
    m = Memory(settings_for(redis_server, tmp_path), backend=reader).open()
    yield m
    m.close()


@pytest.fixture
def api(memory, tenant):
    """The HTTP API over ``memory``, authenticated as this test's own tenant."""
    from fastapi.testclient import TestClient

    from optimem.api.app import create_app

    memory.settings.api_keys = f"key-{tenant}:{tenant}"
    with TestClient(create_app(memory)) as client:
        client.headers["Authorization"] = f"Bearer key-{tenant}"
        yield client
