"""Results out: the finished workflow of an async ticket is POSTed to a webhook, signed, retried, durable.

    submit (?mode=async) ── the receiver (key's webhook_url, else webhooks.url) is recorded in the
                            ticket's params, in the same write that accepts the ticket
    ticket done/failed ──── a delivery row (webhook_deliveries, in the ticket store's SQLite) ──► POST
                                  ▲                                                             │
                                  └──── network error, timeout, 408/425/429/5xx: retry later ◄──┘
                                        (exponential backoff with jitter, Retry-After honoured)

  - Signing: `X-FlowRouter-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>` with
    `X-FlowRouter-Timestamp` (Unix seconds). The timestamp is inside the signed material, so a receiver
    that refuses old timestamps (`verify`, default 5 minutes) cannot be fed a replayed request.
    `X-FlowRouter-Delivery` stays the same on every retry of one delivery: receivers drop duplicates.
    The secret comes from the key (webhook_secret) or $FLOWROUTER_WEBHOOK_SECRET / webhooks.secret_file;
    it is read when a POST is made and never logged or stored with the delivery.
  - Durability: a delivery is a row before the first POST, claimed with a lease, so one that is pending
    or being sent when the service stops is sent after it restarts (or by another ingress replica). A
    ticket that finished while its replica died before the row was written is found by `recover()`,
    which looks for finished async tickets that asked for a webhook and have no delivery.
  - Visibility: GET /v1/stats carries `webhooks` (delivered, retrying, pending, failed, retries and the
    last error), counted in the shared store.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx

from core.config import WebhooksConfig
from deployments.auth.guard import current_guard
from deployments.auth.keys import KeyEntry, redact_url
from deployments.sqlite_wal import connect_wal
from deployments.ticket_store import DONE, FAILED, TicketStore

log = logging.getLogger("flowrouter.webhooks")

SIGNATURE_HEADER = "X-FlowRouter-Signature"
TIMESTAMP_HEADER = "X-FlowRouter-Timestamp"
DELIVERY_HEADER = "X-FlowRouter-Delivery"
EVENT_HEADER = "X-FlowRouter-Event"
USER_AGENT = "FlowRouter-Webhook/1"

PENDING, SENDING, RETRYING, DELIVERED, FAILED_DELIVERY = "pending", "sending", "retrying", "delivered", "failed"
RECOVER_EVERY_S = 60.0
RECOVER_WINDOW_S = 7 * 86400.0  # how far back the first recover() looks for finished tickets without a delivery
RECOVER_OVERLAP_S = 120.0  # later scans start this long before the previous one (commits in flight then)
RECOVER_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    ticket_id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    source TEXT NOT NULL,
    principal TEXT,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    error_at REAL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries(status, next_at);
CREATE INDEX IF NOT EXISTS webhook_errors ON webhook_deliveries(error_at);
"""


# ---- signing ---------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over `<timestamp>.<raw body>`."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, body: bytes, timestamp: str | None, signature: str | None, *, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """What a receiver checks: the signature matches the raw body and the timestamp is recent."""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature.strip())


def signed_headers(secret: str | None, body: bytes, delivery_id: str, event: str, now: float | None = None) -> dict:
    ts = int(time.time() if now is None else now)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, TIMESTAMP_HEADER: str(ts),
               DELIVERY_HEADER: delivery_id, EVENT_HEADER: event}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, ts, body)
    return headers


# ---- payloads --------------------------------------------------------------------------------------
def console_link(base_url: str, ticket_id: str) -> str:
    return f"{base_url.rstrip('/')}/tickets/{quote(ticket_id, safe='')}"


def workflow_lines(workflow: dict | None, max_steps: int = 20, max_chars: int = 200) -> list[str]:
    """The workflow as a short numbered list; a decision names the step each answer goes to."""
    steps = list((workflow or {}).get("steps") or [])
    edges = list((workflow or {}).get("edges") or [])
    number = {s.get("id"): i + 1 for i, s in enumerate(steps)}
    lines = []
    for i, s in enumerate(steps[:max_steps]):
        text = " ".join(str(s.get("text", "")).split())
        if len(text) > max_chars:
            text = text[: max_chars - 1] + "…"
        if s.get("kind") == "decision":
            branches = [f"{e.get('label') or '→'} → {number.get(e.get('target'), '?')}"
                        for e in edges if e.get("source") == s.get("id")]
            if branches:
                text += " (" + ", ".join(branches) + ")"
        elif s.get("kind") == "terminal":
            text = f"{text} (end)"
        lines.append(f"{i + 1}. {text}")
    if len(steps) > max_steps:
        lines.append(f"… {len(steps) - max_steps} more steps in the console")
    return lines


def slack_escape(text: str) -> str:
    """Slack mrkdwn control characters: &, < and > are the only ones that must be escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _event(ticket: dict) -> str:
    return "ticket.done" if ticket.get("status") == DONE else "ticket.failed"


def json_payload(ticket: dict, delivery_id: str, console_url: str) -> dict:
    """Everything a program needs: the ticket as submitted, its outcome, and the full result."""
    result = ticket.get("result") or None
    return {"event": _event(ticket), "delivery_id": delivery_id, "ticket_id": ticket["id"],
            "status": ticket["status"], "submitted_by": ticket.get("principal"), "received": ticket.get("received"),
            "finished": ticket.get("updated"), "attempts": ticket.get("attempts"), "console_url": console_url,
            "ticket": ticket.get("request"), "error": ticket.get("error"),
            "expert": (result or {}).get("expert"), "task": (result or {}).get("task"),
            "workflow": (result or {}).get("workflow"), "result": result}


def slack_payload(ticket: dict, console_url: str) -> dict:
    """A Slack-compatible incoming-webhook message: title, expert, the numbered workflow, a console link."""
    request = ticket.get("request") or {}
    title = slack_escape(request.get("title") or ticket["id"])
    link = f"<{console_url}|Open ticket {slack_escape(ticket['id'])} in the FlowRouter console>"
    if ticket.get("status") != DONE:
        error = slack_escape(ticket.get("error") or "unknown error")
        return {"text": f"*FlowRouter: {title}*\nThe ticket failed: {error}\n{link}"}
    result = ticket.get("result") or {}
    head = f"*FlowRouter: {title}*\nExpert `{slack_escape(result.get('expert', '?'))}`" \
           f" · task `{slack_escape(result.get('task', '?'))}`"
    steps = "\n".join(slack_escape(line) for line in workflow_lines(result.get("workflow")))
    return {"text": f"{head}\n{steps}\n{link}"}


def render(fmt: str, ticket: dict, delivery_id: str, console_url: str) -> bytes:
    body = slack_payload(ticket, console_url) if fmt == "slack" else json_payload(ticket, delivery_id, console_url)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---- retry policy ----------------------------------------------------------------------------------
def retryable_status(code: int) -> bool:
    """The receiver is overloaded or broken for now (not: it refuses this request)."""
    return code in (408, 425, 429) or code >= 500


def backoff_s(attempt: int, base: float, cap: float, jitter: float, rand: Callable[[], float] = random.random) -> float:
    """Wait after failed attempt `attempt` (1-based): base * 2^(attempt-1), capped, shortened by up to
    `jitter` of itself at random."""
    delay = min(cap, base * 2 ** max(0, attempt - 1))
    return delay * (1 - jitter * rand())


def retry_after_s(value: str | None, cap: float) -> float | None:
    """A receiver's Retry-After in seconds (delta-seconds form only), capped."""
    if not value:
        return None
    try:
        return max(0.0, min(cap, float(value.strip())))
    except ValueError:
        return None


# ---- the durable delivery table ----------------------------------------------------------------------
class DeliveryStore:
    """Delivery rows beside the tickets (same SQLite file, so `missing` can join them)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect_wal(self.path)
        return conn

    def add(self, ticket_id: str, url: str, fmt: str, source: str, principal: str | None, event: str,
            now: float | None = None) -> bool:
        """A delivery for a finished ticket, due now; False when the ticket already has one."""
        now = time.time() if now is None else now
        cur = self._conn().execute(
            "INSERT OR IGNORE INTO webhook_deliveries (id, ticket_id, url, format, source, principal, event, status, "
            "next_at, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (uuid.uuid4().hex, ticket_id, url, fmt, source, principal, event, PENDING, now, now, now))
        return cur.rowcount == 1

    def claim(self, limit: int, lease_s: float, now: float | None = None) -> list[dict]:
        """Atomically take up to `limit` due deliveries (status -> sending, attempts + 1): new ones, retries
        whose time has come, and sends whose lease ran out (their replica stopped mid-POST)."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT * FROM webhook_deliveries WHERE (status IN (?, ?) AND next_at <= ?) "
                "OR (status = ? AND lease_until < ?) ORDER BY next_at LIMIT ?",
                (PENDING, RETRYING, now, SENDING, now, limit)).fetchall()
            conn.executemany("UPDATE webhook_deliveries SET status=?, attempts=attempts+1, lease_until=?, updated=? "
                             "WHERE id=?", [(SENDING, now + lease_s, now, r["id"]) for r in rows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [dict(r, status=SENDING, attempts=r["attempts"] + 1, lease_until=now + lease_s) for r in rows]

    def delivered(self, delivery_id: str, status_code: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._conn().execute("UPDATE webhook_deliveries SET status=?, last_status=?, lease_until=NULL, updated=?, "
                             "delivered_at=? WHERE id=?", (DELIVERED, status_code, now, now, delivery_id))

    def retry(self, delivery_id: str, error: str, status_code: int | None, next_at: float,
              now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._conn().execute("UPDATE webhook_deliveries SET status=?, next_at=?, last_status=?, last_error=?, "
                             "error_at=?, lease_until=NULL, updated=? WHERE id=?",
                             (RETRYING, next_at, status_code, error[:1000], now, now, delivery_id))

    def failed(self, delivery_id: str, error: str, status_code: int | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._conn().execute("UPDATE webhook_deliveries SET status=?, last_status=?, last_error=?, error_at=?, "
                             "lease_until=NULL, updated=? WHERE id=?",
                             (FAILED_DELIVERY, status_code, error[:1000], now, now, delivery_id))

    def get(self, ticket_id: str) -> dict | None:
        row = self._conn().execute("SELECT * FROM webhook_deliveries WHERE ticket_id=?", (ticket_id,)).fetchone()
        return dict(row) if row else None

    def next_due(self) -> float | None:
        row = self._conn().execute("SELECT MIN(next_at) FROM webhook_deliveries WHERE status IN (?, ?)",
                                   (PENDING, RETRYING)).fetchone()
        return row[0]

    def missing(self, since: float, statuses: tuple[str, ...] = (DONE, FAILED), limit: int = 500) -> list[dict]:
        """Finished async tickets (since `since`) that asked for a webhook and have no delivery row."""
        marks = ",".join("?" * len(statuses))
        rows = self._conn().execute(
            "SELECT t.id, t.status, t.params, t.principal FROM tickets t "
            "LEFT JOIN webhook_deliveries d ON d.ticket_id = t.id "
            f"WHERE t.status IN ({marks}) AND t.updated >= ? AND t.mode = 'async' AND d.id IS NULL "
            "AND t.params LIKE '%\"webhook\"%' ORDER BY t.updated LIMIT ?",
            (*statuses, since, limit)).fetchall()
        out = []
        for r in rows:
            try:
                params = json.loads(r["params"])
            except ValueError:
                continue
            if isinstance(params.get("webhook"), dict):
                out.append({"id": r["id"], "status": r["status"], "params": params, "principal": r["principal"]})
        return out

    def summary(self) -> dict:
        conn = self._conn()
        counts = dict(conn.execute("SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status").fetchall())
        attempts, retries = conn.execute("SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(MAX(attempts - 1, 0)), 0) "
                                         "FROM webhook_deliveries").fetchone()
        last = conn.execute("SELECT ticket_id, url, status, attempts, last_status, last_error, error_at "
                            "FROM webhook_deliveries WHERE error_at IS NOT NULL ORDER BY error_at DESC LIMIT 1").fetchone()
        return {"delivered": counts.get(DELIVERED, 0), "retrying": counts.get(RETRYING, 0),
                "pending": counts.get(PENDING, 0) + counts.get(SENDING, 0), "failed": counts.get(FAILED_DELIVERY, 0),
                "attempts": int(attempts), "retries": int(retries),
                "last_error": None if last is None else {
                    "ticket_id": last["ticket_id"], "receiver": redact_url(last["url"]), "error": last["last_error"],
                    "http_status": last["last_status"], "at": last["error_at"], "attempts": last["attempts"],
                    "delivery_status": last["status"]}}


# ---- the manager in each ingress replica -----------------------------------------------------------------
def current_key_entry(principal: str | None) -> KeyEntry | None:
    """The key entry of the caller `principal` in this process's key ring (None in open mode or unknown)."""
    if not principal:
        return None
    guard = current_guard()
    if guard is None:
        return None
    guard.keyring.maybe_reload()
    return next((e for e in guard.keyring.entries() if e.id == principal), None)


class WebhookManager:
    """Records deliveries when async tickets finish and sends them from a loop on the replica's event loop."""

    def __init__(self, cfg: WebhooksConfig, store: TicketStore, console_base_url: str, *,
                 key_lookup: Callable[[str | None], KeyEntry | None] = current_key_entry, environ: dict | None = None,
                 transport=None, clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random):
        self.cfg, self.store, self.console_base_url = cfg, store, console_base_url
        self.deliveries = DeliveryStore(store.path)
        self.key_lookup, self.environ = key_lookup, os.environ if environ is None else environ
        self.transport, self.clock, self.rand = transport, clock, rand
        self.active: dict[str, asyncio.Task] = {}
        self.sent = {"ok": 0, "retried": 0, "failed": 0}  # POSTs this replica made, by outcome
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._client = None
        self._recovered_at = 0.0
        self._scanned_from: float | None = None
        # httpx logs every request's full URL at INFO; a Slack-style receiver URL is itself a secret.
        httpx_log = logging.getLogger("httpx")
        httpx_log.setLevel(max(httpx_log.getEffectiveLevel(), logging.WARNING))

    # ---- at submission: where the result goes -------------------------------------------------------
    def target_for(self, principal: str | None) -> dict | None:
        """{"url", "format", "source"} for an async ticket from `principal`, or None (no webhook)."""
        if not self.cfg.enabled:
            return None
        entry = self.key_lookup(principal) if principal else None
        if entry is not None and entry.webhook_url:
            return {"url": entry.webhook_url, "format": entry.webhook_format or self.cfg.format, "source": "key"}
        if self.cfg.url:
            return {"url": self.cfg.url, "format": self.cfg.format, "source": "config"}
        return None

    # ---- when a ticket finishes ------------------------------------------------------------------------
    def ticket_finished(self, row: dict) -> bool:
        """FloodGate.on_finished: record the delivery (durable) and wake the sender."""
        target = (row.get("params") or {}).get("webhook")
        if not self.cfg.enabled or not isinstance(target, dict):
            return False
        ticket = self.store.get(row["id"])
        if ticket is None or ticket["status"] not in (DONE, FAILED):
            return False
        added = self._add(ticket["id"], ticket["status"], target, ticket.get("principal"))
        self.ensure_started()
        self.kick()
        return added

    def _add(self, ticket_id: str, status: str, target: dict, principal: str | None) -> bool:
        if status == FAILED and not self.cfg.include_failed:
            return False
        event = "ticket.done" if status == DONE else "ticket.failed"
        return self.deliveries.add(ticket_id, target["url"], target.get("format") or self.cfg.format,
                                   target.get("source") or "config", principal, event, now=self.clock())

    def recover(self) -> int:
        """Deliveries for finished tickets whose replica stopped before recording one. The first scan looks
        back RECOVER_WINDOW_S, later ones only since shortly before the previous scan."""
        started = self.clock()
        since = started - RECOVER_WINDOW_S if self._scanned_from is None else self._scanned_from
        statuses = (DONE, FAILED) if self.cfg.include_failed else (DONE,)
        batch = self.deliveries.missing(since, statuses, limit=RECOVER_BATCH)
        found = sum(self._add(t["id"], t["status"], t["params"]["webhook"], t["principal"]) for t in batch)
        if len(batch) < RECOVER_BATCH:  # else the next scan goes on from the same point
            self._scanned_from = started - RECOVER_OVERLAP_S
        if found:
            log.info("webhooks: recovered %d deliveries of tickets finished without one", found)
        return found

    # ---- the secret --------------------------------------------------------------------------------------
    def secret_for(self, delivery: dict) -> str | None:
        """Read when a POST is made, so rotating a secret needs no restart; never stored with the delivery."""
        if delivery.get("source") == "key":
            entry = self.key_lookup(delivery.get("principal"))
            if entry is not None and entry.webhook_secret:
                return entry.webhook_secret
        value = self.environ.get(self.cfg.secret_env, "").strip()
        if value:
            return value
        if self.cfg.secret_file:
            try:
                return Path(self.cfg.secret_file).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                log.error("webhooks: cannot read webhooks.secret_file: %s", type(exc).__name__)
        return None

    # ---- sending ------------------------------------------------------------------------------------------
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ensure_started(self) -> bool:
        """Start (or restart) the sender on the running event loop; False when there is none yet."""
        if not self.cfg.enabled:
            return False
        if self.running():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._task is not None and not self._task.cancelled() and self._task.exception():
            log.error("webhooks: sender loop died: %r; restarting", self._task.exception())
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._loop())
        return True

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self.active.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self):
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s, follow_redirects=False,
                                             transport=self.transport)
        return self._client

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                if self.clock() - self._recovered_at >= RECOVER_EVERY_S:
                    self._recovered_at = self.clock()
                    await asyncio.to_thread(self.recover)
                free = self.cfg.concurrency - len(self.active)
                rows = await asyncio.to_thread(self.deliveries.claim, free, self.cfg.timeout_s + 30, self.clock())
            except Exception as exc:  # a locked database must not stop deliveries for good
                log.warning("webhooks: claiming deliveries failed: %s", exc)
                rows = []
            for row in rows:
                if row["id"] not in self.active:
                    self.active[row["id"]] = asyncio.get_running_loop().create_task(self._run(row))
            if rows and len(rows) == free:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    async def _run(self, row: dict) -> None:
        try:
            await self.deliver(row)
        except asyncio.CancelledError:
            raise
        except Exception:  # deliver records outcomes itself; this is a bug guard (the lease retries it)
            log.exception("webhooks: ticket %s: unexpected error", row["ticket_id"])
        finally:
            self.active.pop(row["id"], None)
            if self._wake is not None:
                self._wake.set()

    async def deliver(self, row: dict) -> str:
        """One POST of a claimed delivery; records and returns its new status."""
        did, tid, receiver = row["id"], row["ticket_id"], redact_url(row["url"])
        ticket = await asyncio.to_thread(self.store.get, tid)
        if ticket is None:
            return self._give_up(row, "the ticket is no longer in the store", None)
        secret = self.secret_for(row)
        if secret is None and row["format"] != "slack":
            return self._give_up(row, f"no signing secret (the key's webhook_secret, ${self.cfg.secret_env} or "
                                      "webhooks.secret_file)", None)
        body = render(row["format"], ticket, did, console_link(self.console_base_url, tid))
        headers = signed_headers(secret, body, did, row["event"], now=self.clock())
        try:
            resp = await self._http().post(row["url"], content=body, headers=headers)
        except httpx.HTTPError as exc:
            return self._retry(row, f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__, None, None)
        if 200 <= resp.status_code < 300:
            await asyncio.to_thread(self.deliveries.delivered, did, resp.status_code, self.clock())
            self.sent["ok"] += 1
            log.info("webhooks: ticket %s delivered to %s (attempt %d, HTTP %d)", tid, receiver, row["attempts"],
                     resp.status_code)
            return DELIVERED
        error = f"HTTP {resp.status_code} from {receiver}"
        if retryable_status(resp.status_code):
            wait = retry_after_s(resp.headers.get("retry-after"), self.cfg.max_backoff_s)
            return self._retry(row, error, resp.status_code, wait)
        return self._give_up(row, error, resp.status_code)

    def _retry(self, row: dict, error: str, status_code: int | None, wait: float | None) -> str:
        if row["attempts"] >= self.cfg.max_attempts:
            return self._give_up(row, f"{error} (after {row['attempts']} attempts)", status_code)
        if wait is None:
            wait = backoff_s(row["attempts"], self.cfg.backoff_s, self.cfg.max_backoff_s, self.cfg.jitter, self.rand)
        now = self.clock()
        self.deliveries.retry(row["id"], error, status_code, now + wait, now)
        self.sent["retried"] += 1
        log.warning("webhooks: ticket %s to %s: %s; retry %d in %.1fs", row["ticket_id"], redact_url(row["url"]),
                    error, row["attempts"] + 1, wait)
        return RETRYING

    def _give_up(self, row: dict, error: str, status_code: int | None) -> str:
        self.deliveries.failed(row["id"], error, status_code, self.clock())
        self.sent["failed"] += 1
        log.error("webhooks: ticket %s to %s failed for good: %s", row["ticket_id"], redact_url(row["url"]), error)
        return FAILED_DELIVERY

    # ---- observability ----------------------------------------------------------------------------------
    def stats(self) -> dict:
        """For GET /v1/stats: the shared store's counts, plus what this replica sent."""
        try:
            summary = self.deliveries.summary()
        except sqlite3.Error as exc:
            summary = {"error": f"{type(exc).__name__}: {exc}"}
        return {"enabled": self.cfg.enabled, **summary, "replica": {**self.sent, "sending": len(self.active),
                                                                      "running": self.running()}}
