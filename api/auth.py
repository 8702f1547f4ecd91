"""Who is calling: one dependency for the JSON API, the proxy and the inspector page.

An API key maps to a tenant (OPTIMEM_API_KEYS, parsed and checked once: ``Settings.tenants``).
Programs send it as ``Authorization: Bearer <key>``; a browser (the inspector) sends it as the
password of HTTP Basic auth, which it asks for itself when told ``WWW-Authenticate: Basic``, and then
sends with every image the page loads. An empty key is never looked up: no header, ``Bearer `` and
Basic ``x:`` are all "no key".
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Optional

from fastapi import Header, HTTPException, Request

ASK_FOR_KEY = {"WWW-Authenticate": 'Basic realm="optimem", charset="UTF-8"'}
NO_KEY = "missing or unknown API key: send 'Authorization: Bearer <key>'"


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


def tenant(request: Request,
           authorization: Optional[str] = Header(None, description="Bearer API key, when keys are set")) -> str:
    """The caller's tenant; 'default' when the server has no API keys."""
    found = tenant_of(request.app.state.memory.settings.tenants(), authorization)
    if found is None:
        raise HTTPException(401, NO_KEY, headers=ASK_FOR_KEY)
    return found
