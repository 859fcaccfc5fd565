"""Durable record of every accepted ticket, its result, and operator feedback (SQLite, WAL).

A ticket is written before any model runs, so an accepted ticket survives a replica crash or a
restart: anything still `queued` or `running` is found by `pending()` and retried. Feedback
(accept / reject of a returned workflow) is kept beside the result it judges; training reads it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    id TEXT PRIMARY KEY,
    received REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    mode TEXT NOT NULL,
    request TEXT NOT NULL,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tickets_status ON tickets(status, updated);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL REFERENCES tickets(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'reject')),
    candidate INTEGER,
    comment TEXT,
    principal TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_ticket ON feedback(ticket_id);
"""


class TicketStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    # ---- tickets ---------------------------------------------------------------------------
    def accept(self, ticket_id: str, request: dict, params: dict, mode: str = "sync") -> bool:
        """Record a ticket before work starts; False if the id is already known."""
        now = time.time()
        try:
            self._conn().execute(
                "INSERT INTO tickets (id, received, updated, status, mode, request, params) VALUES (?,?,?,?,?,?,?)",
                (ticket_id, now, now, QUEUED, mode, json.dumps(request), json.dumps(params)))
            return True
        except sqlite3.IntegrityError:
            return False

    def start(self, ticket_id: str) -> None:
        self._conn().execute("UPDATE tickets SET status=?, updated=?, attempts=attempts+1 WHERE id=?",
                             (RUNNING, time.time(), ticket_id))

    def complete(self, ticket_id: str, result: dict) -> None:
        self._conn().execute("UPDATE tickets SET status=?, updated=?, result=?, error=NULL WHERE id=?",
                             (DONE, time.time(), json.dumps(result), ticket_id))

    def fail(self, ticket_id: str, error: str, retry: bool = False) -> None:
        self._conn().execute("UPDATE tickets SET status=?, updated=?, error=? WHERE id=?",
                             (QUEUED if retry else FAILED, time.time(), error[:2000], ticket_id))

    def get(self, ticket_id: str) -> dict | None:
        row = self._conn().execute("SELECT * FROM tickets WHERE id=?", (ticket_id,)).fetchone()
        return _row(row) if row else None

    def pending(self, stale_after_s: float = 0.0, limit: int = 100) -> list[dict]:
        """Queued tickets, and running ones untouched for `stale_after_s` (their worker died)."""
        rows = self._conn().execute(
            "SELECT * FROM tickets WHERE status=? OR (status=? AND updated < ?) ORDER BY received LIMIT ?",
            (QUEUED, RUNNING, time.time() - stale_after_s, limit)).fetchall()
        return [_row(r) for r in rows]

    def claim(self, limit: int, stale_after_s: float) -> list[dict]:
        """Atomically take up to `limit` tickets to run (status -> running, attempts + 1), oldest first:
        queued async tickets, tickets put back for a retry (attempts > 0), and running tickets whose
        worker stopped marking them alive (`touch`) `stale_after_s` ago. A synchronous ticket that was
        just accepted (attempts 0) is left to the request that holds it. Safe across processes."""
        if limit <= 0:
            return []
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT * FROM tickets WHERE (status=? AND (mode='async' OR attempts>0)) "
                "OR (status=? AND updated < ?) ORDER BY received LIMIT ?",
                (QUEUED, RUNNING, now - stale_after_s, limit)).fetchall()
            conn.executemany("UPDATE tickets SET status=?, updated=?, attempts=attempts+1 WHERE id=?",
                             [(RUNNING, now, r["id"]) for r in rows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        out = []
        for r in rows:
            d = _row(r)
            d.update(status=RUNNING, updated=now, attempts=d["attempts"] + 1)
            out.append(d)
        return out

    def touch(self, ticket_ids: list[str]) -> None:
        """Mark running tickets alive (a heartbeat), so `claim` does not take them for crashed ones."""
        if not ticket_ids:
            return
        now = time.time()
        self._conn().executemany("UPDATE tickets SET updated=? WHERE id=? AND status=?",
                                 [(now, i, RUNNING) for i in ticket_ids])

    def backlog(self) -> int:
        """Tickets accepted and not finished (queued or running), from the status index."""
        row = self._conn().execute("SELECT COUNT(*) FROM tickets WHERE status IN (?, ?)", (QUEUED, RUNNING)).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) AS n FROM tickets GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}

    # ---- feedback --------------------------------------------------------------------------
    def add_feedback(self, ticket_id: str, verdict: str, candidate: int | None = None, comment: str | None = None,
                     principal: str | None = None) -> int:
        cur = self._conn().execute(
            "INSERT INTO feedback (ticket_id, verdict, candidate, comment, principal, created) VALUES (?,?,?,?,?,?)",
            (ticket_id, verdict, candidate, comment, principal, time.time()))
        return int(cur.lastrowid)

    def feedback(self, limit: int = 10000) -> list[dict]:
        """Feedback joined with the ticket text and the judged result (for training data)."""
        rows = self._conn().execute(
            "SELECT f.*, t.request, t.result FROM feedback f JOIN tickets t ON t.id = f.ticket_id "
            "ORDER BY f.id LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["request"] = json.loads(d["request"])
            d["result"] = json.loads(d["result"]) if d["result"] else None
            out.append(d)
        return out


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in ("request", "params", "result"):
        if d.get(k):
            d[k] = json.loads(d[k])
    return d
