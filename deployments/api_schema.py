"""Completes the ingress's OpenAPI document: security schemes, the role each operation needs, and every
error status the service can answer with, so clients (and schema fuzzers) see the real contract.

FastAPI documents only the success response and its own 422; the service also answers 401/403/429
(access control), 413 (size limits), 404/409/503 (the ticket path) with a `{"detail": ...}` body, and
its 422 body is `{"detail": str, "errors": [...]}` rather than FastAPI's default list.

The role each operation needs comes from the access policy, passed in as `role_for(method, path)`
(deployments.auth hands over its `required_role`), so this module does not import the access control
that installs it.
"""


import types
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

RoleFor = Callable[[str, str], str | None]  # (METHOD, path) -> None (open), 'ticket' or 'admin'

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"title": "Detail", "type": "string", "description": "Why the request was refused."},
        "errors": {
            "title": "Errors", "type": "array", "description": "Field-by-field reasons (validation errors).",
            "items": {"type": "object", "properties": {
                "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                "msg": {"type": "string"}, "type": {"type": "string"}}},
        },
    },
}

REASONS = {
    "202": "Accepted, finishing later (mode=async, or a synchronous ticket deferred under load): poll status_url.",
    "400": "Malformed request (bad Content-Length, or a parameter the endpoint cannot use).",
    "401": "No API key, or an unknown one (Authorization: Bearer <key> or X-API-Key).",
    "403": "The API key lacks the role this operation needs (or a non-loopback Host in open mode).",
    "404": "The named ticket, expert, model, key or proposal does not exist.",
    "409": "Conflicts with the current state (duplicate id, no result yet, refused map, last admin key, a "
           "proposal that is not pending or stale, no version to roll back to).",
    "413": "Request body, ticket text or batch over its size limit.",
    "422": "Invalid request: field-by-field reasons in `errors`.",
    "429": "Rate limit or admission limit reached; retry after Retry-After seconds.",
    "503": "Overloaded or the experts produced no usable workflow; retry after Retry-After seconds.",
}

# Statuses specific to an operation, beyond the generic ones added below.
EXTRA: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/v1/tickets"): ("202", "404", "409", "413", "503"),
    ("post", "/v1/tickets/batch"): ("404", "409", "413", "503"),
    ("post", "/v1/chat/completions"): ("202", "400", "404", "409", "413", "503"),
    ("post", "/v1/alerts/alertmanager"): ("503",),
    ("get", "/v1/console/leaderboard.png"): ("404",),
    ("post", "/v1/tickets/{ticket_id}/feedback"): ("404", "409", "422"),
    ("post", "/v1/map"): ("409",),
    ("post", "/v1/map/rollback"): ("409",),
    ("post", "/v1/admin/keys"): ("409",),
    ("delete", "/v1/admin/keys/{key_id}"): ("409",),
    ("get", "/v1/admin/kb"): ("409",),
    ("post", "/v1/admin/kb/consolidate"): ("409",),
    ("get", "/v1/admin/kb/proposals"): ("409",),
    ("get", "/v1/admin/kb/proposals/{proposal_id}"): ("404", "409"),
    ("post", "/v1/admin/kb/proposals/{proposal_id}/approve"): ("404", "409"),
    ("post", "/v1/admin/kb/proposals/{proposal_id}/reject"): ("404", "409"),
    ("post", "/v1/admin/kb/rollback"): ("409",),
}

SECURITY_SCHEMES = {
    "bearerKey": {"type": "http", "scheme": "bearer",
                  "description": "FlowRouter API key as a bearer token (role ticket or admin)."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "FlowRouter API key in the X-API-Key header."},
}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


ACCEPTED_SCHEMA = {
    "title": "Accepted", "type": "object", "required": ["ticket_id", "status", "status_url"],
    "properties": {"ticket_id": {"type": "string"}, "status": {"type": "string"},
                   "status_url": {"type": "string", "description": "GET it for the status and the result."},
                   "detail": {"type": "string"}},
}


def _error_response(code: str) -> dict:
    if code == "202":
        return {"description": REASONS[code],
                "headers": {"Location": {"description": "The status URL.", "schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}}
    resp: dict[str, Any] = {"description": REASONS[code],
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if code in ("429", "503"):
        resp["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                           "schema": {"type": "integer", "minimum": 1}}}
    return resp


def complete(schema: dict, role_for: RoleFor) -> dict:
    """Add security and error responses to an OpenAPI document (in place) and return it."""
    comps = schema.setdefault("components", {})
    schemas = comps.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    schemas.setdefault("Accepted", ACCEPTED_SCHEMA)
    # FastAPI's 422 model: the service answers with the Error shape instead.
    schemas["HTTPValidationError"] = dict(ERROR_SCHEMA, title="HTTPValidationError")
    comps.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            role = role_for(method.upper(), path)
            codes = ["429"]
            if role is None:
                op["security"] = []
            else:
                op["security"] = [{"bearerKey": []}, {"apiKeyHeader": []}]
                op["x-required-role"] = role
                note = f"Requires an API key with the `{role}` role."
                op["description"] = (op.get("description", "").rstrip() + "\n\n" + note).strip()
                codes += ["401", "403"]
            params = op.get("parameters", [])
            if "requestBody" in op:
                codes += ["400", "413", "422"]
            if any(p.get("in") == "path" for p in params):
                codes.append("404")
            if params:
                codes.append("422")
            codes += EXTRA.get((method, path), ())
            for code in codes:
                if code not in responses:
                    responses[code] = _error_response(code)
                elif code == "422":
                    responses[code]["description"] = REASONS["422"]
    return schema


def install_openapi(app: FastAPI, role_for: RoleFor) -> None:
    """Make `app.openapi()` return the completed document (built once, then cached like FastAPI's)."""
    def openapi(self: FastAPI) -> dict:
        if self.openapi_schema:
            return self.openapi_schema
        self.openapi_schema = complete(FastAPI.openapi(self), role_for)
        return self.openapi_schema

    app.openapi = types.MethodType(openapi, app)
