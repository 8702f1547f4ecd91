"""Every Prometheus metric optimem exports, defined in this one module (prometheus-client).

Memory code counts through ``MeteredStore`` (the store with a counter on the calls that mean
appends, seals, page reads and cache lookups), so nothing else in memory/ imports this module; the
API counts requests and recalls (api/metrics.py) and renders the job backlog, read from Redis at
scrape time, alongside (``job_families``).

Counters are per process; the backlog, its age and the shed jobs are global (they live in Redis).
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from optimem.memory.store import Store

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# -- HTTP (api/metrics.py) --------------------------------------------------------------------
REQUESTS = Counter("optimem_http_requests_total", "HTTP requests answered, by method, route template and status",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("optimem_http_request_seconds", "HTTP request latency by method and route template",
                            ["method", "route"], buckets=SECONDS)
RECALLS = Counter("optimem_recalls_total", "Recalls answered")
RECALL_SECONDS = Histogram("optimem_recall_seconds", "Recall time, as the recall reports it", buckets=SECONDS)
RECALL_PAGES = Counter("optimem_recall_pages_total", "Pages recalls wanted, by whether they were read in time "
                       "(read) or not (unread: reported as pages_unread)", ["result"])
RECALLS_REFUSED = Counter("optimem_recalls_refused_total", "Recalls answered 503: every recall slot was taken")
REFUSED = Counter("optimem_refused_total", "Requests refused by reason: recall_slots (503, this process's recall "
                  "slots all taken), tenant_recalls and tenant_appends (429, the tenant's fair share: "
                  "OPTIMEM_TENANT_RECALLS, OPTIMEM_TENANT_APPENDS_PER_S)", ["reason"])

# -- memory (MeteredStore) --------------------------------------------------------------------
APPENDED = Counter("optimem_turns_appended_total", "Turns appended")
APPENDS = Counter("optimem_appends_total", "Append calls (one or more turns each)")
SEALED = Counter("optimem_pages_sealed_total", "Pages sealed")
SEALS = Counter("optimem_seals_total", "Seal transactions committed")
PAGE_READS = Counter("optimem_page_reads_total", "Pages read (decoded) by this process's backend")
PAGE_READ_SECONDS = Histogram("optimem_page_read_seconds", "Model seconds per page read, as the backend reports",
                              buckets=SECONDS)
CACHE = Counter("optimem_cache_lookups_total", "Cache lookups by cache (decoded text, visual tokens) and result "
                "(hit, miss)", ["cache", "result"])
JOBS_SENT = Counter("optimem_jobs_enqueued_total", "Model jobs (read-ahead) sent by this process")


class MeteredStore(Store):
    """``Store`` that counts what it is asked to do; behaviour is unchanged."""

    def append(self, k, turns):
        first = super().append(k, turns)
        APPENDS.inc()
        APPENDED.inc(len(turns))
        return first

    def seal(self, k, expect, pages, turns, keep_source, sealed_tokens=0):
        super().seal(k, expect, pages, turns, keep_source, sealed_tokens)
        SEALS.inc()
        SEALED.inc(len(pages))

    def cached_decoded(self, k, page, tier, reader):
        hit = super().cached_decoded(k, page, tier, reader)
        CACHE.labels("decoded", "miss" if hit is None else "hit").inc()
        return hit

    def cache_decoded(self, k, page, tier, reader, decoded):
        super().cache_decoded(k, page, tier, reader, decoded)
        PAGE_READS.inc()
        try:
            PAGE_READ_SECONDS.observe(float(decoded.get("seconds") or 0.0))
        except (TypeError, ValueError):
            pass

    def cached_tokens(self, k, unit, tier, revision):
        hit = super().cached_tokens(k, unit, tier, revision)
        CACHE.labels("tokens", "miss" if hit is None else "hit").inc()
        return hit

    def enqueue(self, k, jobs, noted=None):
        shed = super().enqueue(k, jobs, noted)
        JOBS_SENT.inc(len(jobs))
        return shed


def job_families(backlog: int, oldest_s: float, shed: int, cap: int) -> list:
    """The job stream's state (read from Redis at scrape time) as metric families."""
    out = [GaugeMetricFamily("optimem_jobs_backlog", "Model jobs waiting or in progress, all tenants", value=backlog),
           GaugeMetricFamily("optimem_jobs_oldest_seconds", "Age of the oldest job waiting or in progress (0: none)",
                             value=oldest_s),
           GaugeMetricFamily("optimem_jobs_max", "Jobs kept waiting before the oldest are shed "
                             "(OPTIMEM_JOBS_MAX)", value=cap)]
    shed_family = CounterMetricFamily("optimem_jobs_shed", "Read-ahead jobs dropped (oldest first) because the "
                                      "stream was full, since the store was created")
    shed_family.add_metric([], shed)
    return out + [shed_family]
