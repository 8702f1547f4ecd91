"""Before any route reads a request: the key (never the empty key), then a bounded body; and /healthz
says when the store is down (issue 25, items 1, 2 and 4)."""
from __future__ import annotations

import base64
import socket

import httpx
import pytest
from fastapi.testclient import TestClient

from optimem.api.app import create_app
from optimem.memory.redis_server import EmbeddedRedis
from optimem.memory.service import Memory
from tests.conftest import settings_for
from tests.live import serve


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer", basic("x", ""), "Basic !!", "Token abc"])
def test_no_key_in_any_form_is_a_401_and_hides_the_keyed_health_fields(api, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    api.headers.pop("Authorization")
    assert api.get("/v1/sessions", headers=headers).status_code == 401
    assert api.post("/v1/sessions", json={"id": "s"}, headers=headers).status_code == 401
    health = api.get("/healthz", headers=headers).json()
    assert health["status"] == "ok" and "jobs_backlog" not in health


def test_a_key_map_with_an_empty_key_stops_the_app_before_it_serves(memory):
    memory.settings.api_keys = "key1:tenantA,:tenantC"
    with pytest.raises(ValueError, match="OPTIMEM_API_KEYS entry 2 has an empty key"):
        create_app(memory)


def test_a_memory_from_the_environment_refuses_a_malformed_key_map(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTIMEM_API_KEYS", "k1:a,k1:b")
    monkeypatch.setenv("OPTIMEM_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="OPTIMEM_API_KEYS entry 2 repeats a key"):
        Memory()


@pytest.mark.parametrize("path", ["/v1/sessions/s1/turns", "/v1/sessions", "/v1/chat/completions"])
def test_malformed_json_without_a_key_is_a_401_not_a_422(api, path):
    api.headers.pop("Authorization")
    r = api.post(path, content=b'{"turns": [ not json', headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Basic")
    if path == "/v1/chat/completions":
        assert r.json()["error"]["type"] == "authentication_error"


def test_a_body_over_the_limit_is_a_413_by_its_length_or_while_it_is_read(memory, tenant):
    memory.settings.api_keys = f"key-{tenant}:{tenant}"
    memory.settings.max_body_bytes = 200_000
    big = b'{"turns": [{"role": "user", "content": "' + b"x" * 300_000 + b'"}]}'

    def chunks():   # no Content-Length: sent chunked, refused as it arrives
        for start in range(0, len(big), 16_384):
            yield big[start:start + 16_384]

    with serve(create_app(memory)) as url, httpx.Client(base_url=url, timeout=60) as http:
        key = {"Authorization": f"Bearer key-{tenant}"}
        assert http.post("/v1/sessions", json={"id": "s1"}, headers=key).status_code == 201
        for body in (big, chunks()):
            r = http.post("/v1/sessions/s1/turns", content=body, headers={**key, "Content-Type": "application/json"})
            assert r.status_code == 413, r.text
            assert "OPTIMEM_MAX_BODY_BYTES" in r.json()["detail"]
        r = http.post("/v1/chat/completions", content=big, headers={**key, "Content-Type": "application/json"})
        assert r.status_code == 413 and "OPTIMEM_MAX_BODY_BYTES" in r.json()["error"]["message"]
        ok = http.post("/v1/sessions/s1/turns", json={"turns": [{"role": "user", "content": "x" * 150_000}]},
                       headers=key)
        assert ok.status_code == 422 and "limit" in ok.json()["detail"]   # under the body limit: read and judged
        fine = http.post("/v1/sessions/s1/turns", json={"turns": [{"role": "user", "content": "hello"}]}, headers=key)
        assert fine.status_code == 200
    assert memory.session("s1", tenant=tenant).turns == 1


def test_a_body_without_a_key_is_refused_before_it_is_read(memory, tenant):
    """Headers announcing 100 MB and no body at all: the 401 comes back at once (nothing waits for it)."""
    memory.settings.api_keys = f"key-{tenant}:{tenant}"
    with serve(create_app(memory)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/sessions/s1/turns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000000\r\n\r\n{")
            assert s.recv(4096).startswith(b"HTTP/1.1 401 ")


def test_healthz_is_503_when_the_store_does_not_answer(reader, tmp_path):
    server = EmbeddedRedis(tmp_path / "own-redis").start()
    m = Memory(settings_for(server, tmp_path), backend=reader).open()
    try:
        with TestClient(create_app(m)) as api:
            assert api.get("/healthz").json()["status"] == "ok"
            server.process.kill()                 # Redis dies (stop() would wait for the app's connections)
            server.process.wait()
            r = api.get("/healthz")
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "store unavailable" and "Redis did not answer" in r.json()["store"]
    finally:
        server.stop()
