"""Fair shares between tenants: at most so many recalls of one tenant at once, and so many appends
a second, counted in Redis so that every API process sharing the store shares the limits.

Why in Redis: a per-process count lets each of N processes admit the whole cap, so one tenant's
burst spread over the load balancer would still take every process's recall slots.

    om:quota:{tenant}:recalls        ZSET    lease token -> expiry (ms, the server's clock): the
                                             tenant's recalls running now; a lease a dead process
                                             never gave back expires by itself
    om:quota:{tenant}:appends:{sec}  STRING  append calls of the tenant in that second (a fixed
                                             window of the API process's clock; TTL 2 s)
"""
from __future__ import annotations

import os
import time

# KEYS[1] the tenant's leases; ARGV: cap, token, lease ms. Expired leases go first; the clock is
# the server's, so processes on several machines agree on it.
_TAKE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def recalls_key(tenant: str) -> str:
    return f"om:quota:{{{tenant}}}:recalls"


def appends_key(tenant: str, second: int) -> str:
    return f"om:quota:{{{tenant}}}:appends:{second}"


class Quotas:
    """Per-tenant caps over one Redis. ``recalls``: a tenant's recalls at once, across processes;
    ``appends_per_s``: its append calls a second. 0: no cap. ``lease_s``: how long a recall's
    lease lives if it is never given back (a process killed mid-recall)."""

    def __init__(self, r, recalls: int, appends_per_s: int, lease_s: float):
        self.r, self.recalls, self.appends_per_s = r, int(recalls), int(appends_per_s)
        self.lease_ms = max(1000, int(lease_s * 1000))
        self._take = r.register_script(_TAKE)

    def take_recall(self, tenant: str) -> str | None:
        """A lease on one of the tenant's recall places ("" when there is no cap), or None when the
        tenant has ``recalls`` running already."""
        if self.recalls <= 0:
            return ""
        token = os.urandom(8).hex()
        return token if self._take(keys=[recalls_key(tenant)], args=[self.recalls, token, self.lease_ms]) else None

    def give_back_recall(self, tenant: str, token: str) -> None:
        if token:
            self.r.zrem(recalls_key(tenant), token)

    def take_append(self, tenant: str) -> float | None:
        """None when the tenant may append now; else the seconds until it may (the window's end)."""
        if self.appends_per_s <= 0:
            return None
        now = time.time()
        second = int(now)
        with self.r.pipeline(transaction=False) as p:
            p.incr(appends_key(tenant, second))
            p.expire(appends_key(tenant, second), 2)
            count = p.execute()[0]
        return None if count <= self.appends_per_s else second + 1 - now
