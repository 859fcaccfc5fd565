"""The guard: decides, for each request, to let it through as a principal or to refuse it (401/403/429),
and holds this process's configured instance.

* A key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>`. No key or an unknown key: 401;
  a key without the role: 403.
* Token buckets limit each key (and each client address for failed and open requests): 429 with
  Retry-After.
* `mode: open` (local development) lets every request in as `anonymous` with the admin role; it must
  be set explicitly, is logged as a warning, is refused on a non-loopback listen address unless
  `allow_open_on_network`, and then only accepts loopback Host headers (no DNS rebinding).
* GET /metrics follows `auth.metrics_access`: by default a loopback client asking for a loopback Host
  needs no key (a Prometheus on the same machine) and anyone else needs an admin key.
"""


import ipaddress
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from core.auth_config import AuthConfig
from deployments.auth.keys import KeyRing
from deployments.auth.policy import ANONYMOUS, METRICS_PATH, Principal, metrics_role, required_role
from deployments.auth.ratelimit import RateLimiter

log = logging.getLogger("ray.serve")


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(auth: AuthConfig, listen_host: str) -> None:
    """Refuse a configuration that would let anyone in by mistake."""
    if auth.mode == "open" and not is_loopback(listen_host) and not auth.allow_open_on_network:
        raise ValueError(f"auth.mode is open but serve.host is {listen_host!r}: open mode serves loopback only "
                         "(set auth.allow_open_on_network: true to override, or configure API keys)")


def default_key_file(auth: AuthConfig, state_dir: str | None) -> str | None:
    if auth.key_file:
        return auth.key_file
    return str(Path(state_dir) / "api_keys.yaml") if state_dir else None


@dataclass
class Guard:
    auth: AuthConfig
    keyring: KeyRing
    listen_host: str = "127.0.0.1"
    limiter: RateLimiter = field(default_factory=RateLimiter)

    @property
    def open(self) -> bool:
        return self.auth.mode == "open"

    def decide(self, method: str, path: str, headers: dict[str, str], client: str) -> tuple[Principal | None, tuple]:
        """(principal, None) to let the request through, or (None, (status, detail, extra headers))."""
        role = required_role(method, path)
        if path == METRICS_PATH:
            role = metrics_role(method, self.auth.metrics_access, self.loopback_caller(headers, client))
        if self.open:
            if not self.auth.allow_open_on_network:
                host = _host_name(headers.get("host", ""))
                if host and not is_loopback(host):
                    return None, (403, "open mode answers loopback Host names only", {})
            wait = self.limiter.take(f"ip:{client}", self.auth.public_rate_per_minute, self.auth.public_burst)
            if wait:
                return None, _too_many(wait, "client")
            return ANONYMOUS, None
        key = _presented_key(headers)
        if role is None:
            wait = self.limiter.take(f"ip:{client}", self.auth.public_rate_per_minute, self.auth.public_burst)
            if wait:
                return None, _too_many(wait, "client")
            entry = self.keyring.authenticate(key) if key else None
            return (Principal(entry.id, entry.role, entry.source) if entry else None), None
        self.keyring.maybe_reload()
        entry = self.keyring.authenticate(key) if key else None
        if entry is None:
            wait = self.limiter.take(f"fail:{client}", self.auth.failed_auth_per_minute, self.auth.failed_auth_burst)
            if wait:
                return None, _too_many(wait, "failed-auth")
            detail = "API key required (Authorization: Bearer <key> or X-API-Key)" if not key else "invalid API key"
            return None, (401, detail, {"www-authenticate": 'Bearer realm="flowrouter"'})
        principal = Principal(entry.id, entry.role, entry.source)
        if not principal.allows(role):
            return None, (403, f"key {entry.id!r} has role {entry.role!r}; {method} {path} needs {role!r}", {})
        rate = self.auth.default_rate_per_minute if entry.rate_per_minute is None else entry.rate_per_minute
        burst = entry.burst or self.auth.default_burst
        wait = self.limiter.take(f"key:{entry.id}", rate, burst)
        if wait:
            return None, _too_many(wait, f"key {entry.id!r}")
        return principal, None

    @staticmethod
    def loopback_caller(headers: dict[str, str], client: str) -> bool:
        """The client address is loopback and so is the Host it asked for (or it named none)."""
        host = _host_name(headers.get("host", ""))
        return is_loopback(client) and (not host or is_loopback(host))


def _host_name(host: str) -> str:
    """The name part of a Host header: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _too_many(wait: float, who: str) -> tuple:
    secs = max(1, math.ceil(wait))
    return 429, f"rate limit exceeded ({who}); retry after {secs}s", {"retry-after": str(secs)}


def _presented_key(headers: dict[str, str]) -> str | None:
    authz = headers.get("authorization", "")
    if authz:
        scheme, _, value = authz.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return "\x00invalid"  # present but not a bearer token: counts as a wrong key
    key = headers.get("x-api-key", "").strip()
    return key or None


_GUARD: Guard | None = None


def configure(auth: AuthConfig, state_dir: str | None, listen_host: str = "127.0.0.1",
              environ: dict | None = None) -> Guard:
    """Build this process's guard (the ingress calls it at replica start) and log the mode."""
    global _GUARD
    check_config(auth, listen_host)
    keyring = KeyRing(auth, default_key_file(auth, state_dir), environ)
    _GUARD = Guard(auth, keyring, listen_host)
    if auth.mode == "open":
        log.warning("auth: OPEN MODE - every request is let in as 'anonymous' with the admin role, without a key. "
                    "For local development only (auth.mode: open in the config); listening on %s.", listen_host)
    else:
        n = len(keyring.entries())
        roles = sorted({e.role for e in keyring.entries()})
        log.info("auth: API keys required; %d keys loaded (roles %s), key file %s", n, roles,
                 keyring.file.path if keyring.file else None)
        if n == 0:
            log.error("auth: no API keys are configured, so every API request is refused with 401. Add one with "
                      "`flowrouter keys new ID --role admin` (it writes the key file, re-read without a restart).")
    return _GUARD


def current_guard() -> Guard | None:
    """This process's guard, or None before `configure` has run."""
    return _GUARD


def get_guard() -> Guard:
    if _GUARD is None:
        raise RuntimeError("auth is not configured in this process")
    return _GUARD
