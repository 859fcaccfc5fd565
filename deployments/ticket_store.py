"""Durable record of every accepted ticket, its result, and operator feedback (SQLite, WAL).

A ticket is written before any model runs, so an accepted ticket survives a replica crash or a
restart: anything still `queued` or `running` is found by `pending()` and retried. Feedback
(accept / reject of a returned workflow, or an edit carrying the corrected workflow, with the outcome of
running it) is kept beside the result it judges, with the API key id that sent it; training reads it.
Annotations (a JSON object per ticket) record what happened to a ticket beside its outcome, such as
its alert resolving (`resolve`); a queued ticket made pointless that way may end `cancelled`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from deployments.sqlite_wal import connect_wal

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
CANCELLED = "cancelled"  # never run: its alert resolved while it waited in the queue (`resolve`)

_FEEDBACK_TABLE = """
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL REFERENCES tickets(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('accept', 'reject', 'edit')),
    candidate INTEGER,
    comment TEXT,
    principal TEXT,
    created REAL NOT NULL,
    workflow TEXT,
    outcome TEXT
);
"""

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
    attempts INTEGER NOT NULL DEFAULT 0,
    principal TEXT,
    annotations TEXT
);
CREATE INDEX IF NOT EXISTS tickets_status ON tickets(status, updated);
""" + _FEEDBACK_TABLE.replace("CREATE TABLE feedback", "CREATE TABLE IF NOT EXISTS feedback") + """
CREATE INDEX IF NOT EXISTS feedback_ticket ON feedback(ticket_id);
"""


class TicketStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_SCHEMA)
            columns = {r["name"] for r in c.execute("PRAGMA table_info(tickets)")}
            if "principal" not in columns:  # a store written before tickets recorded their submitter
                try:
                    c.execute("ALTER TABLE tickets ADD COLUMN principal TEXT")
                except sqlite3.OperationalError:  # another replica added it first
                    pass
            if "annotations" not in columns:  # a store written before tickets were annotated (null: none)
                try:
                    c.execute("ALTER TABLE tickets ADD COLUMN annotations TEXT")
                except sqlite3.OperationalError:
                    pass
            _migrate_feedback(c)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect_wal(self.path)
        return conn

    # ---- tickets ---------------------------------------------------------------------------
    def accept(self, ticket_id: str, request: dict, params: dict, mode: str = "sync",
               principal: str | None = None) -> bool:
        """Record a ticket before work starts; False if the id is already known. `principal`: the API key
        id that submitted it."""
        now = time.time()
        try:
            self._conn().execute(
                "INSERT INTO tickets (id, received, updated, status, mode, request, params, principal) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (ticket_id, now, now, QUEUED, mode, json.dumps(request), json.dumps(params), principal))
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
        """Atomically take up to `limit` tickets to run (status -> running, attempts + 1), critical ones
        first (params `critical`), then oldest first:
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
                "OR (status=? AND updated < ?) "
                "ORDER BY coalesce(json_extract(params, '$.critical'), 0) DESC, received LIMIT ?",
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

    def resolve(self, ticket_id: str, resolved_at: float, cancel_queued: bool = False,
                reason: str = "") -> dict | None:
        """Record that the alert behind a ticket resolved: annotation `resolved` = {at, recorded} (the first
        report wins; Alertmanager repeats itself). With `cancel_queued`, a ticket still waiting in the queue
        is cancelled instead of computed (status `cancelled`, `reason` as its error); a running or finished
        ticket keeps its status and result. Returns the ticket, or None when the id is unknown."""
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # atomic with `claim`: a ticket is either taken to run or cancelled
        try:
            row = conn.execute("SELECT status, mode, attempts, annotations FROM tickets WHERE id=?",
                               (ticket_id,)).fetchone()
            if row is not None:
                notes = json.loads(row["annotations"]) if row["annotations"] else {}
                notes.setdefault("resolved", {"at": resolved_at, "recorded": now})
                waiting = row["status"] == QUEUED and (row["mode"] == "async" or row["attempts"] > 0)
                if cancel_queued and waiting:
                    conn.execute("UPDATE tickets SET status=?, updated=?, error=?, annotations=? WHERE id=?",
                                 (CANCELLED, now, reason[:2000], json.dumps(notes), ticket_id))
                else:
                    conn.execute("UPDATE tickets SET annotations=? WHERE id=?", (json.dumps(notes), ticket_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return None if row is None else self.get(ticket_id)

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) AS n FROM tickets GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}

    # ---- feedback --------------------------------------------------------------------------
    def add_feedback(self, ticket_id: str, verdict: str, candidate: int | None = None, comment: str | None = None,
                     principal: str | None = None, workflow: dict | None = None, outcome: dict | None = None) -> int:
        """`workflow`: an edit's corrected workflow ({"steps": [...]}); `outcome`: {"status", "step"}."""
        cur = self._conn().execute(
            "INSERT INTO feedback (ticket_id, verdict, candidate, comment, principal, created, workflow, outcome) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (ticket_id, verdict, candidate, comment, principal, time.time(),
             json.dumps(workflow) if workflow is not None else None, json.dumps(outcome) if outcome is not None else None))
        return int(cur.lastrowid)

    def feedback(self, limit: int = 10000, ticket_id: str | None = None) -> list[dict]:
        """Feedback joined with the ticket text and the judged result (for training data), oldest first."""
        where, args = ("WHERE f.ticket_id = ? ", (ticket_id, limit)) if ticket_id is not None else ("", (limit,))
        rows = self._conn().execute(
            "SELECT f.*, t.request, t.result FROM feedback f JOIN tickets t ON t.id = f.ticket_id "
            f"{where}ORDER BY f.id LIMIT ?", args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("request", "result", "workflow", "outcome"):
                d[k] = json.loads(d[k]) if d.get(k) else None
            out.append(d)
        return out


def _migrate_feedback(c: sqlite3.Connection) -> None:
    """Bring a feedback table written before edits existed up to date: SQLite cannot alter a CHECK
    constraint, so the table is rebuilt with the rows it holds (once, in one transaction)."""
    row = c.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='feedback'").fetchone()
    if row is None or "'edit'" in row["sql"]:
        return
    c.execute("BEGIN IMMEDIATE")
    try:
        row = c.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='feedback'").fetchone()
        if "'edit'" not in row["sql"]:  # another replica may have migrated it while this one waited
            c.execute("ALTER TABLE feedback RENAME TO feedback_before_edits")
            c.execute(_FEEDBACK_TABLE)
            c.execute("INSERT INTO feedback (id, ticket_id, verdict, candidate, comment, principal, created) "
                      "SELECT id, ticket_id, verdict, candidate, comment, principal, created FROM feedback_before_edits")
            c.execute("DROP TABLE feedback_before_edits")
            c.execute("CREATE INDEX IF NOT EXISTS feedback_ticket ON feedback(ticket_id)")
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in ("request", "params", "result", "annotations"):
        if d.get(k):
            d[k] = json.loads(d[k])
    return d
