"""`flowrouter ticket --follow` against a stand-in of the ticket API (a real HTTP server on loopback)."""

import json
from urllib.parse import parse_qs, urlparse

import pytest

from cluster.cli import main

RESULT = {"ticket_id": "t1", "task": "storage", "decision_path": "retrieval", "expert": "smollm2-apps",
          "best_index": 0, "timings_ms": {"classify": 400.0, "plan": 31200.0, "score": 5100.0},
          "candidates": [{"index": 0}], "workflow": {"mermaid": "flowchart TD"}}
# What GET /v1/tickets/t1 answers, poll after poll: a replica crash puts it back in the queue once.
STATES = [("queued", 0, None), ("queued", 0, None), ("running", 1, None), ("queued", 1, "replica died"),
          ("running", 2, None), ("done", 2, None)]


@pytest.fixture
def svc(stand_in):
    seen = {"posts": [], "polls": 0}

    def respond(method, path, headers, body):
        if method == "POST":
            url = urlparse(path)
            seen["posts"].append((url.path, parse_qs(url.query), body))
            return 202, {"ticket_id": "t1", "status": "queued", "status_url": "/v1/tickets/t1"}
        status, attempts, error = STATES[min(seen["polls"], len(STATES) - 1)]
        seen["polls"] += 1
        return 200, {"ticket_id": "t1", "status": status, "attempts": attempts, "error": error,
                     "result": RESULT if status == "done" else None}

    return stand_in(respond), seen


def test_follow_prints_each_status_change_then_the_result(svc, capsys, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)  # polls back to back
    url, seen = svc
    assert main(["ticket", "db-01 disk full\npostgres cannot write", "--url", url, "--follow", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["expert"] == "smollm2-apps"  # stdout: only the result
    path, query, body = seen["posts"][0]
    assert path == "/v1/tickets" and query["mode"] == ["async"] and body["title"] == "db-01 disk full"
    lines = [ln.split("s  ", 1)[1] for ln in err.splitlines() if "s  " in ln]
    assert lines == ["queued", "running", "queued again: replica died", "running (attempt 2)", "done"]
    assert "submitted" in err.splitlines()[0]
    assert "classified storage (retrieval) in 0.4s" in err and "planned by smollm2-apps: 1 candidates in 31.2s" in err
    assert "scored in 5.1s" in err


def test_follow_reports_a_failed_ticket(svc, capsys, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    url, _ = svc
    saved = list(STATES)
    STATES[:] = [("queued", 0, None), ("failed", 1, "expert produced no usable workflow")]
    try:
        assert main(["ticket", "x", "--url", url, "--follow"]) == 2
    finally:
        STATES[:] = saved
    assert "failed: expert produced no usable workflow" in capsys.readouterr().err
