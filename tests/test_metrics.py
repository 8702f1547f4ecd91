"""GET /metrics: Prometheus text, behind the same API keys as the rest; counters move with traffic.
Every response carries an X-Request-Id (the caller's, if sane); JSON log lines carry it, the tenant
and the session."""
from __future__ import annotations

import io
import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from optimem.api.metrics import Context, JsonLines
from optimem.memory.lab.corpus import longest


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_appends_seals_recalls_reads_and_the_backlog(api, memory):
    assert api.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    before = samples(api.get("/metrics").text)
    # forget-for-real: its pages are read ahead (a keep-source session's are not: issue 9 item 4)
    api.post("/v1/sessions", json={"id": "m1", "curve": "keep", "keep_source": False})
    got = api.post("/v1/sessions/m1/turns", json={"turns": longest()[1][:120]}).json()
    assert got["sealed_pages"]
    recall = api.post("/v1/sessions/m1/recall", json={"turn": 0}).json()
    assert recall["pages_read"] == 1
    api.post("/v1/sessions/m1/recall", json={"turn": 0})       # the page again: a cache hit
    scrape = api.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    after = samples(scrape.text)

    def moved(name, by=1, **labels):
        assert value(after, name, **labels) - value(before, name, **labels) >= by, (name, labels)

    moved("optimem_http_requests_total", method="POST", route="/v1/sessions/{session}/turns", status="200")
    moved("optimem_http_requests_total", 2, method="POST", route="/v1/sessions/{session}/recall", status="200")
    moved("optimem_http_request_seconds_count", method="POST", route="/v1/sessions/{session}/turns")
    moved("optimem_turns_appended_total", 120)
    moved("optimem_appends_total")
    moved("optimem_pages_sealed_total", len(got["sealed_pages"]))
    moved("optimem_seals_total")
    moved("optimem_recalls_total", 2)
    moved("optimem_recall_seconds_count", 2)
    moved("optimem_page_reads_total")
    moved("optimem_page_read_seconds_count")
    moved("optimem_cache_lookups_total", cache="decoded", result="hit")
    moved("optimem_jobs_enqueued_total")
    for name in ("optimem_jobs_backlog", "optimem_jobs_oldest_seconds", "optimem_jobs_shed_total", "optimem_jobs_max"):
        assert (name, ()) in after, name
    assert value(after, "optimem_jobs_backlog") >= 1          # no worker in tests: the read-ahead waits
    # no raw paths as labels: an unknown path is one "unmatched" series
    api.get("/no/such/path/123")
    assert 'route="/no/such/path/123"' not in api.get("/metrics").text


def test_metrics_are_open_without_keys(api, memory):
    memory.settings.api_keys = ""
    got = api.get("/metrics", headers={"Authorization": ""})
    assert got.status_code == 200 and "optimem_http_requests_total" in got.text


def test_request_ids_and_json_log_lines(api, memory, tenant):
    given = api.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = api.get("/healthz", headers={"X-Request-Id": "bad id \n with spaces"}).headers["x-request-id"]
    assert made != "bad id \n with spaces" and len(made) == 32
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Context())
    handler.setFormatter(JsonLines())
    access = logging.getLogger("optimem.access")
    old_level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        api.post("/v1/sessions", json={"id": "logged"})
        api.get("/v1/sessions/logged", headers={"X-Request-Id": "req-42"})
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == "req-42"]
    assert mine and mine[0]["tenant"] == tenant and mine[0]["session"] == "logged"
    assert mine[0]["route"] == "/v1/sessions/{session}" and mine[0]["status"] == 200
