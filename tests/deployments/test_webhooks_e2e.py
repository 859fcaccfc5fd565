"""Webhooks on the real service: a key with a webhook_url (made through the admin key API) submits an async
ticket; its receiver fails the first two POSTs, gets the signed JSON on the third, and /v1/stats shows the
retries. A second key with a Slack receiver gets the Slack message with the console deep link."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from deployments import webhooks
from deployments.ticket_store import TicketStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

SECRET = "e2e-webhook-secret-0123456789"
TICKET = {"title": "db-01 disk 97% full, postgres cannot write WAL",
          "description": "pg_wal on /var/lib/postgresql keeps growing; INSERTs fail with ENOSPC since 10:02"}


class Receiver:
    """A webhook receiver on loopback: answers `statuses` in turn, then 200; records every request."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests: list[tuple[int, dict, bytes]] = []
        self.accepted = threading.Event()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status = rx.statuses.pop(0) if rx.statuses else 200
                rx.requests.append((status, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                if status == 200:
                    rx.accepted.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/flowrouter"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _key_with_webhook(service, key_id, url, fmt, secret=None):
    body = {"id": key_id, "role": "ticket", "webhook_url": url, "webhook_format": fmt, "rate_per_minute": 0}
    if secret:
        body["webhook_secret"] = secret
    r = service.post("/v1/admin/keys", json=body, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _submit_async(service, key, ticket_id):
    r = httpx.post(f"{service.url}/v1/tickets", params={"mode": "async", "candidates": 1}, timeout=60,
                   headers={"Authorization": f"Bearer {key}"}, json={**TICKET, "id": ticket_id})
    assert r.status_code == 202, r.text
    return r.json()["ticket_id"]


def test_async_result_is_signed_retried_and_counted(service):
    rx = Receiver([500, 500])
    try:
        key = _key_with_webhook(service, "e2e-webhook-json", rx.url, "json", SECRET)
        tid = _submit_async(service, key, "webhook-e2e-1")
        assert rx.accepted.wait(900), f"no delivery accepted; receiver saw {[s for s, _, _ in rx.requests]}"
    finally:
        rx.close()
    assert [s for s, _, _ in rx.requests] == [500, 500, 200]
    assert len({h["x-flowrouter-delivery"] for _, h, _ in rx.requests}) == 1, "retries are one delivery"
    _, headers, body = rx.requests[-1]
    assert webhooks.verify(SECRET, body, headers["x-flowrouter-timestamp"], headers["x-flowrouter-signature"])
    assert not webhooks.verify("some-other-secret-000", body, headers["x-flowrouter-timestamp"],
                               headers["x-flowrouter-signature"])
    payload = json.loads(body)
    assert payload["event"] == "ticket.done" and payload["ticket_id"] == tid and payload["status"] == "done"
    assert payload["submitted_by"] == "e2e-webhook-json" and payload["ticket"]["title"] == TICKET["title"]
    assert payload["workflow"]["mermaid"].startswith("flowchart") and payload["expert"]
    assert payload["console_url"] == f"{service.url}/tickets/{tid}"
    assert TicketStore(service.state_dir / "tickets.sqlite").get(tid)["principal"] == "e2e-webhook-json"

    stats = service.get("/v1/stats").json()["webhooks"]
    assert stats["delivered"] >= 1 and stats["retries"] >= 2, stats
    assert stats["last_error"]["error"].startswith("HTTP 500"), stats
    assert "/hooks/flowrouter" not in json.dumps(stats), "receiver paths are not shown"
    # The console link in the message opens the page without a key (the data behind it needs one).
    page = httpx.get(payload["console_url"], timeout=30)
    assert page.status_code == 200 and "/console/app.js" in page.text


def test_slack_receiver_gets_the_numbered_workflow_and_the_console_link(service):
    rx = Receiver()
    try:
        key = _key_with_webhook(service, "e2e-webhook-slack", rx.url, "slack")
        tid = _submit_async(service, key, "webhook-e2e-slack-1")  # same text: usually served from the cache
        assert rx.accepted.wait(900), "no Slack delivery"
        time.sleep(0.5)
    finally:
        rx.close()
    assert len(rx.requests) == 1
    text = json.loads(rx.requests[0][2])["text"]
    assert text.startswith("*FlowRouter: db-01 disk 97% full, postgres cannot write WAL*")
    assert "Expert `" in text and "\n1. " in text and "\n2. " in text
    assert f"<{service.url}/tickets/{tid}|Open ticket {tid} in the FlowRouter console>" in text
