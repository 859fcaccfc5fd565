"""`flowrouter status` against a stand-in of /healthz and /v1/stats (a real HTTP server on loopback)."""

import pytest

from cluster.cli import main

KEY = "fr_ticket-key"
HEALTH = {"status": "ok", "map_version": "starter-1", "experts": ["smollm2-generalist", "gemma3-storage"],
          "tasks": ["storage", "network"]}
STATS = {"window_s": 60, "tickets_per_s": 0.25, "latency_ms": {"p50": 1500.0, "p95": 9200.0}, "errors": 1,
         "rejects": {"total": 3},
         "queue": {"inflight": 2, "waiting": 1, "max_inflight": 8, "max_waiting": 16, "async_queued": 5,
                   "async_running": 1},
         "webhooks": {"enabled": True, "delivered": 7, "retrying": 1, "pending": 0, "failed": 2, "retries": 4,
                      "last_error": {"ticket_id": "t9", "error": "HTTP 503 from https://hooks.example.com/…"}}}


@pytest.fixture
def svc(stand_in):
    def respond(method, path, headers, body):
        if path == "/healthz":
            return 200, HEALTH
        if headers.get("authorization") != f"Bearer {KEY}":
            return 401, {"detail": "API key required"}
        return 200, STATS

    return stand_in(respond)


def test_status_shows_map_experts_queue_and_webhooks(svc, capsys):
    assert main(["status", "--url", svc, "--api-key", KEY]) == 0
    out = capsys.readouterr().out
    assert f"status: ok at {svc}" in out and "map version: starter-1" in out
    assert "experts: smollm2-generalist, gemma3-storage" in out
    assert "queue: 2 computing, 1 waiting (limits 8/16); async 5 queued, 1 running" in out
    assert "last 60s: 0.25 tickets/s, p50 1.5s, p95 9.2s, 1 errors, 3 rejected" in out
    assert "webhooks: 7 delivered, 1 retrying, 0 pending, 2 failed (4 retries); last error: HTTP 503" in out
    assert len(out.strip().splitlines()) == 7


def test_status_without_a_key_still_shows_health_and_says_what_is_missing(svc, capsys):
    assert main(["status", "--url", svc]) == 0
    out = capsys.readouterr().out
    assert "map version: starter-1" in out and "queue: needs an API key with the ticket role" in out


def test_status_key_from_the_environment(svc, capsys, monkeypatch):
    monkeypatch.setenv("FLOWROUTER_API_KEY", KEY)
    assert main(["status", "--url", svc]) == 0
    assert "queue: 2 computing" in capsys.readouterr().out
