"""The durable worker inside each ingress replica: it drains queued tickets and re-runs lost ones.

Every accepted ticket is a row in the TicketStore before any model runs. This worker
  - claims queued async tickets (and tickets put back for a retry) and runs them, at most
    `concurrency` at a time, oldest first;
  - marks the tickets this replica is running alive every `heartbeat_s` (synchronous ones too);
  - claims `running` tickets nobody marked alive for `stale_after_s`: their replica crashed or was
    restarted, so they run again (the cache makes a re-run of a finished computation cheap).
Claims are atomic in SQLite, so several ingress replicas can share one store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from deployments.ticket_store import TicketStore

log = logging.getLogger("flowrouter.worker")


class DurableWorker:
    def __init__(self, store: TicketStore, run_one: Callable[[dict], Awaitable[None]], *, concurrency: int,
                 poll_interval_s: float, heartbeat_s: float, stale_after_s: float):
        self.store, self.run_one = store, run_one
        self.concurrency, self.poll_interval_s = concurrency, poll_interval_s
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.live: set[str] = set()  # ticket ids this replica is running (heartbeat)
        self.active: dict[str, asyncio.Task] = {}  # ticket ids this worker claimed
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self.claimed = 0

    # ---- lifecycle ------------------------------------------------------------------------------
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def ensure_started(self) -> bool:
        """Start (or restart) the loops on the running event loop; False when there is none yet."""
        if self.running():
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception():
                log.error("worker loop died: %r; restarting", t.exception())
        self._wake = asyncio.Event()
        self._tasks = [loop.create_task(self._claim_loop()), loop.create_task(self._heartbeat_loop())]
        return True

    async def stop(self) -> None:
        for t in self._tasks + list(self.active.values()):
            t.cancel()
        await asyncio.gather(*self._tasks, *self.active.values(), return_exceptions=True)
        self._tasks = []

    def kick(self) -> None:
        """Look for work now (a ticket was just queued)."""
        if self._wake is not None:
            self._wake.set()

    # ---- liveness -----------------------------------------------------------------------------
    def track(self, ticket_id: str) -> None:
        self.live.add(ticket_id)

    def untrack(self, ticket_id: str) -> None:
        self.live.discard(ticket_id)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.to_thread(self.store.touch, sorted(self.live))
            except Exception as exc:  # a locked database must not kill the loop
                log.warning("heartbeat failed: %s", exc)

    # ---- draining -----------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        assert self._wake is not None
        while True:
            free = self.concurrency - len(self.active)
            rows: list[dict] = []
            if free > 0:
                try:
                    rows = await asyncio.to_thread(self.store.claim, free, self.stale_after_s)
                except Exception as exc:
                    log.warning("claiming tickets failed: %s", exc)
            for row in rows:
                if row["id"] in self.active or row["id"] in self.live:  # our heartbeat lagged: still ours
                    continue
                self.claimed += 1
                if row["attempts"] > 1:
                    log.info("re-running ticket %s (attempt %d)", row["id"], row["attempts"])
                self.active[row["id"]] = asyncio.get_running_loop().create_task(self._run(row))
            if rows and len(rows) == free:
                continue  # more may be waiting; the next claim returns [] when full anyway
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    async def _run(self, row: dict) -> None:
        tid = row["id"]
        self.track(tid)
        try:
            await self.run_one(row)
        except asyncio.CancelledError:
            raise
        except Exception:  # run_one records outcomes itself; this is a bug guard
            log.exception("ticket %s: unexpected error in the worker", tid)
        finally:
            self.untrack(tid)
            self.active.pop(tid, None)
            if self._wake is not None:
                self._wake.set()  # a worker slot is free

    def snapshot(self) -> dict:
        return {"running": len(self.active), "concurrency": self.concurrency, "claimed": self.claimed,
                "live": len(self.live)}
