"""API keys: generating and hashing them, the rotatable key file, and the key ring a guard checks keys against.

Keys are stored hashed (sha256 of a 256-bit random key, or scrypt for human-chosen secrets) and come
from the config, an environment variable, and a key file that is re-read when it changes (rotation
without restart; the admin endpoints write it).
"""


import base64
import datetime as dt
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.auth_config import KEY_ID_RE, ApiKeySpec, AuthConfig
from deployments.auth.policy import ROLE_RANK

log = logging.getLogger("ray.serve")

KEY_PREFIX = "fr_"


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
    webhook_url: str | None = None
    webhook_format: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, spec: ApiKeySpec, source: str) -> "KeyEntry":
        return cls(spec.id, spec.role, spec.hash, source, spec.rate_per_minute, spec.burst, spec.created, spec.comment,
                   spec.webhook_url, spec.webhook_format, spec.webhook_secret)

    def public(self) -> dict:
        """What the API may show: never the hash or the webhook secret, and the webhook URL without its
        path (Slack-style URLs carry their own secret there)."""
        return {"id": self.id, "role": self.role, "source": self.source, "rate_per_minute": self.rate_per_minute,
                "burst": self.burst, "created": self.created, "comment": self.comment,
                "webhook": redact_url(self.webhook_url) if self.webhook_url else None,
                "webhook_format": self.webhook_format}


def redact_url(url: str) -> str:
    """scheme://host[:port]/… : enough to tell receivers apart, without a secret the path or query may hold."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "…"
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/…" if len(host) < len(rest) else f"{scheme}://{host}"


def utc_now() -> str:
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
        self._static = [KeyEntry.of(k, "config") for k in auth.keys]
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

    def static_ids(self) -> set[str]:
        """Ids of the config and environment keys (fixed until restart; the key file may not reuse them)."""
        return {e.id for e in self._static}

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
                    file_entries = [KeyEntry.of(s, "file") for s in self.file.read()]
                    self.last_error = None
                except Exception as exc:  # keep serving with the keys we had; report the problem
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("auth: key file %s not loaded, keeping %d keys: %s", self.file.path,
                              len(self._file_entries), self.last_error)
            static_ids = self.static_ids()
            clash = sorted(e.id for e in file_entries if e.id in static_ids)
            if clash:
                self.last_error = f"key file ids also defined in config/env (file entries ignored): {clash}"
                file_entries = [e for e in file_entries if e.id not in static_ids]
            self._file_entries = file_entries
            self._sig = sig
            self._index = {e.hash: e for e in self.entries() if e.hash.startswith("sha256:")}
            self._scrypt = [e for e in self.entries() if e.hash.startswith("scrypt:")]
            self._scrypt_ok = {}
            self.loaded_at = utc_now()
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
