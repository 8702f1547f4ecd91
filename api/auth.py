"""Who is calling: one dependency for the JSON API, the proxy and the inspector page.

An API key maps to a tenant (OPTIMEM_API_KEYS). Programs send it as ``Authorization: Bearer <key>``;
a browser (the inspector) sends it as the password of HTTP Basic auth, which it asks for itself
when told ``WWW-Authenticate: Basic``, and then sends with every image the page loads.
"""
from __future__ import annotations

import base64
import binascii
from typing import Optional

from fastapi import Header, HTTPException, Request


def api_key(authorization: str | None) -> str:
    """The key in a Bearer or Basic (any user name, key as password) Authorization header."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def tenant(request: Request,
           authorization: Optional[str] = Header(None, description="Bearer API key, when keys are set")) -> str:
    """The caller's tenant; 'default' when the server has no API keys."""
    keys = request.app.state.memory.settings.tenants()
    if not keys:
        return "default"
    key = api_key(authorization)
    if key not in keys:
        raise HTTPException(401, "missing or unknown API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": 'Basic realm="optimem", charset="UTF-8"'})
    return keys[key]
