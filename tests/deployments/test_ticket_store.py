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
