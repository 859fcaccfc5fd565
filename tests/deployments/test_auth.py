"""Access control without Ray: the auth middleware, key ring, rate limits and key endpoints on a small
FastAPI app (the same `auth.install` the ingress uses), driven by Starlette's TestClient."""

import logging
import time

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.auth_config import ApiKeySpec, AuthConfig
from deployments import auth
from deployments.auth import KeyFile, new_key, required_role, scrypt_hash, sha256_hash

BASE = "http://127.0.0.1"


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _app() -> FastAPI:
    app = FastAPI()
    auth.install(app)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/v1/tickets")
    async def tickets():
        return {"principal": auth.current_principal_id()}

    @app.get("/v1/map")
    async def get_map():
        return {"ok": True}

    @app.post("/v1/map")
    async def publish():
        return {"ok": True}

    @app.post("/v1/kb/update")  # an endpoint nobody listed: a write, so admin by default
    async def kb_update():
        return {"ok": True}

    return app


@pytest.fixture
def keys(tmp_path):
    """Config keys (admin, ticket, a slow ticket key) and an empty key file."""
    plain = {"root": new_key(), "bot": new_key(), "slow": new_key()}
    cfg = AuthConfig(mode="keys", reload_interval_s=0.05, failed_auth_per_minute=6, failed_auth_burst=3, keys=[
        ApiKeySpec(id="root", role="admin", hash=sha256_hash(plain["root"]), rate_per_minute=0),
        ApiKeySpec(id="bot", role="ticket", hash=sha256_hash(plain["bot"])),
        ApiKeySpec(id="slow", role="ticket", hash=sha256_hash(plain["slow"]), rate_per_minute=60, burst=2),
    ])
    guard = auth.configure(cfg, str(tmp_path), "127.0.0.1", environ={})
    guard.limiter.clock = FakeClock()
    client = TestClient(_app(), base_url=BASE)
    return client, plain, guard, tmp_path


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_required_role_policy_denies_by_default():
    assert required_role("GET", "/") is None
    assert required_role("GET", "/healthz") is None
    assert required_role("GET", "/console/app.js") is None
    assert required_role("GET", "/openapi.json") is None
    assert required_role("GET", "/v1/map") == "ticket"
    assert required_role("GET", "/v1/stats") == "ticket"
    assert required_role("POST", "/v1/tickets") == "ticket"
    assert required_role("POST", "/v1/tickets/batch") == "ticket"
    assert required_role("POST", "/v1/tickets/abc/feedback") == "ticket"
    assert required_role("POST", "/v1/chat/completions") == "ticket"
    assert required_role("POST", "/v1/map") == "admin"
    assert required_role("POST", "/v1/map/rollback") == "admin"
    assert required_role("GET", "/v1/admin/keys") == "admin"
    assert required_role("POST", "/v1/training/start") == "admin"  # future endpoints: admin unless listed
    assert required_role("POST", "/") == "admin"
    assert required_role("DELETE", "/v1/tickets/abc") == "admin"


def test_401_without_or_with_a_wrong_key(keys):
    client, plain, _, _ = keys
    r = client.post("/v1/tickets")
    assert r.status_code == 401 and "API key required" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/v1/tickets", headers=bearer("fr_not-a-key")).status_code == 401
    assert client.post("/v1/tickets", headers={"Authorization": f"Basic {plain['bot']}"}).status_code == 401
    assert client.get("/healthz").status_code == 200  # open endpoints stay open


def test_roles_and_both_header_forms(keys):
    client, plain, _, _ = keys
    r = client.post("/v1/tickets", headers=bearer(plain["bot"]))
    assert r.status_code == 200 and r.json() == {"principal": "bot"}
    assert client.post("/v1/tickets", headers={"X-API-Key": plain["bot"]}).status_code == 200
    assert client.get("/v1/map", headers=bearer(plain["bot"])).status_code == 200
    r = client.post("/v1/map", headers=bearer(plain["bot"]))
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert client.post("/v1/kb/update", headers=bearer(plain["bot"])).status_code == 403
    assert client.get("/v1/admin/keys", headers=bearer(plain["bot"])).status_code == 403
    assert client.post("/v1/map", headers=bearer(plain["root"])).status_code == 200
    assert client.post("/v1/tickets", headers=bearer(plain["root"])).json() == {"principal": "root"}
    me = client.get("/v1/whoami", headers=bearer(plain["bot"])).json()
    assert me == {"id": "bot", "role": "ticket", "mode": "keys"}


def test_security_headers_on_every_response(keys):
    client, plain, _, _ = keys
    for r in (client.get("/healthz"), client.post("/v1/tickets"), client.post("/v1/tickets", headers=bearer(plain["bot"]))):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


def test_429_with_retry_after_per_key(keys):
    client, plain, guard, _ = keys
    clock = guard.limiter.clock
    codes = [client.post("/v1/tickets", headers=bearer(plain["slow"])).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = client.post("/v1/tickets", headers=bearer(plain["slow"]))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "slow" in r.json()["detail"]
    # Other keys are not affected; the limited key recovers when the bucket refills (60/min: 1 per second).
    assert client.post("/v1/tickets", headers=bearer(plain["bot"])).status_code == 200
    clock.t += int(r.headers["retry-after"])
    assert client.post("/v1/tickets", headers=bearer(plain["slow"])).status_code == 200


def test_failed_attempts_are_rate_limited_per_client(keys):
    client, plain, guard, _ = keys
    codes = [client.post("/v1/tickets", headers=bearer(f"fr_guess{i}")).status_code for i in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    # A valid key still works: the limit slows guessing, it does not lock out key holders.
    assert client.post("/v1/tickets", headers=bearer(plain["bot"])).status_code == 200


def test_rotation_through_the_key_file_without_restart(keys):
    client, plain, guard, tmp = keys
    path = tmp / "api_keys.yaml"
    fresh = new_key()
    KeyFile(path).add(ApiKeySpec(id="ci", role="ticket", hash=sha256_hash(fresh)))
    time.sleep(0.06)
    assert client.post("/v1/tickets", headers=bearer(fresh)).json() == {"principal": "ci"}
    # Rotate: a new key for the same caller, then the old one is revoked.
    rotated = new_key()
    KeyFile(path).revoke("ci")
    KeyFile(path).add(ApiKeySpec(id="ci", role="ticket", hash=sha256_hash(rotated)))
    time.sleep(0.06)
    assert client.post("/v1/tickets", headers=bearer(fresh)).status_code == 401
    assert client.post("/v1/tickets", headers=bearer(rotated)).status_code == 200
    # A broken key file keeps the previous keys in service and reports the problem.
    path.write_text("keys: [{id: 'Bad Id', role: nobody}]")
    time.sleep(0.06)
    assert client.post("/v1/tickets", headers=bearer(rotated)).status_code == 200
    listing = client.get("/v1/admin/keys", headers=bearer(plain["root"])).json()
    assert listing["error"] and "ci" in [k["id"] for k in listing["keys"]]
    assert guard.keyring.last_error


def test_admin_key_endpoints(keys):
    client, plain, _, tmp = keys
    admin = bearer(plain["root"])
    r = client.post("/v1/admin/keys", headers=admin, json={"id": "pager", "role": "ticket", "comment": "pagerduty"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["key"].startswith("fr_") and made["hash"] == sha256_hash(made["key"])
    stored = yaml.safe_load((tmp / "api_keys.yaml").read_text())
    assert made["key"] not in (tmp / "api_keys.yaml").read_text(), "only the hash is stored"
    assert stored["keys"][0]["id"] == "pager" and oct((tmp / "api_keys.yaml").stat().st_mode & 0o777) == "0o600"
    assert client.post("/v1/tickets", headers=bearer(made["key"])).json() == {"principal": "pager"}
    assert client.post("/v1/admin/keys", headers=admin, json={"id": "pager", "role": "ticket"}).status_code == 409
    assert client.post("/v1/admin/keys", headers=admin, json={"id": "root", "role": "admin"}).status_code == 409
    assert client.post("/v1/admin/keys", headers=admin, json={"id": "Bad Id", "role": "ticket"}).status_code == 422
    listing = client.get("/v1/admin/keys", headers=admin).json()
    assert {k["id"]: k["source"] for k in listing["keys"]} == {"root": "config", "bot": "config", "slow": "config",
                                                                "pager": "file"}
    assert "hash" not in listing["keys"][0]
    assert client.delete("/v1/admin/keys/bot", headers=admin).status_code == 409  # config keys: restart
    assert client.delete("/v1/admin/keys/nobody", headers=admin).status_code == 404
    r = client.delete("/v1/admin/keys/pager", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] == "pager"
    assert client.post("/v1/tickets", headers=bearer(made["key"])).status_code == 401
    assert client.post("/v1/admin/keys", headers=bearer(plain["bot"]), json={"id": "x", "role": "admin"}).status_code == 403


def test_last_admin_key_cannot_be_revoked(tmp_path):
    key = new_key()
    KeyFile(tmp_path / "k.yaml").add(ApiKeySpec(id="only-admin", role="admin", hash=sha256_hash(key)))
    auth.configure(AuthConfig(key_file=str(tmp_path / "k.yaml")), None, environ={})
    client = TestClient(_app(), base_url=BASE)
    r = client.delete("/v1/admin/keys/only-admin", headers=bearer(key))
    assert r.status_code == 409 and "last admin" in r.json()["detail"]


def test_environment_keys_and_scrypt(tmp_path):
    env_key, human = new_key(), "correct horse battery staple"
    hashed = new_key()
    environ = {"FLOWROUTER_API_KEYS": f"ops:ticket:{env_key}, boss:admin:{scrypt_hash(human, log2_n=10)},"
                                      f"svc:ticket:{sha256_hash(hashed)}"}
    auth.configure(AuthConfig(), str(tmp_path), environ=environ)
    client = TestClient(_app(), base_url=BASE)
    assert client.post("/v1/tickets", headers=bearer(env_key)).json() == {"principal": "ops"}
    assert client.post("/v1/tickets", headers=bearer(hashed)).json() == {"principal": "svc"}
    assert client.post("/v1/map", headers=bearer(human)).status_code == 200
    assert client.post("/v1/map", headers=bearer(human + "x")).status_code == 401
    # A malformed variable is reported, not fatal.
    guard = auth.configure(AuthConfig(), str(tmp_path), environ={"FLOWROUTER_API_KEYS": "nonsense"})
    assert guard.keyring.env_error and not guard.keyring.entries()


def test_no_keys_means_nobody_gets_in(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        auth.configure(AuthConfig(), str(tmp_path), environ={})
    assert "no API keys" in caplog.text
    client = TestClient(_app(), base_url=BASE)
    assert client.post("/v1/tickets").status_code == 401
    assert client.get("/v1/map").status_code == 401


def test_open_mode_is_explicit_logged_and_loopback_only(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        auth.configure(AuthConfig(mode="open"), str(tmp_path), "127.0.0.1", environ={})
    assert "OPEN MODE" in caplog.text
    client = TestClient(_app(), base_url=BASE)
    assert client.post("/v1/tickets").json() == {"principal": "anonymous"}
    assert client.post("/v1/map").status_code == 200
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 is refused.
    assert TestClient(_app(), base_url="http://evil.example:8000").post("/v1/map").status_code == 403
    assert TestClient(_app(), base_url="http://localhost:8000").post("/v1/map").status_code == 200
    with pytest.raises(ValueError, match="loopback"):
        auth.check_config(AuthConfig(mode="open"), "0.0.0.0")
    auth.check_config(AuthConfig(mode="open", allow_open_on_network=True), "0.0.0.0")
    auth.check_config(AuthConfig(mode="keys"), "0.0.0.0")


def test_default_config_is_open_explicitly_and_a_missing_section_means_keys():
    from core.config import load_config

    assert AuthConfig().mode == "keys"
    cfg = load_config()
    assert cfg.auth.mode == "open"
    assert "mode: open" in open(cfg.source).read()


def test_config_paths_resolve_against_the_config_file(tmp_path):
    from core.config import load_config
    from core.paths import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    base = DEFAULT_CONFIG.parent
    for section in ("tasks",):
        raw[section]["tasks"] = str((base / raw[section]["tasks"]).resolve())
        raw[section]["examples"] = [str((base / x).resolve()) for x in raw[section]["examples"]]
    raw["map"] = str((base / raw["map"]).resolve())
    raw["knowledge"]["docs"] = [str((base / x).resolve()) for x in raw["knowledge"]["docs"]]
    raw["auth"] = {"mode": "keys", "key_file": "keys/api.yaml"}
    raw["console"] = {"leaderboard_dir": "lb"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.auth.key_file == str(tmp_path / "keys" / "api.yaml")
    assert cfg.console.leaderboard_dir == str(tmp_path / "lb")


def test_key_spec_rejects_plain_keys():
    with pytest.raises(ValueError):
        ApiKeySpec(id="x", role="ticket", hash="fr_plaintext-key")
    with pytest.raises(ValueError):
        ApiKeySpec(id="x", role="root", hash=sha256_hash("k"))


def test_openapi_documents_security_and_errors(keys):
    client, plain, _, _ = keys
    schema = client.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearerKey", "apiKeyHeader"}
    post_map = schema["paths"]["/v1/map"]["post"]
    assert post_map["x-required-role"] == "admin" and {"401", "403", "429"} <= set(post_map["responses"])
    assert "Retry-After" in post_map["responses"]["429"]["headers"]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert schema["paths"]["/v1/tickets"]["post"]["x-required-role"] == "ticket"
