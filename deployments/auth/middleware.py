"""The ASGI middleware every request passes, and the principal of the request being handled."""


import contextvars
import json

from deployments.auth.guard import current_guard
from deployments.auth.policy import Principal

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("flowrouter_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the request being handled (set by the middleware)."""
    return _current.get()


def current_principal_id() -> str | None:
    p = _current.get()
    return p.id if p else None


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


class AuthMiddleware:
    """Pure ASGI, so the principal set here is visible to the endpoint (same task, same context)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = {}
        for k, v in scope.get("headers", []):
            name = k.decode("latin-1").lower()
            if name not in headers:
                headers[name] = v.decode("latin-1")
        client = (scope.get("client") or ("unknown", 0))[0]
        guard = current_guard()
        if guard is None:
            return await _send_json(send, 503, {"detail": "service is starting (auth not configured yet)"},
                                    {"retry-after": "5"})
        principal, refusal = guard.decide(scope.get("method", "GET"), path, headers, client)
        if refusal is not None:
            status, detail, extra = refusal
            return await _send_json(send, status, {"detail": detail}, extra)
        token = _current.set(principal)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in present]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _current.reset(token)


async def _send_json(send, status: int, body: dict, extra: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               *SECURITY_HEADERS, *[(k.encode(), v.encode()) for k, v in extra.items()]]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
