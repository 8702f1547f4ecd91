"""Who is calling: one dependency for the JSON API, the proxy and the inspector page.

An API key maps to a tenant (OPTIMEM_API_KEYS, parsed and checked once: ``Settings.tenants``).
Programs send it as ``Authorization: Bearer <key>``; a browser (the inspector) sends it as the
password of HTTP Basic auth, which it asks for itself when told ``WWW-Authenticate: Basic``, and then
sends with every image the page loads. An empty key is never looked up: no header, ``Bearer `` and
Basic ``x:`` are all "no key".

A key may carry a scope (``key:tenant:read|write|admin``): what it may do, checked here too, by the
route the request matched (``NEEDS``). ``read``: sessions, context, recall, pages, export, the
inspector, metrics; ``write`` adds creating sessions, appends, curves and the proxy (which stores
turns); ``admin`` adds deletes, forgets and imports. A key without a scope has every right; a route
not in the table needs ``admin``, so a new route is never opened to a lesser key by accident.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Optional

from fastapi import Header, HTTPException, Request

from optimem.settings import SCOPES

ASK_FOR_KEY = {"WWW-Authenticate": 'Basic realm="optimem", charset="UTF-8"'}
NO_KEY = "missing or unknown API key: send 'Authorization: Bearer <key>'"
READ, WRITE, ADMIN = SCOPES
SESSION = "/v1/sessions/{session}"
NEEDS: dict[tuple[str, str], str] = {   # (method, route template) -> the scope it needs
    ("GET", "/metrics"): READ,
    ("GET", "/v1/sessions"): READ,
    ("GET", SESSION): READ,
    ("GET", SESSION + "/context"): READ,
    ("GET", SESSION + "/pages/{page}/image"): READ,
    ("GET", SESSION + "/mosaics/{tier}/{group}/image"): READ,
    ("GET", SESSION + "/tokens/{unit}"): READ,
    ("POST", SESSION + "/recall"): READ,
    ("GET", SESSION + "/export"): READ,
    ("GET", "/inspect"): READ,
    ("GET", "/inspect/{session}"): READ,
    ("GET", "/inspect/{session}/curve.png"): READ,
    ("POST", "/inspect/{session}/forget"): ADMIN,
    ("GET", "/v1/models"): READ,
    ("GET", "/mcp"): READ, ("POST", "/mcp"): READ, ("DELETE", "/mcp"): READ,   # each tool checks its own
    ("POST", "/v1/sessions"): WRITE,
    ("POST", SESSION + "/turns"): WRITE,
    ("PUT", SESSION + "/curve"): WRITE,
    ("POST", "/v1/chat/completions"): WRITE,
    ("DELETE", SESSION): ADMIN,
    ("DELETE", "/v1/sessions"): ADMIN,
    ("DELETE", SESSION + "/turns/{turn}"): ADMIN,
    ("DELETE", SESSION + "/turns"): ADMIN,
    ("POST", SESSION + "/import"): ADMIN,
}


def api_key(authorization: str | None) -> str:
    """The key in a Bearer or Basic (any user name, key as password) Authorization header; "" if none."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def tenant_of(keys: Mapping[str, str], authorization: str | None) -> str | None:
    """The caller's tenant: 'default' when the server has no keys; None for no key or an unknown one."""
    if not keys:
        return "default"
    key = api_key(authorization)
    return keys.get(key) if key else None


def scope_of(scopes: Mapping[str, str], authorization: str | None) -> str:
    """What the caller's key may do: its scope, else every right (no keys set, or a key without one)."""
    return scopes.get(api_key(authorization), ADMIN) if scopes else ADMIN


def allows(scope: str, needed: str) -> bool:
    return SCOPES.index(scope) >= SCOPES.index(needed)


def tenant(request: Request,
           authorization: Optional[str] = Header(None, description="Bearer API key, when keys are set")) -> str:
    """The caller's tenant ('default' when the server has no API keys), once its key's scope allows
    the route it asks for (403 naming both, else)."""
    settings = request.app.state.memory.settings
    found = tenant_of(settings.tenants(), authorization)
    if found is None:
        raise HTTPException(401, NO_KEY, headers=ASK_FOR_KEY)
    route = getattr(request.scope.get("route"), "path", None) or request.url.path
    method = "GET" if request.method == "HEAD" else request.method
    needed, have = NEEDS.get((method, route), ADMIN), scope_of(settings.scopes(), authorization)
    if not allows(have, needed):
        raise HTTPException(403, f"this API key's scope is '{have}'; {method} {route} needs '{needed}' "
                                 f"(OPTIMEM_API_KEYS entry key:tenant:{needed}, or no scope for every right)")
    return found
