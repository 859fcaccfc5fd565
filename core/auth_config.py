"""Configuration of access control (API keys, roles, rate limits) and of the operator console.

Kept apart from `core/config.py` so the access rules read in one place; `FlowRouterConfig` holds an
`auth` and a `console` section of these types. Keys are never written in plain text here: a config
or key file holds only their hashes (`flowrouter keys new` prints a key once and stores its hash).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_ID_RE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
ROLES = ("ticket", "admin")
# sha256:<64 hex>  or  scrypt:<log2 n>:<r>:<p>:<salt b64>:<hash b64>
HASH_RE = re.compile(r"^(sha256:[0-9a-f]{64}|scrypt:\d{1,2}:\d{1,2}:\d{1,2}:[A-Za-z0-9+/=_-]{8,128}:[A-Za-z0-9+/=_-]{16,256})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ApiKeySpec(_Strict):
    """One API key as stored: its id, role and hash (never the key itself)."""

    id: str = Field(pattern=KEY_ID_RE, description="Who holds the key (a caller or person); recorded with the "
                                                   "feedback it sends and shown in logs. Not secret.")
    role: Literal["ticket", "admin"] = Field(description="ticket: submit tickets, read results and maps, send "
                                                         "feedback. admin: everything, including map publish/"
                                                         "rollback, key management, training and knowledge-base "
                                                         "updates.")
    hash: str = Field(description="sha256:<hex> of the key (keys made by `flowrouter keys new` are 256-bit random), "
                                  "or scrypt:<log2 n>:<r>:<p>:<salt>:<hash> for a human-chosen secret.")
    rate_per_minute: int | None = Field(default=None, ge=0, description="Requests per minute this key may send "
                                                                        "(None: auth.default_rate_per_minute; 0: "
                                                                        "unlimited).")
    burst: int | None = Field(default=None, ge=1, description="Requests this key may send at once before the rate "
                                                              "applies (None: auth.default_burst).")
    created: str | None = Field(default=None, description="When the key was made (UTC, ISO 8601).")
    comment: str = Field(default="", max_length=200, description="Free text: what the key is for.")
    webhook_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://[^\s]+$",
                                    description="Where the finished workflow of every async ticket this key "
                                                "submits is POSTed (overrides webhooks.url); see webhooks in the "
                                                "config for signing and retries.")
    webhook_format: Literal["json", "slack"] | None = Field(default=None, description="json: the full signed "
                                                            "ticket and result; slack: a Slack-compatible "
                                                            "{\"text\": ...} message (None: webhooks.format).")
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=512, repr=False,
                                       description="HMAC-SHA256 signing secret of this key's webhook (None: the "
                                                   "webhooks section's secret). Unlike API keys it is stored as "
                                                   "written, because the receiver checks the signature with it; "
                                                   "it is never shown by the API or logged.")

    @field_validator("hash")
    @classmethod
    def _hash_format(cls, v: str) -> str:
        if not HASH_RE.match(v):
            raise ValueError("hash must be sha256:<64 lowercase hex> or scrypt:<log2 n>:<r>:<p>:<salt>:<hash> "
                             "(make one with `flowrouter keys new` or `flowrouter keys hash`)")
        return v


class AuthConfig(_Strict):
    """Who may call the API. `keys` (the default) refuses every request without a valid key."""

    mode: Literal["keys", "open"] = Field(default="keys", description="keys: every API call needs a key of the "
                                          "right role (401 without one, 403 with the wrong role). open: no keys, "
                                          "for local development only; must be written in the config explicitly "
                                          "and is logged as a warning at startup.")
    keys: list[ApiKeySpec] = Field(default_factory=list, description="Keys in the config itself (hashes). They "
                                   "change only with a restart; rotate with the key file instead.")
    key_file: str | None = Field(default=None, description="YAML file of keys ({keys: [ApiKeySpec, ...]}), re-read "
                                 "when it changes, so keys are added and revoked without a restart; the admin "
                                 "endpoints and `flowrouter keys` write it (default: <state_dir>/api_keys.yaml).")
    env_var: str = Field(default="FLOWROUTER_API_KEYS", description="Environment variable with more keys: "
                         "'id:role:key' items separated by commas (the key may be a sha256:/scrypt: hash). "
                         "Plain keys are hashed when read.")
    reload_interval_s: float = Field(default=1.0, gt=0, le=3600,
                                     description="How often the key file's modification time is checked.")
    default_rate_per_minute: int = Field(default=600, ge=0, description="Per-key request rate limit (0: "
                                         "unlimited); over it a request gets 429 with Retry-After.")
    default_burst: int = Field(default=60, ge=1, description="Requests a key may send at once before the rate "
                                                             "applies.")
    failed_auth_per_minute: int = Field(default=30, ge=0, description="Requests with a missing or wrong key "
                                        "answered 401 per client address and minute (0: unlimited); past it "
                                        "they get 429, which slows key guessing.")
    failed_auth_burst: int = Field(default=20, ge=1, description="Failed requests a client may send at once.")
    public_rate_per_minute: int = Field(default=1200, ge=0, description="Per client address rate limit of the "
                                        "open endpoints (/healthz, the console page, the API docs) and of every "
                                        "endpoint in open mode (0: unlimited).")
    public_burst: int = Field(default=200, ge=1, description="Burst of the per-address limit.")
    allow_open_on_network: bool = Field(default=False, description="Open mode is refused unless the service "
                                        "listens on loopback only, or this is true.")
    metrics_access: Literal["loopback", "admin", "open"] = Field(default="loopback", description="Who may "
                                        "read GET /metrics (Prometheus) in `mode: keys`. loopback: without a key "
                                        "from a loopback client address with a loopback Host (a Prometheus on the "
                                        "same machine), an admin key from anywhere else; admin: always an admin "
                                        "key; open: anyone who reaches the port. With a reverse proxy on the same "
                                        "machine every caller looks loopback: use admin there.")


class ConsoleConfig(_Strict):
    """The operator web console served at `/`."""

    enabled: bool = Field(default=True, description="Serve the console page at / (the API works without it).")
    mermaid_js: str | None = Field(default=None, description="mermaid.min.js to serve to the page (default: the "
                                   "copy `make` fetches from the npm registry into .cache/console/, or "
                                   "$FLOWROUTER_MERMAID_JS). Without it flowcharts show as text.")
    leaderboard_dir: str | None = Field(default=None, description="Leaderboard results folder (leaderboard.png, "
                                        "summary.json) shown in the operations view (default: the newest one "
                                        "under <cache>/leaderboards/).")
    stats_poll_s: float = Field(default=2.0, ge=0.5, le=60, description="How often the page refreshes counters.")
