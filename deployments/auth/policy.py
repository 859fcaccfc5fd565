"""Who may do what: the roles, the role each request needs, and the caller a request runs as.

The path and method decide the role needed (`required_role`): the console page (also at /tickets/{id}),
/healthz and the API docs are open; reads and the ticket endpoints need a `ticket` key; everything else that changes state
(map publish/rollback, key management, and any endpoint added later: training, knowledge-base updates)
needs an `admin` key. Unlisted writes default to admin, so a new endpoint is never open by mistake.
GET /metrics (Prometheus) needs `admin`, or nothing where `auth.metrics_access` allows (`metrics_role`).
"""


import re
from dataclasses import dataclass

ROLE_RANK = {"ticket": 1, "admin": 2}

OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/favicon.ico"})
OPEN_PREFIXES = ("/console/", "/tickets/")  # /tickets/{id}: the console page itself; its data needs a key
TICKET_WRITES = tuple(re.compile(p) for p in (
    r"^/v1/tickets$", r"^/v1/tickets/batch$", r"^/v1/tickets/[^/]+/feedback$", r"^/v1/chat/completions$",
    r"^/v1/alerts/alertmanager$",  # Alertmanager's webhook: tickets from alerts
))
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
METRICS_PATH = "/metrics"


def required_role(method: str, path: str) -> str | None:
    """None (open), 'ticket' or 'admin' for a request. Unlisted writes need admin (deny by default)."""
    method = method.upper()
    if method in ("GET", "HEAD") and (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)):
        return None
    if path == "/v1/admin" or path.startswith("/v1/admin/"):
        return "admin"
    if path == METRICS_PATH:
        return "admin"  # the strict answer; the guard relaxes it by `metrics_role`
    if method in READ_METHODS:
        return "ticket"
    if any(p.match(path) for p in TICKET_WRITES):
        return "ticket"
    return "admin"


def metrics_role(method: str, access: str, loopback_caller: bool) -> str | None:
    """The role a request to /metrics needs under `auth.metrics_access`; `loopback_caller`: its client
    address and its Host are both loopback (a Prometheus on this machine, not a web page that rebinds DNS)."""
    if method.upper() in ("GET", "HEAD") and (access == "open" or (access == "loopback" and loopback_caller)):
        return None
    return "admin"


@dataclass(frozen=True)
class Principal:
    id: str
    role: str
    source: str

    def allows(self, role: str | None) -> bool:
        return role is None or ROLE_RANK.get(self.role, 0) >= ROLE_RANK[role]


# `mode: open` (local development) lets every request in as this principal.
ANONYMOUS = Principal("anonymous", "admin", "open")
