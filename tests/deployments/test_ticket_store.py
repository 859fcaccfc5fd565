from deployments.ticket_store import DONE, FAILED, QUEUED, RUNNING, TicketStore


def test_lifecycle_and_pending(tmp_path):
    s = TicketStore(tmp_path / "t.sqlite")
    assert s.accept("a", {"title": "x"}, {"n": 2})
    assert not s.accept("a", {"title": "x"}, {})
    assert s.get("a")["status"] == QUEUED and s.get("a")["params"] == {"n": 2}
    s.start("a")
    assert s.get("a")["status"] == RUNNING and s.get("a")["attempts"] == 1
    assert [r["id"] for r in s.pending(stale_after_s=0)] == ["a"]  # a running ticket whose worker died
    assert s.pending(stale_after_s=3600) == []
    s.complete("a", {"ok": True})
    assert s.get("a")["status"] == DONE and s.get("a")["result"] == {"ok": True}
    s.accept("b", {"title": "y"}, {})
    s.fail("b", "boom", retry=True)
    assert s.get("b")["status"] == QUEUED
    s.fail("b", "boom")
    assert s.get("b")["status"] == FAILED and s.counts() == {DONE: 1, FAILED: 1}
    assert s.get("zzz") is None


def test_feedback_joins_ticket_and_result(tmp_path):
    s = TicketStore(tmp_path / "t.sqlite")
    s.accept("a", {"title": "x"}, {})
    s.complete("a", {"best_index": 0})
    s.add_feedback("a", "accept", 0, "good")
    [row] = TicketStore(tmp_path / "t.sqlite").feedback()  # a second connection sees it (durable)
    assert row["verdict"] == "accept" and row["request"] == {"title": "x"} and row["result"] == {"best_index": 0}


def test_critical_async_tickets_are_claimed_before_older_ones(tmp_path):
    store = TicketStore(tmp_path / "t.sqlite")
    for tid, params in (("old-low", {"n": 1}), ("new-critical", {"n": 1, "critical": True}), ("newer-low", {"n": 1})):
        assert store.accept(tid, {"title": tid}, params, mode="async")
    assert [r["id"] for r in store.claim(3, stale_after_s=30)] == ["new-critical", "old-low", "newer-low"]


def test_an_edit_stores_its_correction_and_outcome(tmp_path):
    s = TicketStore(tmp_path / "t.sqlite")
    s.accept("a", {"title": "x"}, {})
    s.complete("a", {"best_index": 0})
    steps = [{"id": "S1", "kind": "process", "text": "Check", "next": "S2"}, {"id": "S2", "kind": "terminal",
                                                                                 "text": "Done"}]
    s.add_feedback("a", "edit", 0, principal="ops-key", workflow={"steps": steps},
                   outcome={"status": "resolved", "step": "S1"})
    [row] = TicketStore(tmp_path / "t.sqlite").feedback(ticket_id="a")
    assert row["verdict"] == "edit" and row["workflow"]["steps"] == steps and row["principal"] == "ops-key"
    assert row["outcome"] == {"status": "resolved", "step": "S1"}


def test_a_store_written_before_edits_is_migrated_with_its_feedback(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as c:
        c.executescript(
            "CREATE TABLE tickets (id TEXT PRIMARY KEY, received REAL NOT NULL, updated REAL NOT NULL, status TEXT "
            "NOT NULL, mode TEXT NOT NULL, request TEXT NOT NULL, params TEXT NOT NULL, result TEXT, error TEXT, "
            "attempts INTEGER NOT NULL DEFAULT 0);"
            "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, ticket_id TEXT NOT NULL, verdict TEXT "
            "NOT NULL CHECK (verdict IN ('accept', 'reject')), candidate INTEGER, comment TEXT, principal TEXT, "
            "created REAL NOT NULL);"
            "INSERT INTO tickets VALUES ('a', 1, 1, 'done', 'sync', '{}', '{}', '{}', NULL, 1);"
            "INSERT INTO feedback (ticket_id, verdict, created) VALUES ('a', 'reject', 1);")
    s = TicketStore(path)
    s.add_feedback("a", "edit", 0, workflow={"steps": []})
    assert [r["verdict"] for r in TicketStore(path).feedback()] == ["reject", "edit"]
