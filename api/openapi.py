"""The OpenAPI document as the service really answers: errors in the shapes they are sent, tier
parameters listing the active ladder's tiers."""
from __future__ import annotations

from fastapi import FastAPI

from optimem.api.errors import PROXY_PATHS
from optimem.memory.service import Memory


def document(app: FastAPI, memory_: Memory) -> dict:
    """The OpenAPI document, with the errors as they are sent: every 422 (and 401) is a ``Problem``, the
    proxy's refusals are OpenAI errors (400, never 422), and tier parameters list this ladder's tiers."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = FastAPI.openapi(app)
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    openai_error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    tiers = memory_.ladder.names()
    mosaics = [t.name for t in memory_.ladder.tiers if t.per_canvas > 1]
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            params = op.get("parameters", [])
            if path in PROXY_PATHS:
                responses.pop("422", None)
                responses.setdefault("400", {"description": "Bad request", "content": openai_error})
                responses["401"] = {"description": "Missing or unknown API key", "content": openai_error}
                continue
            html = path.startswith("/inspect")
            if "422" in responses or params or "requestBody" in op:
                responses["422"] = {"description": "The request is not valid: the detail says what to fix",
                                    "content": dict(problem)}
                if html and path != "/inspect/{session}/curve.png" and "{session}" in path:
                    responses["422"]["content"]["text/html"] = {"schema": {"type": "string"}}
            if html and "{session}" in path and path.endswith("}"):
                responses.setdefault("404", {"description": "No such session",
                                             "content": {"text/html": {"schema": {"type": "string"}}}})
            elif "{session}" in path:
                responses.setdefault("404", {"description": "Not found", "content": problem})
            if any(p.get("name") == "authorization" for p in params) and path != "/healthz":
                responses["401"] = {"description": "Missing or unknown API key (when API keys are set)",
                                    "content": problem}
            for p in params:
                if p.get("name") == "tier" and p.get("in") in ("query", "path"):
                    names = mosaics if "/mosaics/" in path else tiers + (["full"] if "/pages/" in path else [])
                    p["schema"] = {"type": "string", "enum": names}
                    if "/pages/" in path:
                        p["required"] = False
    for name in ("HTTPValidationError", "ValidationError"):
        doc.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = doc
    return doc


