"""The access endpoints: /v1/whoami and key management under /v1/admin/keys, with their request and
response models. Keys created here go to the key file, so every replica picks them up on its next reload.

No `from __future__ import annotations` here: the router's endpoints are served by FastAPI inside
the Serve replica and need real annotation objects.
"""


import logging
from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from core.auth_config import KEY_ID_RE, ApiKeySpec
from deployments.auth.guard import Guard, get_guard
from deployments.auth.keys import new_key, sha256_hash, utc_now
from deployments.auth.middleware import current_principal, current_principal_id
from deployments.auth.policy import ANONYMOUS

log = logging.getLogger("ray.serve")

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
    webhook: str | None = Field(default=None, description="The key's webhook receiver, scheme and host only.")
    webhook_format: str | None = None


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
    webhook_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://[^\s]+$",
                                    description="Receiver of the finished workflows of this key's async "
                                                "tickets (signed POST, retried).")
    webhook_format: Literal["json", "slack"] | None = Field(default=None, description="json or slack (default: "
                                                            "webhooks.format).")
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=512, repr=False,
                                       description="Signing secret of this key's webhook (default: the "
                                                   "webhooks section's secret); stored, never shown again.")


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
    try:
        spec = ApiKeySpec(id=body.id, role=body.role, hash=sha256_hash(key), rate_per_minute=body.rate_per_minute,
                          burst=body.burst, created=utc_now(), comment=body.comment, webhook_url=body.webhook_url,
                          webhook_format=body.webhook_format, webhook_secret=body.webhook_secret)
    except ValueError as exc:  # e.g. a webhook URL that is not http(s)://
        raise HTTPException(422, f"invalid key: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None
    try:
        ring.file.add(spec, reserved=ring.static_ids())
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
