"""Scoped API keys: every route with each scope (read, write, admin, none), 403 where the scope
falls short and never where it is enough; MCP tools check the same scopes."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from optimem.api.app import create_app
from optimem.api.auth import NEEDS
from optimem.settings import SCOPES, Settings

KEYS = {"read": "kr", "write": "kw", "admin": "ka", None: "kf"}    # None: a key without a scope
OPEN = {("GET", "/healthz")}                                      # liveness: no key needed
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
VALUES = {"session": "s", "page": "0", "tier": "mosaic4", "group": "0", "unit": "0", "turn": "0"}
QUERY = {("GET", "/v1/sessions/{session}/tokens/{unit}"): {"tier": "g1024"},
         ("DELETE", "/v1/sessions/{session}/turns"): {"from": "0", "to": "0"}}
BODY = {("POST", "/v1/sessions"): {"id": "made"},
        ("POST", "/v1/sessions/{session}/turns"): {"turns": [{"role": "user", "content": "hi"}]},
        ("POST", "/v1/sessions/{session}/recall"): {"query": "hello"},
        ("PUT", "/v1/sessions/{session}/curve"): {"curve": "keep"},
        ("POST", "/v1/chat/completions"): {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        ("POST", "/mcp"): {"jsonrpc": "2.0", "id": 1, "method": "ping"}}


@pytest.fixture
def app(memory, tenant):
    memory.settings.api_keys = ",".join(f"{key}-{tenant}:{tenant}" + (f":{scope}" if scope else "")
                                        for scope, key in KEYS.items())
    with TestClient(create_app(memory)) as client:
        yield client


def routes(client) -> set[tuple[str, str]]:
    """Every (method, route template) the app serves, from its router, HEAD aside."""
    found = set()
    for method, path in NEEDS:    # the table's own routes must exist ...
        if path != "/mcp" or method == "POST":   # (GET /mcp would open an event stream)
            found.add((method, path))
    doc = client.get("/openapi.json").json()["paths"]
    for path, ops in doc.items():   # ... and every documented route must be in the table
        found |= {(m.upper(), path) for m in ops}
    for path in ("/inspect", "/inspect/{session}", "/inspect/{session}/curve.png", "/mcp"):
        found.add(("GET" if path != "/mcp" else "POST", path))
    return found - OPEN


def test_every_route_is_in_the_scope_table(app):
    missing = sorted(r for r in routes(app) if r not in NEEDS and r[1] not in DOCS)
    assert not missing, f"routes without a scope in api/auth.py NEEDS (they would need admin): {missing}"


def request(client, method, template, key, tenant):
    path = re.sub(r"\{(\w+)\}", lambda m: VALUES[m.group(1)], template)
    params = dict(QUERY.get((method, template), {}))
    if (method, template) == ("DELETE", "/v1/sessions"):
        params = {"all": "true", "confirm": tenant}
    headers = {"Authorization": f"Bearer {key}-{tenant}"}
    if template == "/mcp":
        headers["Accept"] = "application/json, text/event-stream"
    body = BODY.get((method, template))
    return client.request(method, path, params=params, headers=headers,
                          **({"json": body} if body is not None else
                             {"content": b"{}"} if method in ("POST", "PUT") else {}))


@pytest.mark.parametrize("scope", list(KEYS))
def test_each_scope_on_every_route_403_exactly_where_it_falls_short(app, memory, tenant, scope):
    has = scope or "admin"
    checked = 0
    for method, template in sorted(r for r in routes(app) if r[1] not in DOCS):
        memory.create_session("s", tenant=tenant) if "s" not in memory.sessions(tenant=tenant) else None
        r = request(app, method, template, KEYS[scope], tenant)
        needed = NEEDS[(method, template)]
        if SCOPES.index(has) >= SCOPES.index(needed):
            assert r.status_code not in (401, 403), (method, template, scope, r.status_code, r.text)
        else:
            assert r.status_code == 403, (method, template, scope, r.status_code, r.text)
            body = r.json()
            detail = body["detail"] if "detail" in body else body["error"]["message"]   # the proxy: OpenAI's shape
            assert f"scope is '{has}'" in detail and f"needs '{needed}'" in detail, detail
        checked += 1
    assert checked >= 23          # every route but /healthz and the docs


def test_the_table_says_what_the_issue_asks(app):
    reads = {p for (m, p), s in NEEDS.items() if s == "read"}
    assert {"/v1/sessions/{session}/context", "/v1/sessions/{session}/recall", "/metrics", "/inspect/{session}",
            "/v1/sessions/{session}/pages/{page}/image"} <= reads
    assert NEEDS[("POST", "/v1/sessions/{session}/turns")] == NEEDS[("PUT", "/v1/sessions/{session}/curve")] == "write"
    assert {NEEDS[("DELETE", "/v1/sessions/{session}")], NEEDS[("DELETE", "/v1/sessions/{session}/turns/{turn}")],
            NEEDS[("POST", "/v1/sessions/{session}/import")], NEEDS[("DELETE", "/v1/sessions")]} == {"admin"}


def mcp_tool(client, key, tenant, name, arguments):
    r = client.post("/mcp", headers={"Authorization": f"Bearer {key}-{tenant}",
                                      "Accept": "application/json, text/event-stream"},
                    json={"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                          "params": {"name": name, "arguments": arguments}})
    assert r.status_code == 200, r.text
    return r.json()["result"]


def test_mcp_tools_check_the_keys_scope(app, memory, tenant):
    refused = mcp_tool(app, "kr", tenant, "remember", {"session": "m", "text": "hello"})
    assert refused["isError"] and "scope is 'read'; remember needs 'write'" in refused["content"][0]["text"]
    assert "m" not in memory.sessions(tenant=tenant)
    assert not mcp_tool(app, "kw", tenant, "remember", {"session": "m", "text": "hello"}).get("isError")
    assert not mcp_tool(app, "kr", tenant, "sessions", {}).get("isError")
    refused = mcp_tool(app, "kw", tenant, "forget_session", {"session": "m", "confirm": True})
    assert refused["isError"] and "needs 'admin'" in refused["content"][0]["text"]
    assert not mcp_tool(app, "ka", tenant, "forget_session", {"session": "m", "confirm": True}).get("isError")
    assert "m" not in memory.sessions(tenant=tenant)


@pytest.mark.parametrize("keys, words", [("k:t:reader", "scope 'reader'"), ("k:t:", None), ("k:t:write", None)])
def test_a_scope_must_be_one_of_the_three(keys, words):
    if words is None:
        assert Settings(api_keys=keys).scopes()["k"] in ("admin", "write")
    else:
        with pytest.raises(ValueError, match=words):
            Settings(api_keys=keys)


def test_the_mcp_forget_turns_tool_needs_admin_and_confirm(app, memory, tenant):
    memory.create_session("f", tenant=tenant)
    memory.append("f", [{"role": "user", "content": "my pin is 8812"}, {"role": "assistant", "content": "ok"}],
                  tenant=tenant)
    refused = mcp_tool(app, "kw", tenant, "forget_turns", {"session": "f", "turn": 0, "confirm": True})
    assert refused["isError"] and "needs 'admin'" in refused["content"][0]["text"]
    unconfirmed = mcp_tool(app, "ka", tenant, "forget_turns", {"session": "f", "turn": 0})
    assert unconfirmed["isError"] and "confirm=true" in unconfirmed["content"][0]["text"]
    assert memory.forgotten("f", tenant=tenant) == set()
    done = mcp_tool(app, "ka", tenant, "forget_turns", {"session": "f", "turn": 0, "confirm": True})
    assert not done.get("isError") and done["structuredContent"]["turns"] == [0]
    assert memory.forgotten("f", tenant=tenant) == {0}
    assert "8812" not in memory.context("f", tenant=tenant).model_dump_json()
