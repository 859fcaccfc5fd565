"""Access control for the HTTP API: API keys with roles, per-key rate limits, key rotation without restart.

Every request passes one ASGI middleware (installed on the ingress app by `install`):

* The path and method decide the role needed (`required_role`): the console page, /healthz and the
  API docs are open; reads and the ticket endpoints need a `ticket` key; everything else that changes
  state (map publish/rollback, key management, and any endpoint added later: training, knowledge-base
  updates) needs an `admin` key. Unlisted writes default to admin, so a new endpoint is never open by
  mistake.
* A key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>`. No key or an unknown key: 401;
  a key without the role: 403. Keys are stored hashed (sha256 of a 256-bit random key, or scrypt for
  human-chosen secrets) and come from the config, an environment variable, and a key file that is
  re-read when it changes (rotation without restart; the admin endpoints below write it).
* Token buckets limit each key (and each client address for failed and open requests): 429 with
  Retry-After. Buckets live in each ingress replica, so with R replicas a caller can reach R times
  the configured rate.
* `mode: open` (local development) lets every request in as `anonymous` with the admin role; it must
  be set explicitly, is logged as a warning, is refused on a non-loopback listen address unless
  `allow_open_on_network`, and then only accepts loopback Host headers (no DNS rebinding).

No `from __future__ import annotations` here: the router's endpoints are served by FastAPI inside
the Serve replica and need real annotation objects.
"""


import base64
import contextvars
import datetime as dt
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from core.auth_config import KEY_ID_RE, ApiKeySpec, AuthConfig

log = logging.getLogger("ray.serve")

ROLE_RANK = {"ticket": 1, "admin": 2}
KEY_PREFIX = "fr_"

# ---- what each path needs ----------------------------------------------------------------------
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/favicon.ico"})
OPEN_PREFIXES = ("/console/",)
TICKET_WRITES = tuple(re.compile(p) for p in (
    r"^/v1/tickets$", r"^/v1/tickets/batch$", r"^/v1/tickets/[^/]+/feedback$", r"^/v1/chat/completions$",
))
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def required_role(method: str, path: str) -> str | None:
    """None (open), 'ticket' or 'admin' for a request. Unlisted writes need admin (deny by default)."""
    method = method.upper()
    if method in ("GET", "HEAD") and (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)):
        return None
    if path == "/v1/admin" or path.startswith("/v1/admin/"):
        return "admin"
    if method in READ_METHODS:
        return "ticket"
    if any(p.match(path) for p in TICKET_WRITES):
        return "ticket"
    return "admin"


# ---- hashing -----------------------------------------------------------------------------------
def new_key() -> str:
    """A fresh 256-bit random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def sha256_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def scrypt_hash(secret: str, log2_n: int = 14, r: int = 8, p: int = 1) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=2 ** log2_n, r=r, p=p, dklen=32)
    b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"scrypt:{log2_n}:{r}:{p}:{b64(salt)}:{b64(digest)}"


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def scrypt_verify(secret: str, stored: str) -> bool:
    _, log2_n, r, p, salt, digest = stored.split(":")
    want = _b64d(digest)
    got = hashlib.scrypt(secret.encode("utf-8"), salt=_b64d(salt), n=2 ** int(log2_n), r=int(r), p=int(p),
                         dklen=len(want), maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(got, want)


# ---- keys --------------------------------------------------------------------------------------
@dataclass
class KeyEntry:
    id: str
    role: str
    hash: str
    source: str  # config | env | file
    rate_per_minute: int | None = None
    burst: int | None = None
    created: str | None = None
    comment: str = ""

    def public(self) -> dict:
        return {"id": self.id, "role": self.role, "source": self.source, "rate_per_minute": self.rate_per_minute,
                "burst": self.burst, "created": self.created, "comment": self.comment}


@dataclass(frozen=True)
class Principal:
    id: str
    role: str
    source: str

    def allows(self, role: str | None) -> bool:
        return role is None or ROLE_RANK.get(self.role, 0) >= ROLE_RANK[role]


ANONYMOUS = Principal("anonymous", "admin", "open")
_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("flowrouter_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the request being handled (set by the middleware)."""
    return _current.get()


def current_principal_id() -> str | None:
    p = _current.get()
    return p.id if p else None


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def parse_env_keys(value: str) -> list[KeyEntry]:
    """`id:role:key,id:role:key` (key may be a sha256:/scrypt: hash); plain keys are hashed here."""
    out = []
    for i, item in enumerate(x.strip() for x in value.replace("\n", ",").split(",")):
        if not item:
            continue
        parts = item.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"item {i + 1} is not id:role:key")
        kid, role, secret = parts
        if not re.match(KEY_ID_RE, kid) or role not in ROLE_RANK or not secret:
            raise ValueError(f"item {i + 1} ({kid!r}): id must match {KEY_ID_RE}, role ticket|admin, key non-empty")
        stored = secret if secret.startswith(("sha256:", "scrypt:")) else sha256_hash(secret)
        ApiKeySpec(id=kid, role=role, hash=stored)  # validates the hash format
        out.append(KeyEntry(kid, role, stored, "env"))
    return out


class KeyFile:
    """The rotatable key store: YAML `{keys: [ApiKeySpec, ...]}`, written atomically under a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def signature(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read(self) -> list[ApiKeySpec]:
        if not self.path.exists():
            return []
        raw = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict) or not isinstance(raw.get("keys", []), list):
            raise ValueError(f"{self.path} must hold a mapping with a 'keys' list")
        specs = [ApiKeySpec.model_validate(k) for k in raw.get("keys") or []]
        ids = [s.id for s in specs]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"{self.path}: repeated key ids {dup}")
        return specs

    def _write(self, specs: list[ApiKeySpec]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        body = {"keys": [s.model_dump(exclude_none=True) for s in specs]}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# FlowRouter API keys (hashes only). Re-read by the service when it changes.\n")
            yaml.safe_dump(body, fh, sort_keys=False)
        os.replace(tmp, self.path)

    def update(self, change) -> Any:
        """Read, change (a function of the spec list returning (new list, result)), write, under a lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                specs, result = change(self.read())
                self._write(specs)
                return result
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, spec: ApiKeySpec, reserved: set[str] = frozenset()) -> ApiKeySpec:
        def change(specs):
            if spec.id in reserved or any(s.id == spec.id for s in specs):
                raise KeyError(spec.id)
            return [*specs, spec], spec
        return self.update(change)

    def revoke(self, key_id: str) -> ApiKeySpec:
        def change(specs):
            gone = [s for s in specs if s.id == key_id]
            if not gone:
                raise LookupError(key_id)
            return [s for s in specs if s.id != key_id], gone[0]
        return self.update(change)


class KeyRing:
    """Keys from config + environment (fixed for the process) and the key file (re-read on change)."""

    def __init__(self, auth: AuthConfig, key_file: str | Path | None, environ: dict | None = None):
        self.auth = auth
        self.file = KeyFile(key_file) if key_file else None
        environ = os.environ if environ is None else environ
        self._static = [KeyEntry(k.id, k.role, k.hash, "config", k.rate_per_minute, k.burst, k.created, k.comment)
                        for k in auth.keys]
        env_value = environ.get(auth.env_var, "")
        self.env_error = None
        if env_value.strip():
            try:
                self._static += parse_env_keys(env_value)
            except ValueError as exc:  # a bad variable must not take the service down; it is reported
                self.env_error = f"${auth.env_var}: {exc}"
                log.error("auth: ignoring %s", self.env_error)
        self._file_entries: list[KeyEntry] = []
        self._sig: tuple | None = None
        self._checked = 0.0
        self.last_error: str | None = None
        self.loaded_at: str | None = None
        self._lock = threading.Lock()
        self._index: dict[str, KeyEntry] = {}
        self._scrypt: list[KeyEntry] = []
        self._scrypt_ok: dict[str, KeyEntry] = {}
        self.reload(force=True)

    def entries(self) -> list[KeyEntry]:
        return [*self._static, *self._file_entries]

    def ids(self) -> set[str]:
        return {e.id for e in self.entries()}

    def reload(self, force: bool = False) -> bool:
        """Re-read the key file if it changed (or when forced); True when the keys were rebuilt."""
        with self._lock:
            self._checked = time.monotonic()
            sig = self.file.signature() if self.file else None
            if not force and sig == self._sig:
                return False
            file_entries = self._file_entries
            if self.file:
                try:
                    file_entries = [KeyEntry(s.id, s.role, s.hash, "file", s.rate_per_minute, s.burst, s.created,
                                             s.comment) for s in self.file.read()]
                    self.last_error = None
                except Exception as exc:  # keep serving with the keys we had; report the problem
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("auth: key file %s not loaded, keeping %d keys: %s", self.file.path,
                              len(self._file_entries), self.last_error)
            static_ids = {e.id for e in self._static}
            clash = sorted(e.id for e in file_entries if e.id in static_ids)
            if clash:
                self.last_error = f"key file ids also defined in config/env (file entries ignored): {clash}"
                file_entries = [e for e in file_entries if e.id not in static_ids]
            self._file_entries = file_entries
            self._sig = sig
            self._index = {e.hash: e for e in self.entries() if e.hash.startswith("sha256:")}
            self._scrypt = [e for e in self.entries() if e.hash.startswith("scrypt:")]
            self._scrypt_ok = {}
            self.loaded_at = _utc_now()
            return True

    def maybe_reload(self) -> None:
        if time.monotonic() - self._checked >= self.auth.reload_interval_s:
            if self.reload():
                log.info("auth: key file changed, %d keys now (%d from the file)", len(self.entries()),
                         len(self._file_entries))

    def authenticate(self, key: str) -> KeyEntry | None:
        if not key or len(key) > 512:
            return None
        digest = sha256_hash(key)
        entry = self._index.get(digest)
        if entry is not None:
            return entry
        if self._scrypt:
            cached = self._scrypt_ok.get(digest)
            if cached is not None:
                return cached
            for e in self._scrypt:
                if scrypt_verify(key, e.hash):
                    self._scrypt_ok[digest] = e
                    return e
        return None


# ---- rate limits -------------------------------------------------------------------------------
class RateLimiter:
    """Token buckets by name. `take` returns 0 when allowed, else the seconds until a token is back."""

    def __init__(self, max_entries: int = 50_000, clock=time.monotonic):
        self._buckets: dict[str, tuple[float, float]] = {}
        self.max_entries = max_entries
        self.clock = clock

    def take(self, name: str, per_minute: int, burst: int, cost: float = 1.0) -> float:
        if per_minute <= 0:
            return 0.0
        now = self.clock()
        rate = per_minute / 60.0
        tokens, last = self._buckets.get(name, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= cost:
            self._buckets[name] = (tokens - cost, now)
            wait = 0.0
        else:
            self._buckets[name] = (tokens, now)
            wait = (cost - tokens) / rate
        if len(self._buckets) > self.max_entries:
            for k, _ in sorted(self._buckets.items(), key=lambda kv: kv[1][1])[: self.max_entries // 2]:
                self._buckets.pop(k, None)
        return wait

    def reset(self, name: str) -> None:
        self._buckets.pop(name, None)


# ---- the guard ---------------------------------------------------------------------------------
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


def get_guard() -> Guard:
    if _GUARD is None:
        raise RuntimeError("auth is not configured in this process")
    return _GUARD


# ---- ASGI middleware ---------------------------------------------------------------------------
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
        guard = _GUARD
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


# ---- admin endpoints ---------------------------------------------------------------------------
router = APIRouter()


class WhoAmI(BaseModel):
    id: str = Field(description="Key id of the caller ('anonymous' in open mode).")
    role: str = Field(description="ticket or admin.")
    mode: Literal["keys", "open"] = Field(description="The service's auth mode.")


class KeyInfo(BaseModel):
    id: str
    role: str
    source: str = Field(description="config, env (fixed until restart) or file (rotatable).")
    rate_per_minute: int | None = None
    burst: int | None = None
    created: str | None = None
    comment: str = ""


class KeyList(BaseModel):
    mode: Literal["keys", "open"]
    key_file: str | None = Field(description="The rotatable key file.")
    loaded_at: str | None = Field(description="When the keys were last (re)built.")
    error: str | None = Field(description="Last key file or environment problem (the previous keys stay in use).")
    keys: list[KeyInfo]


class NewKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(pattern=KEY_ID_RE, description="Id of the new key (who holds it).")
    role: Literal["ticket", "admin"] = Field(description="Role of the new key.")
    rate_per_minute: int | None = Field(default=None, ge=0, le=1_000_000,
                                        description="Per-key limit (default: auth.default_rate_per_minute).")
    burst: int | None = Field(default=None, ge=1, le=100_000, description="Per-key burst.")
    comment: str = Field(default="", max_length=200, description="What the key is for.")


class NewKeyResponse(BaseModel):
    id: str
    role: str
    key: str = Field(description="The key itself: shown this once, only its hash is stored.")
    hash: str


class Revoked(BaseModel):
    revoked: str
    remaining: int


class Reloaded(BaseModel):
    keys: int
    error: str | None


@router.get("/v1/whoami", response_model=WhoAmI, tags=["access"], summary="The caller's key id and role")
async def whoami() -> WhoAmI:
    p = current_principal() or ANONYMOUS
    return WhoAmI(id=p.id, role=p.role, mode=get_guard().auth.mode)


def _key_list(guard: Guard) -> KeyList:
    ring = guard.keyring
    return KeyList(mode=guard.auth.mode, key_file=str(ring.file.path) if ring.file else None,
                   loaded_at=ring.loaded_at, error=ring.last_error or ring.env_error,
                   keys=[KeyInfo(**e.public()) for e in ring.entries()])


@router.get("/v1/admin/keys", response_model=KeyList, tags=["access"],
            summary="List API keys (ids, roles, sources; never the keys or hashes)")
async def list_keys() -> KeyList:
    guard = get_guard()
    guard.keyring.maybe_reload()
    return _key_list(guard)


@router.post("/v1/admin/keys", response_model=NewKeyResponse, status_code=201, tags=["access"],
             summary="Create a key in the key file; live in every replica within auth.reload_interval_s")
async def create_key(body: NewKeyRequest) -> NewKeyResponse:
    guard = get_guard()
    ring = guard.keyring
    if ring.file is None:
        raise HTTPException(409, "no key file is configured (auth.key_file / serve.state_dir)")
    key = new_key()
    spec = ApiKeySpec(id=body.id, role=body.role, hash=sha256_hash(key), rate_per_minute=body.rate_per_minute,
                      burst=body.burst, created=_utc_now(), comment=body.comment)
    try:
        ring.file.add(spec, reserved={e.id for e in ring._static})
    except KeyError:
        raise HTTPException(409, f"a key with id {body.id!r} already exists") from None
    except ValueError as exc:
        raise HTTPException(409, f"key file is invalid, not changed: {exc}") from None
    ring.reload(force=True)
    guard.limiter.reset(f"key:{body.id}")
    log.info("auth: key %r (%s) created by %r", body.id, body.role, current_principal_id())
    return NewKeyResponse(id=spec.id, role=spec.role, key=key, hash=spec.hash)


@router.delete("/v1/admin/keys/{key_id}", response_model=Revoked, tags=["access"],
               summary="Revoke a key from the key file (effective in every replica within reload_interval_s)")
async def revoke_key(key_id: str) -> Revoked:
    guard = get_guard()
    ring = guard.keyring
    ring.maybe_reload()
    entry = next((e for e in ring.entries() if e.id == key_id), None)
    if entry is None:
        raise HTTPException(404, f"no key {key_id!r}")
    if entry.source != "file":
        raise HTTPException(409, f"key {key_id!r} comes from the {entry.source} and is revoked by editing it "
                                 "and restarting; rotatable keys live in the key file")
    admins = [e for e in ring.entries() if e.role == "admin" and e.id != key_id]
    if entry.role == "admin" and not admins and guard.auth.mode == "keys":
        raise HTTPException(409, f"{key_id!r} is the last admin key; create another admin key first")
    try:
        ring.file.revoke(key_id)
    except LookupError:
        raise HTTPException(404, f"no key {key_id!r} in the key file") from None
    except ValueError as exc:
        raise HTTPException(409, f"key file is invalid, not changed: {exc}") from None
    ring.reload(force=True)
    log.info("auth: key %r revoked by %r", key_id, current_principal_id())
    return Revoked(revoked=key_id, remaining=len(ring.entries()))


@router.post("/v1/admin/keys/reload", response_model=Reloaded, tags=["access"],
             summary="Re-read the key file now (it is also re-read on change)")
async def reload_keys() -> Reloaded:
    ring = get_guard().keyring
    ring.reload(force=True)
    return Reloaded(keys=len(ring.entries()), error=ring.last_error or ring.env_error)


def install(app: FastAPI) -> None:
    """Wire access control into an app: middleware, the key endpoints, and the OpenAPI security."""
    from deployments.api_schema import install_openapi

    app.add_middleware(AuthMiddleware)
    app.include_router(router)
    install_openapi(app)
