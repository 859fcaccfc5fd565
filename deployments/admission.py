"""Admission control: a bounded number of tickets computing, a bounded queue behind them, clean refusals.

On 2 cores a ticket costs seconds of model compute, so an ingress that accepted everything would
only build an invisible queue inside the model deployments and time out. Instead each ingress
replica lets `max_inflight` computations run (enough to fill the models' dynamic batches) and
`max_waiting` synchronous tickets wait for a slot in FIFO order. A ticket past that is refused at
once with 429 and a Retry-After estimated from recent throughput; a ticket that waited `max_wait_s`
without getting a slot is refused with 503 and Retry-After. Refused tickets were never recorded, so
"accepted" always means "will complete". Cache hits and tickets that join an identical computation
need no slot (deployments/flood.py). The async worker takes slots without the queue bound: its own
concurrency bounds it, and its tickets are already durable.

Severity first: a critical ticket (severity critical, priority P1) waits ahead of every other one, and
when the queue is full it takes the place of the newest non-critical waiter, which is refused (503,
"shed") instead; such a waiter was never recorded, so nothing accepted is lost. A critical ticket is
refused only when the queue is full of critical tickets. The last `reserved_critical` slots are for critical
tickets only, so a critical ticket finds a slot free instead of waiting for one to turn over; inside the model
replicas its calls then go ahead of lower-severity work too (deployments/priority.py), and while one computes,
the other tickets hold back before each model stage (`yield_to_critical`) for up to `critical_hold_s`, so they
do not compete with it for the cores.

Behind this limiter, Serve's own bounds still hold (ingress `max_ongoing_requests` /
`max_queued_requests`, answered by the proxy as 503 + Retry-After via `backpressure_config`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


class Overloaded(Exception):
    """A ticket refused before it was accepted: answer `status` with a Retry-After header."""

    def __init__(self, status: int, reason: str, retry_after_s: int, kind: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, int(retry_after_s)
        # What refused it, as counted in stats and metrics: queue_full, wait_timeout, shed, backlog_full.
        self.kind = kind or ("queue_full" if status == 429 else "wait_timeout")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


@dataclass(eq=False)
class Waiter:
    future: asyncio.Future
    bounded: bool  # counts against max_waiting
    critical: bool


class AdmissionController:
    def __init__(self, max_inflight: int, max_waiting: int, max_wait_s: float, default_retry_after_s: float = 5,
                 window_s: float = 60.0, clock: Callable[[], float] = time.monotonic, reserved_critical: int = 0):
        if not 0 <= reserved_critical < max_inflight:
            raise ValueError(f"reserved critical slots ({reserved_critical}) must be fewer than the slots "
                             f"({max_inflight})")
        self.max_inflight, self.max_waiting, self.max_wait_s = max_inflight, max_waiting, max_wait_s
        self.reserved_critical = reserved_critical
        self.critical_computing = 0
        self._no_critical: asyncio.Event | None = None  # made in the event loop on first use
        self.default_retry_after_s = default_retry_after_s
        self.window_s, self.clock = window_s, clock
        self.inflight = 0
        self._queue: deque[Waiter] = deque()
        self._done: deque[float] = deque()  # completion times within the window
        self._started = clock()
        self.rejected = {"queue_full": 0, "wait_timeout": 0, "shed": 0}

    # ---- state --------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Bounded (synchronous) tickets waiting for a slot."""
        return sum(1 for w in self._queue if w.bounded and not w.future.done())

    @property
    def waiting_all(self) -> int:
        return sum(1 for w in self._queue if not w.future.done())

    def has_room(self, k: int = 1) -> bool:
        """Whether `k` more synchronous tickets would be admitted or queued right now."""
        free = max(0, self.max_inflight - self.inflight - self.waiting_all)
        return k <= free + max(0, self.max_waiting - self.waiting)

    def throughput(self) -> float:
        """Completed computations per second over the recent window (0 when there are none)."""
        now = self.clock()
        while self._done and self._done[0] < now - self.window_s:
            self._done.popleft()
        if not self._done:
            return 0.0
        span = min(self.window_s, max(now - self._started, 1.0))
        return len(self._done) / span

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the work ahead divided by recent throughput."""
        rate = self.throughput()
        if rate <= 0:
            return int(math.ceil(self.default_retry_after_s))
        ahead = self.inflight + self.waiting_all + 1
        return int(min(300, max(1, math.ceil(ahead / rate))))

    def snapshot(self) -> dict:
        return {"inflight": self.inflight, "waiting": self.waiting_all, "max_inflight": self.max_inflight,
                "max_waiting": self.max_waiting, "throughput_per_s": round(self.throughput(), 3),
                "retry_after_s": self.retry_after(), "rejected": dict(self.rejected)}

    # ---- slots ------------------------------------------------------------------------------
    @asynccontextmanager
    async def slot(self, bounded: bool = True, critical: bool = False) -> AsyncIterator[None]:
        """Hold one compute slot for the body; refuse with Overloaded when full (bounded callers).
        A `critical` ticket waits ahead of the others and may shed a non-critical waiter."""
        await self._acquire(bounded, critical)
        if critical:
            self.critical_computing += 1
            self._critical_event().clear()
        try:
            yield
        finally:
            if critical:
                self.critical_computing -= 1
                if self.critical_computing == 0:
                    self._critical_event().set()
            self._release()

    def _critical_event(self) -> asyncio.Event:
        if self._no_critical is None:
            self._no_critical = asyncio.Event()
            self._no_critical.set()
        return self._no_critical

    async def yield_to_critical(self, max_hold_s: float) -> float:
        """While a critical ticket computes, wait (at most `max_hold_s`) until none does; the seconds waited."""
        if self.critical_computing == 0 or max_hold_s <= 0:
            return 0.0
        t0 = self.clock()
        try:
            await asyncio.wait_for(self._critical_event().wait(), max_hold_s)
        except asyncio.TimeoutError:
            pass
        return self.clock() - t0

    def _limit(self, critical: bool) -> int:
        """Slots a ticket of this severity may take: all for critical ones, the unreserved for the rest."""
        return self.max_inflight if critical else self.max_inflight - self.reserved_critical

    def _critical_waiting(self) -> bool:
        return any(w.critical and not w.future.done() for w in self._queue)

    async def _acquire(self, bounded: bool, critical: bool = False) -> None:
        ahead = self._critical_waiting() if critical else self.waiting_all > 0
        if self.inflight < self._limit(critical) and not ahead:
            self.inflight += 1
            return
        if bounded and self.waiting >= self.max_waiting and not (critical and self._shed_one()):
            self.rejected["queue_full"] += 1
            raise Overloaded(429, f"over capacity: {self.inflight} tickets computing and {self.waiting} waiting "
                                  f"(limits {self.max_inflight}/{self.max_waiting}); retry later",
                             self.retry_after())
        entry = Waiter(asyncio.get_running_loop().create_future(), bounded, critical)
        self._enqueue(entry)
        fut = entry.future
        try:
            if bounded:
                await asyncio.wait_for(asyncio.shield(fut), self.max_wait_s)
            else:
                await fut
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release()  # the slot was handed over just as we gave up: pass it on
            else:
                fut.cancel()
            self._remove(entry)
            if isinstance(exc, asyncio.TimeoutError):
                self.rejected["wait_timeout"] += 1
                raise Overloaded(503, f"no compute slot within {self.max_wait_s:.0f}s; retry later",
                                 self.retry_after()) from None
            raise
        except Overloaded:
            self._remove(entry)  # shed for a critical ticket
            raise
        # The releasing ticket handed its slot to us: `inflight` already counts it.

    def _enqueue(self, entry: Waiter) -> None:
        """Critical waiters go behind the other critical ones, ahead of everything else."""
        if entry.critical:
            for i, w in enumerate(self._queue):
                if not w.critical:
                    self._queue.insert(i, entry)
                    return
        self._queue.append(entry)

    def _shed_one(self) -> bool:
        """Refuse the newest non-critical bounded waiter to make room for a critical ticket."""
        for w in reversed(self._queue):
            if w.bounded and not w.critical and not w.future.done():
                w.future.set_exception(Overloaded(503, "shed to make room for a critical ticket; retry later",
                                                  self.retry_after(), kind="shed"))
                self.rejected["shed"] += 1
                return True
        return False

    def _remove(self, entry) -> None:
        try:
            self._queue.remove(entry)
        except ValueError:
            pass

    def _release(self) -> None:
        self._done.append(self.clock())
        while self._queue:
            head = self._queue[0]
            if head.future.done():
                self._queue.popleft()
                continue
            if self.inflight > self._limit(head.critical):
                break  # only reserved slots would be left: keep this one free for a critical ticket
            self._queue.popleft()
            head.future.set_result(True)  # hand the slot over; inflight stays the same
            return
        self.inflight -= 1
