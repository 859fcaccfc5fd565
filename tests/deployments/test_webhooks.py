"""Webhook deliveries without Ray or models: signing and verification, the JSON and Slack formats, retries
with backoff against a real HTTP receiver on loopback, durability across delivery managers on one store,
and the wiring (key specs, the flood gate's hook, the console deep link)."""

import asyncio
import hashlib
import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.auth_config import ApiKeySpec, AuthConfig, ConsoleConfig
from core.config import WebhooksConfig, load_config
from core.schemas import KnowledgeUse, Scores, Ticket, TicketResult, WorkflowOut
from core.task_map import TaskMap
from deployments import auth, console, webhooks
from deployments.auth.keys import KeyEntry, KeyFile, redact_url
from deployments.flood import FloodGate
from deployments.ticket_store import TicketStore

# Each test here takes under a second: a stall (a delivery or a receiver that never returns) should fail fast
# with its stacks, not sit out the suite-wide timeout.
pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret-s3cret-s3cret-s3cret"
WORKFLOW = {
    "mermaid": "flowchart TD",
    "steps": [{"id": "S1", "kind": "process", "text": "Check disk usage with `df -h`"},
              {"id": "S2", "kind": "decision", "text": "Is pg_wal over 80% of the disk?"},
              {"id": "S3", "kind": "process", "text": "Archive old WAL <segments> & free space"},
              {"id": "T1", "kind": "terminal", "text": "Resolved"},
              {"id": "T2", "kind": "terminal", "text": "Escalate to the DBA"}],
    "edges": [{"source": "S1", "target": "S2"}, {"source": "S2", "target": "S3", "label": "Yes"},
              {"source": "S2", "target": "T2", "label": "No"}, {"source": "S3", "target": "T1"}],
}


# ---- helpers -------------------------------------------------------------------------------------------------
class Receiver:
    """A real HTTP server on loopback that answers `statuses` in turn (then 200) and records each request."""

    def __init__(self, statuses=(), headers=None):
        self.statuses, self.extra = list(statuses), headers or {}
        self.requests: list[tuple[dict, bytes]] = []
        self.got = threading.Event()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                rx.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = rx.statuses.pop(0) if rx.statuses else 200
                self.send_response(status)
                for k, v in (rx.extra if status != 200 else {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                if status == 200:
                    rx.got.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(*a, **kw):
        made.append(Receiver(*a, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _cfg(**kw):
    base = dict(backoff_s=0.05, max_backoff_s=0.2, jitter=0.0, poll_interval_s=0.02, timeout_s=5)
    return WebhooksConfig(**{**base, **kw})


def _result(ticket_id="t1"):
    wf = WorkflowOut(**WORKFLOW)
    return TicketResult(ticket_id=ticket_id, task="storage", confidence=0.9, decision_path="retrieval",
                        expert="smollm2-generalist", map_version="m1", workflow=wf, best_index=0,
                        candidates=[{"index": 0, "workflow": wf, "scores": Scores(overall=4.0)}],
                        retrieved_examples=[], context_ids=[], knowledge=KnowledgeUse(status="none matched"),
                        timings_ms={"total": 4.0})


def _finished(store, tid, url, fmt="json", source="config", principal="alice", ok=True):
    """An async ticket accepted with a webhook target and finished, as the flood gate leaves it."""
    params = {"n": 1, "expert": None, "cache": True, "webhook": {"url": url, "format": fmt, "source": source}}
    assert store.accept(tid, {"title": "db-01 disk 97% full <b>", "description": "pg_wal"}, params, mode="async",
                        principal=principal)
    store.claim(1, 30)
    if ok:
        store.complete(tid, _result(tid).model_dump(mode="json"))
    else:
        store.fail(tid, "expert produced no usable workflow")
    return store.get(tid)


def _manager(store, cfg=None, entries=(), environ=None, **kw):
    by_id = {e.id: e for e in entries}
    return webhooks.WebhookManager(cfg or _cfg(), store, "https://flowrouter.example.com/",
                                   key_lookup=lambda p: by_id.get(p),
                                   environ={"FLOWROUTER_WEBHOOK_SECRET": SECRET} if environ is None else environ,
                                   **kw)


async def _until(pred, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# ---- signing -----------------------------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_over_timestamp_and_raw_body():
    body = b'{"ticket_id":"t1"}'
    want = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.sign(SECRET, 1700000000, body) == f"sha256={want}"
    h = webhooks.signed_headers(SECRET, body, "d1", "ticket.done", now=1700000000.5)
    assert h["X-FlowRouter-Signature"] == f"sha256={want}" and h["X-FlowRouter-Timestamp"] == "1700000000"
    assert h["X-FlowRouter-Delivery"] == "d1" and h["X-FlowRouter-Event"] == "ticket.done"


def test_verification_refuses_tampering_wrong_secrets_and_replays():
    body = b'{"a":1}'
    sig = webhooks.sign(SECRET, 1000, body)
    assert webhooks.verify(SECRET, body, "1000", sig, now=1100)
    assert not webhooks.verify(SECRET, b'{"a":2}', "1000", sig, now=1100)        # body changed
    assert not webhooks.verify("another-secret-value", body, "1000", sig, now=1100)
    assert not webhooks.verify(SECRET, body, "1001", sig, now=1100)              # timestamp is signed
    assert not webhooks.verify(SECRET, body, "1000", sig, now=1000 + 301)        # replayed later
    assert not webhooks.verify(SECRET, body, None, sig) and not webhooks.verify(SECRET, body, "x", sig)
    assert not webhooks.verify(SECRET, body, "1000", None, now=1100)


# ---- formats -----------------------------------------------------------------------------------------------------
def test_slack_message_has_title_expert_numbered_workflow_and_console_link(tmp_path):
    store = TicketStore(tmp_path / "tickets.sqlite")
    ticket = _finished(store, "t/1", "https://hooks.example.com/x", fmt="slack")
    link = webhooks.console_link("https://fr.example.com/", ticket["id"])
    assert link == "https://fr.example.com/tickets/t%2F1"
    msg = webhooks.slack_payload(ticket, link)
    assert set(msg) == {"text"}
    text = msg["text"]
    assert text.startswith("*FlowRouter: db-01 disk 97% full &lt;b&gt;*")
    assert "Expert `smollm2-generalist`" in text and "task `storage`" in text
    assert "1. Check disk usage with `df -h`" in text
    assert "2. Is pg_wal over 80% of the disk? (Yes → 3, No → 5)" in text
    assert "3. Archive old WAL &lt;segments&gt; &amp; free space" in text
    assert "4. Resolved (end)" in text
    assert f"<{link}|Open ticket t/1 in the FlowRouter console>" in text
    failed = webhooks.slack_payload(_finished(store, "t2", "https://h.example.com", ok=False), link)
    assert "failed: expert produced no usable workflow" in failed["text"]


def test_json_payload_carries_ticket_outcome_and_full_result(tmp_path):
    store = TicketStore(tmp_path / "tickets.sqlite")
    ticket = _finished(store, "t1", "https://h.example.com")
    body = json.loads(webhooks.render("json", ticket, "d1", "https://fr/tickets/t1"))
    assert body["event"] == "ticket.done" and body["delivery_id"] == "d1" and body["status"] == "done"
    assert body["ticket"]["title"].startswith("db-01") and body["submitted_by"] == "alice"
    assert body["expert"] == "smollm2-generalist" and body["workflow"]["steps"][0]["id"] == "S1"
    assert body["result"]["ticket_id"] == "t1" and body["console_url"] == "https://fr/tickets/t1"


def test_backoff_doubles_caps_and_jitters():
    assert [webhooks.backoff_s(a, 1, 10, 0) for a in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert webhooks.backoff_s(3, 1, 10, 0.5, rand=lambda: 1.0) == 2.0
    assert webhooks.backoff_s(3, 1, 10, 0.5, rand=lambda: 0.0) == 4.0
    assert all(webhooks.retryable_status(c) for c in (408, 429, 500, 502, 503))
    assert not any(webhooks.retryable_status(c) for c in (400, 401, 403, 404, 410, 422))
    assert webhooks.retry_after_s("7", 5) == 5 and webhooks.retry_after_s("soon", 5) is None


# ---- delivering ------------------------------------------------------------------------------------------------
def test_retries_with_backoff_until_the_receiver_accepts(tmp_path, receiver_factory, caplog):
    rx = receiver_factory([500, 500])
    store = TicketStore(tmp_path / "tickets.sqlite")
    row = _finished(store, "t1", rx.url)

    async def main():
        mgr = _manager(store)
        caplog.set_level(logging.DEBUG)
        assert mgr.ticket_finished(row)  # starts the sender on this loop
        # The row says delivered a moment before the sender counts it: wait for both before stopping it.
        await _until(lambda: store_row()["status"] == "delivered" and mgr.sent["ok"] == 1)
        await mgr.stop()
        return mgr.stats()

    def store_row():
        return webhooks.DeliveryStore(store.path).get("t1")

    stats = asyncio.run(main())
    assert len(rx.requests) == 3
    delivery_ids = {h["x-flowrouter-delivery"] for h, _ in rx.requests}
    assert len(delivery_ids) == 1, "a retry is the same delivery"
    headers, body = rx.requests[-1]
    assert webhooks.verify(SECRET, body, headers["x-flowrouter-timestamp"], headers["x-flowrouter-signature"])
    assert headers["content-type"] == "application/json" and headers["x-flowrouter-event"] == "ticket.done"
    assert json.loads(body)["workflow"]["steps"][1]["kind"] == "decision"
    d = store_row()
    assert d["attempts"] == 3 and d["last_status"] == 200 and d["delivered_at"]
    assert stats["delivered"] == 1 and stats["retries"] == 2 and stats["failed"] == 0 and stats["retrying"] == 0
    assert stats["last_error"]["error"].startswith("HTTP 500") and stats["last_error"]["ticket_id"] == "t1"
    assert "secret-path" not in json.dumps(stats), "receiver URLs are shown without their path"
    assert stats["replica"]["ok"] == 1 and stats["replica"]["retried"] == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "retry 2" in logged and SECRET not in logged and "secret-path" not in logged


def test_a_network_error_is_retried_and_4xx_is_not(tmp_path, receiver_factory):
    store = TicketStore(tmp_path / "tickets.sqlite")
    dead = receiver_factory()
    dead_url = dead.url
    dead.close()  # nothing listens there now
    _finished(store, "down", dead_url)
    rx = receiver_factory([410])
    _finished(store, "gone", rx.url)

    async def main():
        mgr = _manager(store, _cfg(max_attempts=3))
        mgr.recover()  # both tickets finished before this manager existed
        mgr.ensure_started()
        ds = mgr.deliveries
        await _until(lambda: ds.get("down")["status"] == "failed" and ds.get("gone")["status"] == "failed")
        await mgr.stop()
        return ds.get("down"), ds.get("gone"), mgr.stats()

    down, gone, stats = asyncio.run(main())
    assert down["attempts"] == 3 and "ConnectError" in down["last_error"] and "after 3 attempts" in down["last_error"]
    assert gone["attempts"] == 1 and gone["last_status"] == 410 and len(rx.requests) == 1
    assert stats["failed"] == 2 and stats["delivered"] == 0


def test_a_delivery_pending_at_shutdown_is_sent_by_the_next_manager(tmp_path, receiver_factory):
    """Durability: the delivery is a row before any POST; a new manager on the same store sends it, and one
    left `sending` by a manager that died mid-POST is taken again once its lease runs out."""
    rx = receiver_factory([503])
    store = TicketStore(tmp_path / "tickets.sqlite")
    row = _finished(store, "t1", rx.url)
    first = _manager(store)
    assert first.ticket_finished(row)  # no event loop here: recorded, not sent
    assert not first.ticket_finished(row), "one delivery per ticket"
    assert first.stats()["pending"] == 1 and rx.requests == []

    second_row = _finished(store, "t2", rx.url)
    first.ticket_finished(second_row)
    claimed = first.deliveries.claim(1, lease_s=0.2)  # the first manager "dies" mid-POST of t1
    assert [c["ticket_id"] for c in claimed] == ["t1"]

    async def main():
        restarted = _manager(TicketStore(tmp_path / "tickets.sqlite"))
        restarted.ensure_started()
        await _until(lambda: restarted.stats()["delivered"] == 2)
        await restarted.stop()
        return restarted.stats()

    stats = asyncio.run(main())
    ids = sorted(json.loads(b)["ticket_id"] for _, b in rx.requests)
    assert ids in (["t1", "t1", "t2"], ["t1", "t2", "t2"]), "each sent, one of them once more after the 503"
    assert stats["delivered"] == 2 and stats["pending"] == 0 and stats["retries"] >= 1


def test_recover_finds_finished_tickets_whose_delivery_was_never_recorded(tmp_path):
    store = TicketStore(tmp_path / "tickets.sqlite")
    _finished(store, "t1", "https://h.example.com")
    store.accept("plain", {"title": "x"}, {"n": 1}, mode="async")  # no webhook asked for
    store.claim(1, 30)
    store.complete("plain", {})
    mgr = _manager(store)
    assert mgr.recover() == 1 and mgr.recover() == 0
    assert mgr.deliveries.get("t1")["status"] == "pending" and mgr.deliveries.get("plain") is None


def test_json_deliveries_need_a_secret_and_slack_ones_do_not(tmp_path, receiver_factory):
    rx = receiver_factory()
    store = TicketStore(tmp_path / "tickets.sqlite")
    _finished(store, "j", rx.url, fmt="json")
    _finished(store, "s", rx.url, fmt="slack")

    async def main():
        mgr = _manager(store, environ={})
        mgr.recover()
        mgr.ensure_started()
        await _until(lambda: mgr.stats()["failed"] == 1 and mgr.stats()["delivered"] == 1)
        await mgr.stop()
        return mgr.deliveries.get("j")

    j = asyncio.run(main())
    assert "no signing secret" in j["last_error"]
    headers, body = rx.requests[0]
    assert "x-flowrouter-signature" not in headers and set(json.loads(body)) == {"text"}


# ---- where the receiver and the secret come from ---------------------------------------------------------------------
def _entry(kid, url=None, fmt=None, secret=None):
    spec = ApiKeySpec(id=kid, role="ticket", hash="sha256:" + "0" * 64, webhook_url=url, webhook_format=fmt,
                      webhook_secret=secret)
    return KeyEntry.of(spec, "file")


def test_the_key_webhook_overrides_the_config_and_signs_with_its_own_secret(tmp_path):
    store = TicketStore(tmp_path / "tickets.sqlite")
    key = _entry("bob", "https://bob.example.com/hook", "slack", "bob-secret-0123456789")
    mgr = _manager(store, _cfg(url="https://ops.example.com/hook"), entries=[key, _entry("carol")])
    assert mgr.target_for("bob") == {"url": "https://bob.example.com/hook", "format": "slack", "source": "key"}
    assert mgr.target_for("carol") == {"url": "https://ops.example.com/hook", "format": "json", "source": "config"}
    assert mgr.target_for(None)["source"] == "config"
    assert mgr.secret_for({"source": "key", "principal": "bob"}) == "bob-secret-0123456789"
    assert mgr.secret_for({"source": "config", "principal": "bob"}) == SECRET
    assert _manager(store).target_for("carol") is None, "no key URL and no webhooks.url: no webhook"
    assert _manager(store, _cfg(enabled=False, url="https://x.example.com")).target_for("bob") is None
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file-0123456789\n")
    assert _manager(store, _cfg(secret_file=str(secret_file)), environ={}).secret_for({"source": "config"}) \
        == "from-a-file-0123456789"


def test_key_specs_carry_webhooks_and_the_api_never_shows_the_secret(tmp_path):
    kf = KeyFile(tmp_path / "api_keys.yaml")
    kf.add(ApiKeySpec(id="bob", role="ticket", hash="sha256:" + "1" * 64, webhook_url="https://h.example.com/T0/B0/xyz",
                      webhook_format="slack", webhook_secret="bob-secret-0123456789"))
    spec = kf.read()[0]
    assert spec.webhook_url.endswith("/xyz") and spec.webhook_secret == "bob-secret-0123456789"
    assert "bob-secret" not in repr(spec)
    entry = KeyEntry.of(spec, "file")
    public = entry.public()
    assert public["webhook"] == "https://h.example.com/…" and public["webhook_format"] == "slack"
    assert "bob-secret" not in json.dumps(public) and "bob-secret" not in repr(entry)
    assert redact_url("http://user:pw@h:8080/p?q=1") == "http://h:8080/…"
    with pytest.raises(ValueError):
        ApiKeySpec(id="x", role="ticket", hash="sha256:" + "1" * 64, webhook_url="file:///etc/passwd")


def test_admin_api_creates_a_key_with_a_webhook(tmp_path):
    app = FastAPI()
    auth.install(app)
    auth.configure(AuthConfig(mode="open"), str(tmp_path), environ={})
    client = TestClient(app, base_url="http://127.0.0.1")
    r = client.post("/v1/admin/keys", json={"id": "hooked", "role": "ticket", "webhook_url": "https://h.example.com/a/b",
                                            "webhook_format": "slack", "webhook_secret": "0123456789abcdef0123"})
    assert r.status_code == 201, r.text
    listed = {k["id"]: k for k in client.get("/v1/admin/keys").json()["keys"]}
    assert listed["hooked"]["webhook"] == "https://h.example.com/…" and "0123456789abcdef" not in json.dumps(listed)
    bad = client.post("/v1/admin/keys", json={"id": "bad", "role": "ticket", "webhook_url": "ftp://h/x"})
    assert bad.status_code == 422


# ---- wiring ----------------------------------------------------------------------------------------------------
def test_the_flood_gate_records_the_submitter_and_hands_finished_async_tickets_over(tmp_path):
    async def compute(ticket, n, expert, task_map):
        return _result(ticket.id)

    async def current_map():
        return TaskMap(version="m1", routes={}, fallback="smollm2-generalist")

    async def main():
        cfg = load_config()
        cfg.flood = cfg.flood.model_copy(update=dict(poll_interval_s=0.05, heartbeat_s=0.1, stale_after_s=0.3))
        store = TicketStore(tmp_path / "tickets.sqlite")
        gate = FloodGate(cfg, store, compute, current_map)
        mgr = _manager(store, _cfg(url="https://ops.example.com/hook"))
        seen = []
        gate.on_finished = lambda row: (seen.append(row["id"]), mgr._add(row["id"], "done", row["params"]["webhook"],
                                                                         "alice"))
        target = mgr.target_for("alice")
        gate.submit_async(Ticket(title="disk full", id="a1"), 1, None, principal="alice", webhook=target)
        gate.submit_async(Ticket(title="disk full too", id="a2"), 1, None, principal="alice")
        await _until(lambda: store.get("a1")["status"] == "done" and store.get("a2")["status"] == "done")
        await _until(lambda: len(seen) == 2)
        await gate.worker.stop()
        return store, mgr

    store, mgr = asyncio.run(main())
    assert store.get("a1")["principal"] == "alice" and store.get("a1")["params"]["webhook"]["source"] == "config"
    assert mgr.deliveries.get("a1")["status"] == "pending" and mgr.deliveries.get("a2") is None


def test_an_old_store_gains_the_principal_column(tmp_path):
    import sqlite3

    db = tmp_path / "tickets.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tickets (id TEXT PRIMARY KEY, received REAL NOT NULL, updated REAL NOT NULL, "
                 "status TEXT NOT NULL, mode TEXT NOT NULL, request TEXT NOT NULL, params TEXT NOT NULL, result TEXT, "
                 "error TEXT, attempts INTEGER NOT NULL DEFAULT 0)")
    conn.commit()
    conn.close()
    store = TicketStore(db)
    assert store.accept("t1", {"title": "x"}, {}, principal="bob") and store.get("t1")["principal"] == "bob"


def test_console_deep_link_serves_the_page_without_a_key(tmp_path):
    app = FastAPI()
    auth.install(app)
    console.install(app)
    auth.configure(AuthConfig(mode="keys"), str(tmp_path), environ={})
    console.configure(ConsoleConfig(), str(tmp_path), "keys")
    client = TestClient(app, base_url="http://127.0.0.1")
    r = client.get("/tickets/abc123")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "abc123" not in r.text, "nothing of the ticket is put in the page"
    assert auth.required_role("GET", "/tickets/abc") is None
    assert auth.required_role("POST", "/tickets/abc") == "admin"
    assert auth.required_role("GET", "/v1/tickets/abc") == "ticket"
    js = (console.STATIC_DIR / "app.js").read_text()
    assert "window.location.pathname" in js and "/v1/tickets/" in js


def test_keys_new_writes_a_webhook_with_its_secret_from_the_environment(tmp_path, monkeypatch, capsys):
    from cluster.cli import main

    path = tmp_path / "api_keys.yaml"
    monkeypatch.setenv("BOT_HOOK_SECRET", "bot-secret-0123456789")
    assert main(["keys", "new", "bot", "--role", "ticket", "--file", str(path), "--webhook-url",
                 "https://hooks.example.com/T0/B0/x", "--webhook-format", "slack",
                 "--webhook-secret-env", "BOT_HOOK_SECRET"]) == 0
    assert "bot-secret" not in capsys.readouterr().out
    spec = KeyFile(path).read()[0]
    assert (spec.webhook_url, spec.webhook_format, spec.webhook_secret) == \
        ("https://hooks.example.com/T0/B0/x", "slack", "bot-secret-0123456789")
    assert main(["keys", "new", "bot2", "--role", "ticket", "--file", str(path), "--webhook-url", "ftp://x"]) == 2
