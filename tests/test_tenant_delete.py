"""Deleting everything of a tenant in one call: every session of the key's tenant goes, with all
its keys, and nothing of another tenant's."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import optimem
from optimem.api.app import create_app
from optimem.memory.lab.corpus import longest


@pytest.fixture
def two(memory, tenant):
    """The API with two tenants: (client of tenant a, client of tenant b, a's name, b's name)."""
    a, b = f"{tenant}a", f"{tenant}b"
    memory.settings.api_keys = f"ka-{tenant}:{a},kb-{tenant}:{b}"
    with TestClient(create_app(memory)) as http:
        yield (lambda key: {"Authorization": f"Bearer {key}-{tenant}"}), http, a, b


def fill(http, headers, sid, turns):
    assert http.post("/v1/sessions", json={"id": sid}, headers=headers).status_code == 201
    assert http.post(f"/v1/sessions/{sid}/turns", json={"turns": turns}, headers=headers).status_code == 200


def value(r, key):
    """A key's content, whatever its type (DUMP is not stable: a hash being rehashed dumps in another order)."""
    kind = r.type(key)
    return {b"string": r.get, b"hash": r.hgetall, b"set": r.smembers,
            b"zset": lambda k: r.zrange(k, 0, -1, withscores=True)}[kind](key)


def keys_of(memory, tenant) -> list[bytes]:
    return sorted(memory.store.r.scan_iter(match=f"om:{{{tenant}:*", count=1000))


def test_one_call_deletes_every_session_of_the_tenant_and_nothing_of_another(two, memory):
    auth, http, a, b = two
    chat = longest()[1][:200]
    for sid in ("s1", "s2", "shared-name"):
        fill(http, auth("ka"), sid, chat)
    fill(http, auth("kb"), "shared-name", chat)
    fill(http, auth("kb"), "b-only", chat)
    page_b = http.get("/v1/sessions/shared-name/pages/0/image?tier=full", headers=auth("kb")).content
    recall_b = http.post("/v1/sessions/b-only/recall", json={"query": "hello"}, headers=auth("kb")).json()["hits"]
    before_b = {key: value(memory.store.r, key) for key in keys_of(memory, b)}
    assert keys_of(memory, a) and before_b and recall_b

    r = http.delete(f"/v1/sessions?all=true&confirm={a}", headers=auth("ka"))
    assert r.status_code == 200, r.text
    assert r.json() == {"tenant": a, "deleted": 3}
    assert http.get("/v1/sessions", headers=auth("ka")).json() == {"sessions": []}
    assert keys_of(memory, a) == []                              # every key of every session of a
    assert memory.store.r.exists(f"om:sessions:{{{a}}}") == 0
    # b: the same keys with the same values, the same page, the same recall
    assert {key: value(memory.store.r, key) for key in keys_of(memory, b)} == before_b
    assert http.get("/v1/sessions", headers=auth("kb")).json() == {"sessions": ["b-only", "shared-name"]}
    assert http.get("/v1/sessions/shared-name/pages/0/image?tier=full", headers=auth("kb")).content == page_b
    again = http.post("/v1/sessions/b-only/recall", json={"query": "hello"}, headers=auth("kb")).json()["hits"]
    assert [(h["turn"], h["text"]) for h in again] == [(h["turn"], h["text"]) for h in recall_b]


@pytest.mark.parametrize("query", ["", "?all=true", "?all=false&confirm={a}", "?all=true&confirm={b}",
                                   "?all=true&confirm=default"])
def test_without_all_and_the_callers_own_tenant_named_nothing_is_deleted(two, query):
    auth, http, a, b = two
    fill(http, auth("ka"), "keep", [{"role": "user", "content": "still here"}])
    r = http.delete("/v1/sessions" + query.format(a=a, b=b), headers=auth("ka"))
    assert r.status_code == 422 and f"confirm={a}" in r.json()["detail"]
    assert http.get("/v1/sessions", headers=auth("ka")).json() == {"sessions": ["keep"]}


def test_the_client_deletes_its_tenant(two, memory):
    auth, http, a, b = two
    fill(http, auth("ka"), "x", [{"role": "user", "content": "hi"}])
    fill(http, auth("kb"), "y", [{"role": "user", "content": "hi"}])
    with optimem.Client("http://testserver", api_key=f"ka-{a[:-1]}", http=http) as client:
        assert client.delete_all_sessions(a) == 1
        assert client.sessions() == []
    assert memory.sessions(tenant=b) == ["y"]
