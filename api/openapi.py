"""The OpenAPI document as the service really answers: errors in the shapes they are sent, the API key
as an HTTP bearer security scheme, tier parameters listing the active ladder's tiers, session ids with
their pattern everywhere, the visual-token routes only where the backend makes them, times with
their format."""
from __future__ import annotations

from fastapi import FastAPI

from optimem.api import schemas
from optimem.api.errors import PROXY_PATHS
from optimem.memory.service import Memory

SECURITY = {"apiKey": {"type": "http", "scheme": "bearer",
                       "description": "A key of OPTIMEM_API_KEYS (key:tenant,...), as 'Authorization: Bearer "
                                      "<key>' (or the password of HTTP Basic auth). Without keys set, none is "
                                      "needed."}}
OPEN = ("/healthz",)   # answered without a key; a valid key shows more
TIMES = ("time", "first_time", "last_time")   # always written as YYYY-MM-DDTHH:MM:SSZ


def document(app: FastAPI, memory_: Memory) -> dict:
    """The OpenAPI document, with the errors as they are sent: every 422 (and 401) is a ``Problem``, the
    proxy's refusals are OpenAI errors (400, never 422), and tier parameters list this ladder's tiers."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = FastAPI.openapi(app)
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    openai_error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    tiers = [name for name in memory_.ladder.names() if name != "gone"]   # a gone page has no image or tokens
    mosaics = [t.name for t in memory_.ladder.tiers if t.per_canvas > 1]
    encodes = memory_.encodes()
    if not encodes:   # the CPU backends make no visual tokens: not offered (a call anyway is a 422)
        doc["paths"].pop("/v1/sessions/{session}/tokens/{unit}", None)
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            params = op.get("parameters", [])
            keyed = any(p.get("name") == "authorization" for p in params)
            op["parameters"] = params = [p for p in params if p.get("name") != "authorization"]
            if keyed:   # the key is the security scheme, not a header parameter of each operation
                op["security"] = [{}, {"apiKey": []}] if path in OPEN else [{"apiKey": []}]
            for p in params:
                if p.get("name") == "session" and p.get("in") == "path":
                    p["schema"] = {"type": "string", "pattern": schemas.SESSION_ID, "maxLength": 128}
                if p.get("name") == "format" and not encodes:
                    p["schema"]["enum"] = [f for f in p["schema"].get("enum", []) if f != "embeddings"]
            if path in PROXY_PATHS:
                responses.pop("422", None)
                responses.setdefault("400", {"description": "Bad request", "content": openai_error})
                responses["401"] = {"description": "Missing or unknown API key", "content": openai_error}
                responses["403"] = {"description": "The API key's scope does not allow this", "content": openai_error}
                continue
            html = path.startswith("/inspect")
            if "422" in responses or params or "requestBody" in op:
                responses["422"] = {"description": "The request is not valid: the detail says what to fix",
                                    "content": dict(problem)}
                if html and path != "/inspect/{session}/curve.png" and "{session}" in path:
                    responses["422"]["content"]["text/html"] = {"schema": {"type": "string"}}
            if html and "{session}" in path and path != "/inspect/{session}/curve.png":     # the HTML pages
                responses.setdefault("404", {"description": "No such session",
                                             "content": {"text/html": {"schema": {"type": "string"}}}})
            elif "{session}" in path:
                responses.setdefault("404", {"description": "Not found", "content": problem})
            if keyed and path not in OPEN:
                responses["401"] = {"description": "Missing or unknown API key (when API keys are set)",
                                    "content": problem}
                responses["403"] = {"description": "The API key's scope (read, write, admin) does not allow this "
                                                   "route: the detail names the scope it needs", "content": problem}
            for p in params:
                if p.get("name") == "tier" and p.get("in") in ("query", "path"):
                    names = mosaics if "/mosaics/" in path else tiers + (["full"] if "/pages/" in path else [])
                    p["schema"] = {"type": "string", "enum": names}
                    if "/pages/" in path:
                        p["required"] = False
    components = doc.setdefault("components", {})
    components["securitySchemes"] = SECURITY
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    recall = components.get("schemas", {}).get("RecallIn")
    if recall:   # a recall asks by content, position or time: at least one of them
        recall["anyOf"] = [{"required": [key], "properties": {key: {"not": {"type": "null"}}}}
                           for key in ("query", "turn", "since", "until")]
    for name, shape in components.get("schemas", {}).items():
        for field, prop in (shape.get("properties") or {}).items():
            if field in TIMES and prop.get("type") == "string":
                prop["format"] = "date-time"
            elif name in ("TurnIn", "RecallIn") and field in ("time", "since", "until"):
                for branch in prop.get("anyOf", []):   # ISO 8601 in; RFC 3339 date-times are what to send
                    if branch.get("type") == "string":
                        branch["format"] = "date-time"
    app.openapi_schema = doc
    return doc
