"""Hostile input through the real HTTP API: always a clear 4xx, never a 500, never a poisoned session."""
from __future__ import annotations

import json

import pytest


def raw(api, method: str, path: str, text: str):
    """A body sent as written (NaN, Infinity and lone surrogates are not what json= would send)."""
    return api.request(method, path, content=text.encode("utf-8"), headers={"Content-Type": "application/json"})


def make(api, session: str = "s1") -> None:
    assert api.post("/v1/sessions", json={"id": session}).status_code == 201


def problem(r, status: int = 422) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str)
    return body["detail"]


# -- 1. lone surrogates ----------------------------------------------------------------------------
@pytest.mark.parametrize("turn, where", [
    ('{"role":"user","content":"emoji cut in half \\ud83d"}', "turns[0].content has a lone surrogate at character 18"),
    ('{"role":"us\\udc00er","content":"hi"}', "turns[0].role has a lone surrogate at character 2"),
])
def test_a_lone_surrogate_is_refused_with_its_position_and_the_session_stays_readable(api, turn, where):
    make(api)
    detail = problem(raw(api, "POST", "/v1/sessions/s1/turns", '{"turns":[%s]}' % turn))
    assert where in detail.replace(": has", " has")
    assert api.post("/v1/sessions/s1/turns", json={"turns": [{"role": "user", "content": "emoji 😀 whole"}]}) \
        .status_code == 200
    for path in ["/v1/sessions/s1/context", "/v1/sessions/s1/context?format=openai", "/v1/sessions/s1"]:
        assert api.get(path).status_code == 200, path
    assert api.post("/v1/sessions/s1/recall", json={"turn": "last"}).json()["hits"][0]["text"] == "emoji 😀 whole"


def test_a_whole_surrogate_pair_is_one_character_and_stored(api):
    make(api)
    assert raw(api, "POST", "/v1/sessions/s1/turns",
               '{"turns":[{"role":"user","content":"pair \\ud83d\\ude00"}]}').status_code == 200
    assert api.get("/v1/sessions/s1/context").json()["turns"][0]["content"] == "pair 😀"


@pytest.mark.parametrize("body", ['{"query":"cut \\ud83d"}', '{"turn":"last","role":"\\ud83d"}'])
def test_a_recall_with_a_lone_surrogate_is_refused(api, body):
    make(api)
    assert "lone surrogate" in problem(raw(api, "POST", "/v1/sessions/s1/recall", body))


def test_the_memory_verbs_refuse_lone_surrogates_too(memory):
    """What the proxy stores goes through Memory.append/add: the same rule, the same message."""
    from optimem.errors import BadRequest

    memory.create_session("s1")
    with pytest.raises(BadRequest, match=r"turns\[0\].content has a lone surrogate at character 4"):
        memory.add("s1", "cut \ud83d")
    with pytest.raises(BadRequest, match="query has a lone surrogate at character 0"):
        memory.recall("s1", "\udfff")
    assert memory.session("s1").turns == 0


# -- 2. parseable input that used to answer 500 ---------------------------------------------------
@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
def test_a_time_outside_the_utc_calendar_is_a_422(api, when):
    make(api)
    turn = {"role": "user", "content": "hi", "time": when}
    assert "years 1-9999" in problem(api.post("/v1/sessions/s1/turns", json={"turns": [turn]}))
    for key in ("since", "until"):
        assert "years 1-9999" in problem(api.post("/v1/sessions/s1/recall", json={key: when}))
    assert api.get("/v1/sessions/s1").json()["turns"] == 0


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v1/sessions", '{"id": NaN}'),
    ("POST", "/v1/sessions/s1/recall", '{"query": Infinity}'),
    ("POST", "/v1/sessions/s1/recall", '{"query": "x", "limit": -Infinity}'),
    ("POST", "/v1/sessions/s1/turns", '{"turns": [{"role": "user", "content": "hi", "time": NaN}]}'),
    ("POST", "/v1/sessions/s1/turns", '{"turns": [{"role": NaN, "content": Infinity}]}'),
    ("PUT", "/v1/sessions/s1/curve", '{"curve": NaN}'),
    ("POST", "/v1/sessions", '{"keep_source": NaN}'),
])
def test_nan_and_infinity_anywhere_are_a_422(api, method, path, body):
    make(api)
    r = raw(api, method, path, body)
    problem(r)
    assert "NaN" not in r.text and "Infinity" not in r.text  # the body is strict JSON
    json.loads(r.text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


@pytest.mark.parametrize("curve, words", [
    ('{"kind":"step","steps":[[0,"crops"],[NaN,"gone"]]}', "finite"),
    ('{"kind":"step","steps":[[0,"crops"],[Infinity,"gone"]]}', "finite"),
    ('{"kind":"step","steps":[[0,"crops"],[1e400,"gone"]]}', "finite"),
    ('{"kind":"step","steps":[[0,"crops"],[1e300,"gone"]]}', "finite number from 0 to"),
    ('{"kind":"exponential","half_life":Infinity}', "finite"),
    ('{"kind":"power","scale":1,"exponent":1e400}', "finite"),
    ('{"kind":"exponential","half_life":5,"junk":"%s"}' % ("x" * 1_000_000), "unknown key"),
    ('{"kind":"step","steps":[[0,"crops"]],"note":1}', "unknown key"),
    ('"%s"' % ("[" * 20_000), "at most"),
    ('"%s"' % ("[" * 4000 + "]" * 4000), "unknown curve preset"),
])
def test_a_bad_curve_is_refused_and_never_stored(api, curve, words):
    make(api)
    r = raw(api, "PUT", "/v1/sessions/s1/curve", '{"curve": %s}' % curve)
    assert words in problem(r)
    assert len(r.content) < 2000  # nothing echoed back at length
    r = raw(api, "POST", "/v1/sessions", '{"id": "s2", "curve": %s}' % curve)
    assert words in problem(r)
    assert api.get("/v1/sessions/s2").status_code == 404
    assert api.get("/inspect/s1/curve.png").status_code == 200


def test_a_curve_at_the_age_limit_still_draws(api):
    make(api)
    curve = {"kind": "step", "steps": [[0, "crops"], [1e12, "gone"]]}
    assert api.put("/v1/sessions/s1/curve", json={"curve": curve}).status_code == 200
    r = api.get("/inspect/s1/curve.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


# -- 3. the contract -------------------------------------------------------------------------------
def test_every_422_is_the_documented_problem(api):
    make(api)
    doc = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(doc)
    assert set(doc["components"]["schemas"]["Problem"]["properties"]) == {"detail", "errors"}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if path.startswith("/v1/chat") or path == "/v1/models":
                assert "422" not in op["responses"]
                continue
            if "422" in op["responses"]:
                assert op["responses"]["422"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"}, (method, path)
    r = api.post("/v1/sessions/s1/turns", json={"turns": [{"role": 3}]})
    body = r.json()
    assert r.status_code == 422 and isinstance(body["detail"], str)
    assert {tuple(e["loc"]) for e in body["errors"]} >= {("body", "turns", 0, "role"), ("body", "turns", 0, "content")}
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
    assert isinstance(api.put("/v1/sessions/s1/curve", json={"curve": "nope"}).json()["detail"], str)


@pytest.mark.parametrize("body", [{"keep_source": 0}, {"keep_source": "yes"}])
def test_keep_source_must_be_a_boolean(api, body):
    assert "keep_source" in problem(api.post("/v1/sessions", json=body))


@pytest.mark.parametrize("body", [{"turn": False}, {"turn": True}, {"turn": 1.0}, {"turn": "0"},
                                  {"query": "x", "limit": "5"}, {"query": "x", "limit": 5.5}])
def test_recall_turn_and_limit_are_strict(api, body):
    make(api)
    problem(api.post("/v1/sessions/s1/recall", json=body))


def test_the_proxy_refuses_a_bad_request_in_openais_shape(api):
    for body in [{"model": "m"}, {"model": "m", "messages": []}, {"model": 3, "messages": "hi"}]:
        r = api.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["message"] and error["param"]
    r = raw(api, "POST", "/v1/chat/completions", '{"model": NaN, "messages": [{"role": "user", "content": "x"}]}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = api.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                 headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_the_proxy_refuses_a_lone_surrogate_before_the_upstream(api):
    api.app.state.memory.settings.upstream_url = "http://127.0.0.1:9/v1"  # never reached
    r = raw(api, "POST", "/v1/chat/completions",
            '{"model":"m","user":"s9","messages":[{"role":"user","content":"half \\ud83d"}]}')
    assert r.status_code == 400 and "lone surrogate at character 5" in r.json()["error"]["message"]


def test_healthz_shows_the_backlog_only_to_a_valid_key(api):
    with_key = api.get("/healthz").json()
    assert with_key["status"] == "ok" and isinstance(with_key["jobs_backlog"], int)
    for headers in [{"Authorization": ""}, {"Authorization": "Bearer wrong"}]:
        r = api.get("/healthz", headers=headers)
        assert r.status_code == 200 and "jobs_backlog" not in r.json()
