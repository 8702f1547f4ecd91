"""What route handlers get from a request: the Memory the app serves, and links to what it serves."""
from __future__ import annotations

from urllib.parse import quote

from fastapi import Request

from optimem.memory.service import Memory


def memory(request: Request) -> Memory:
    return request.app.state.memory


class HttpLinks:
    """Where this API serves a session's images and visual tokens (memory.context.Links)."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")

    def _session(self, session: str) -> str:
        return f"{self.base}/v1/sessions/{quote(session)}"

    def page(self, session: str, page: int, tier: str) -> str:
        return f"{self._session(session)}/pages/{page}/image?tier={tier}"

    def mosaic(self, session: str, tier: str, group: int) -> str:
        return f"{self._session(session)}/mosaics/{tier}/{group}/image"

    def tokens(self, session: str, unit: str, tier: str) -> str:
        return f"{self._session(session)}/tokens/{unit}?tier={tier}"


def links(request: Request) -> HttpLinks:
    return HttpLinks(str(request.base_url))
