"""The flood gate: every ticket the ingress takes goes through here on its way to the models.

    request ──► cache hit? ──────────────────────────────► shared "cache"
          └──► identical ticket in flight? ── wait ───────► shared "coalesced"
          └──► lead a new flight ─► admission slot ─► compute (retried on replica crash) ─► cache

Accepting a ticket means recording it in the TicketStore; that happens only once the ticket is sure
to be worked on (it got a compute slot, joined an admitted flight, or hit the cache), so a refusal
(429/503 + Retry-After) leaves no trace and an accepted ticket always completes:
  - synchronous tickets: computed while the client waits; when the models fail with a replica crash
    even after inline retries, the ticket is put back in the store's queue and the client gets 202
    with its status URL; when the client disconnects, the ticket is put back in the queue too;
  - async tickets (`?mode=async`): recorded at once (202), then drained by the DurableWorker;
  - a replica (ingress) crash: its running tickets stop being marked alive and another (or the
    restarted) replica's worker runs them again.
Sharing (`use_cache=False` bypasses it: no read, no write, no joining) is explained in coalesce.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from core.config import FlowRouterConfig
from core.schemas import Ticket, TicketResult
from core.task_map import TaskMap
from deployments.adaptive import AdaptiveN, Load, NChoice
from deployments.admission import AdmissionController, Overloaded
from deployments.async_worker import DurableWorker
from deployments.coalesce import Flight, ResultCache, SingleFlight, cache_key, model_version
from deployments.metrics import FloodMetrics
from deployments.ticket_store import TicketStore

log = logging.getLogger("flowrouter.flood")

Compute = Callable[[Ticket, int, "str | None", TaskMap], Awaitable[TicketResult]]


class AlreadySubmitted(Exception):
    """The ticket id is already in the store (HTTP 409)."""


class Deferred(Exception):
    """An accepted synchronous ticket could not be finished now; it stays queued and will complete."""

    def __init__(self, ticket_id: str, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.ticket_id, self.reason, self.retry_after_s = ticket_id, reason, retry_after_s


def is_retryable(exc: BaseException) -> bool:
    """Failures of the serving machinery (a replica died or is restarting), not of the ticket."""
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    kinds = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError,
             sex.BackPressureError, sex.DeploymentUnavailableError, Overloaded)
    kinds += tuple(k for k in (getattr(sex, "ReplicaUnavailableError", None),) if k)
    if isinstance(exc, kinds):
        return True
    cause = getattr(exc, "cause", None)
    return isinstance(exc, rex.RayTaskError) and isinstance(cause, kinds)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"


class FloodGate:
    def __init__(self, cfg: FlowRouterConfig, store: TicketStore, compute: Compute,
                 current_map: Callable[[], Awaitable[TaskMap]], grounding: Callable[[], str] | None = None):
        """`grounding()`: a stamp of what answers are grounded in; it is part of every cache key."""
        f = self.cfg = cfg.flood
        self.store, self.compute, self.current_map = store, compute, current_map
        self.grounding = grounding or (lambda: "")
        self.default_n = cfg.planner.candidates
        self.model_version = model_version(cfg)
        self.cache = ResultCache(f.cache_max_entries, f.cache_ttl_s)
        self.flights = SingleFlight()
        self.admission = AdmissionController(f.max_inflight_tickets, f.max_waiting_tickets, f.max_wait_s,
                                             f.retry_after_s, window_s=f.stats_window_s,
                                             reserved_critical=f.critical_reserved_slots)
        self.metrics = FloodMetrics(f.stats_window_s)
        self.worker = DurableWorker(store, self._run_queued, concurrency=f.async_workers,
                                    poll_interval_s=f.poll_interval_s, heartbeat_s=f.heartbeat_s,
                                    stale_after_s=f.stale_after_s)
        self.on_finished: Callable[[dict], None] | None = None
        self.adaptive = AdaptiveN(f.adaptive_n)

    # ---- keys ----------------------------------------------------------------------------------
    def key(self, ticket: Ticket, n: int, expert: str | None, map_version: str, grounding: str) -> str:
        incident = ticket.alert.incident if ticket.alert is not None else None
        return cache_key(ticket.text(), map_version=map_version, model_version=self.model_version, n=n,
                         expert=expert, incident=incident, grounding=grounding)

    # ---- the shared core -----------------------------------------------------------------------
    async def _share_or_compute(self, ticket: Ticket, n: int, expert: str | None, task_map: TaskMap,
                                use_cache: bool, bounded: bool,
                                on_admitted: Callable[[], None]) -> TicketResult:
        t0 = time.perf_counter()
        choice = self.adaptive.choose(n, self.load())
        cached = use_cache and self.cfg.cache
        grounding = self.grounding() if cached else ""  # read once: a file and a SQLite row
        key = self.key(ticket, choice.n, expert, task_map.version, grounding) if cached else None
        if key is not None:
            hit = self._cached(ticket, n, choice, expert, task_map.version, grounding) or self.cache.get(key)
            if hit is not None:
                on_admitted()
                return self._with_n(self._shared(hit, ticket.id, "cache", t0), n, choice)
            flight = self.flights.get(key)
            if flight is not None:
                return self._with_n(await self._follow(flight, ticket, on_admitted, "coalesced", t0), n, choice)
        flight = self.flights.start(key, ticket.id or "", lambda fl: self._lead(fl, key, ticket, choice.n, expert,
                                                                                task_map, bounded))
        return self._with_n(await self._follow(flight, ticket, on_admitted, None, t0), n, choice)

    @staticmethod
    def _with_n(result: TicketResult, requested: int, choice: NChoice) -> TicketResult:
        """This ticket's N: what it asked for, what the (possibly shared) workflow was written with, and why."""
        used = result.n_used or choice.n
        reason = choice.reason if (used != requested or choice.reuse_any_n) else "requested"
        return result.model_copy(update={"n_requested": requested, "n_used": used, "n_reason": reason})

    def load(self) -> Load:
        """The work ahead of a new ticket on this replica (adaptive best-of-N)."""
        queued = self.store.counts().get("queued", 0) if self.adaptive.cfg.enabled else 0
        return Load(inflight=self.admission.inflight, waiting=self.admission.waiting_all, queued_async=queued,
                    slots=self.admission.max_inflight)

    def _cached(self, ticket: Ticket, n: int, choice: NChoice, expert: str | None, map_version: str,
                grounding: str) -> TicketResult | None:
        """Under the heaviest load, a finished workflow of the same incident written with any N."""
        if not choice.reuse_any_n:
            return None
        for other in sorted({n, self.default_n, *range(1, 17)} - {choice.n}, reverse=True):
            hit = self.cache.peek(self.key(ticket, other, expert, map_version, grounding))
            if hit is not None:
                return hit
        return None

    async def _follow(self, flight: Flight, ticket: Ticket, on_admitted, shared: str | None,
                      t0: float) -> TicketResult:
        flight.waiters += 1
        try:
            await flight.wait_admitted()
            on_admitted()
            result = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.admitted.is_set() and not flight.task.done():
                flight.task.cancel()  # everyone waiting for a slot went away: do not compute for nobody
        return result if shared is None else self._shared(result, ticket.id, shared, t0)

    async def _lead(self, flight: Flight, key: str | None, ticket: Ticket, n: int, expert: str | None,
                    task_map: TaskMap, bounded: bool) -> TicketResult:
        self._gauge()
        try:
            async with self.admission.slot(bounded=bounded, critical=ticket.is_critical()):
                flight.admitted.set()
                self._gauge()
                result = await self._compute_with_retry(ticket, n, expert, task_map)
                result = result.model_copy(update={"n_used": n})  # shared copies say what it was written with
        finally:
            self._gauge()
        if key is not None:
            self.cache.put(key, result)
        return result

    async def _compute_with_retry(self, ticket: Ticket, n: int, expert: str | None,
                                  task_map: TaskMap) -> TicketResult:
        attempt = 1
        while True:
            try:
                return await self.compute(ticket, n, expert, task_map)
            except Exception as exc:
                if not is_retryable(exc) or attempt >= self.cfg.max_attempts:
                    raise
                delay = min(8.0, 0.5 * 2 ** attempt)
                log.warning("ticket %s: %s; retrying in %.1fs (attempt %d/%d)", ticket.id, _reason(exc), delay,
                            attempt + 1, self.cfg.max_attempts)
                self.metrics.observe_retry(type(exc).__name__)
                await asyncio.sleep(delay)
                attempt += 1

    @staticmethod
    def _shared(result: TicketResult, ticket_id: str | None, kind: str, t0: float) -> TicketResult:
        timings = dict(result.timings_ms, total=round((time.perf_counter() - t0) * 1000, 1))
        return result.model_copy(update={"ticket_id": ticket_id, "shared": kind, "shared_from": result.ticket_id,
                                         "timings_ms": timings})

    def _gauge(self) -> None:
        self.metrics.set_queue(inflight=self.admission.inflight, waiting=self.admission.waiting_all)

    # ---- synchronous tickets ---------------------------------------------------------------------
    async def solve_sync(self, ticket: Ticket, n: int | None, expert: str | None, use_cache: bool = True,
                         bounded: bool = True, principal: str | None = None) -> TicketResult:
        """Answer now; raises Overloaded (refused, not recorded), AlreadySubmitted, Deferred, or the
        computation's own error (recorded as failed)."""
        self.worker.ensure_started()
        t0 = time.perf_counter()
        tid = ticket.id
        assert tid, "the ingress assigns ticket ids"
        n = n or self.default_n
        accepted = False

        def admitted() -> None:
            nonlocal accepted
            if not self.store.accept(tid, ticket.model_dump(), {"n": n, "expert": expert, "cache": use_cache},
                                     principal=principal):
                raise AlreadySubmitted(tid)
            self.store.start(tid)
            self.worker.track(tid)
            accepted = True

        try:
            result = await self._share_or_compute(ticket, n, expert, await self.current_map(), use_cache,
                                                  bounded, admitted)
        except Overloaded as exc:
            self.metrics.observe_reject(exc.status, exc.kind)
            raise
        except asyncio.CancelledError:
            if accepted:  # the client went away: the worker finishes the ticket (usually from the cache)
                self.store.fail(tid, "client disconnected; re-queued", retry=True)
                self.worker.kick()
            raise
        except AlreadySubmitted:
            raise
        except Exception as exc:
            if not accepted:
                raise
            self.metrics.observe_ticket((time.perf_counter() - t0) * 1000, ok=False)
            if is_retryable(exc):
                self.store.fail(tid, _reason(exc), retry=True)
                self.worker.kick()
                raise Deferred(tid, f"accepted, but the models are unavailable right now ({_reason(exc)}); "
                                    "it is queued and will complete", self.admission.retry_after()) from exc
            self.store.fail(tid, _reason(exc))
            raise
        finally:
            self.worker.untrack(tid)
        self.store.complete(tid, result.model_dump(mode="json"))
        self.metrics.observe_ticket((time.perf_counter() - t0) * 1000, ok=True, shared=result.shared,
                                    task=result.task, expert=result.expert, stages=result.timings_ms)
        return result

    # ---- async tickets ---------------------------------------------------------------------------
    def submit_async(self, ticket: Ticket, n: int | None, expert: str | None, use_cache: bool = True,
                     principal: str | None = None, webhook: dict | None = None) -> dict:
        """Record the ticket as queued (durable) and wake the worker; 429 past the backlog bound.
        `webhook` (where its result goes, deployments/webhooks.py) is recorded with the ticket, in the same
        write, so an accepted ticket's delivery cannot be lost. A critical ticket (`Ticket.is_critical`) is
        never shed for the backlog: under an alert storm the lower severities are refused first."""
        self.worker.ensure_started()
        critical = ticket.is_critical()
        backlog = self.store.backlog()
        if backlog >= self.cfg.max_async_backlog and not critical:
            rate = max(self.admission.throughput(), 1e-3)
            retry = int(min(300, max(1, (backlog - self.cfg.max_async_backlog + 1) / rate)))
            self.metrics.observe_reject(429, "backlog_full")
            raise Overloaded(429, f"async backlog full ({backlog} tickets queued or running, limit "
                                  f"{self.cfg.max_async_backlog}); retry later", retry)
        n = n or self.default_n
        params = {"n": n, "expert": expert, "cache": use_cache, **({"webhook": webhook} if webhook else {}),
                  **({"critical": True} if critical else {})}
        if not self.store.accept(ticket.id, ticket.model_dump(), params, mode="async", principal=principal):
            raise AlreadySubmitted(ticket.id)
        self.worker.kick()
        return {"ticket_id": ticket.id, "status": "queued", "status_url": f"/v1/tickets/{ticket.id}"}

    async def _run_queued(self, row: dict) -> None:
        """The worker's job for one claimed ticket: compute (or share) and record the outcome."""
        t0 = time.perf_counter()
        tid, params = row["id"], row.get("params") or {}
        try:
            ticket = Ticket.model_validate(row["request"])
            result = await self._share_or_compute(ticket, params.get("n") or self.default_n, params.get("expert"),
                                                  await self.current_map(), params.get("cache", True),
                                                  bounded=False, on_admitted=lambda: None)
        except Exception as exc:
            retry = is_retryable(exc) and row["attempts"] < self.cfg.max_attempts
            self.store.fail(tid, _reason(exc), retry=retry)
            if retry:
                self.metrics.observe_retry(type(exc).__name__)
                self.worker.kick()
            else:
                self.metrics.observe_ticket((time.perf_counter() - t0) * 1000, ok=False, mode="async")
                self._finished(row)
            return
        self.store.complete(tid, result.model_dump(mode="json"))
        self.metrics.observe_ticket((time.perf_counter() - t0) * 1000, ok=True, shared=result.shared,
                                    task=result.task, expert=result.expert, stages=result.timings_ms,
                                    mode="async")
        self._finished(row)

    def _finished(self, row: dict) -> None:
        """Tell `on_finished` (the webhook deliveries) that a queued ticket is done or failed for good."""
        if self.on_finished is not None:
            try:
                self.on_finished(row)
            except Exception:  # a delivery problem must not undo the recorded outcome
                log.exception("ticket %s: on_finished failed", row["id"])

    # ---- observability ---------------------------------------------------------------------------
    def stats(self) -> dict:
        snap = self.metrics.snapshot()
        counts = self.store.counts()
        snap["queue"] = {**self.admission.snapshot(), "flights": len(self.flights),
                         "async_queued": counts.get("queued", 0), "async_running": counts.get("running", 0),
                         "worker": self.worker.snapshot()}
        snap["cache"] = {**self.cache.stats(), "enabled": self.cfg.cache, "model_version": self.model_version}
        snap["store"] = counts
        self.metrics.set_queue(inflight=self.admission.inflight, waiting=self.admission.waiting_all,
                               async_queued=counts.get("queued", 0), async_running=counts.get("running", 0))
        return snap
