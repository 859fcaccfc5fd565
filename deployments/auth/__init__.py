"""Access control for the HTTP API: API keys with roles, per-key rate limits, key rotation without restart.

Every request passes one ASGI middleware (installed on the ingress app by `install`), which asks this
process's guard (set up by `configure`) to let the request through as a principal or refuse it:

* policy:     the roles, and the role each path and method needs (unlisted writes need admin)
* keys:       key generation and hashing, the rotatable key file, the key ring (config + env + file)
* ratelimit:  token buckets per key and per client address
* guard:      the per-request decision (401/403/429, open mode) and `configure`
* middleware: the ASGI middleware and the current request's principal
* admin:      /v1/whoami and the key management endpoints

The OpenAPI completion lives in deployments.api_schema, which is handed the role policy by `install`
rather than importing it, so imports between the two go one way.
"""


from fastapi import FastAPI

from deployments.api_schema import install_openapi
from deployments.auth.admin import router
from deployments.auth.guard import check_config, configure, default_key_file
from deployments.auth.keys import KeyFile, new_key, scrypt_hash, scrypt_verify, sha256_hash
from deployments.auth.middleware import AuthMiddleware, current_principal_id
from deployments.auth.policy import required_role

__all__ = [
    "KeyFile", "check_config", "configure", "current_principal_id", "default_key_file", "install", "new_key",
    "required_role", "scrypt_hash", "scrypt_verify", "sha256_hash",
]


def install(app: FastAPI) -> None:
    """Wire access control into an app: middleware, the key endpoints, and the OpenAPI security."""
    app.add_middleware(AuthMiddleware)
    app.include_router(router)
    install_openapi(app, required_role)
