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


class Overloaded(Exception):
    """A ticket refused before it was accepted: answer `status` with a Retry-After header."""

    def __init__(self, status: int, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, int(retry_after_s)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class AdmissionController:
    def __init__(self, max_inflight: int, max_waiting: int, max_wait_s: float, default_retry_after_s: float = 5,
                 window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.max_inflight, self.max_waiting, self.max_wait_s = max_inflight, max_waiting, max_wait_s
        self.default_retry_after_s = default_retry_after_s
        self.window_s, self.clock = window_s, clock
        self.inflight = 0
        self._queue: deque[tuple[asyncio.Future, bool]] = deque()  # (future, counts against max_waiting)
        self._done: deque[float] = deque()  # completion times within the window
        self._started = clock()
        self.rejected = {"queue_full": 0, "wait_timeout": 0}

    # ---- state --------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Bounded (synchronous) tickets waiting for a slot."""
        return sum(1 for f, bounded in self._queue if bounded and not f.done())

    @property
    def waiting_all(self) -> int:
        return sum(1 for f, _ in self._queue if not f.done())

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
    async def slot(self, bounded: bool = True) -> AsyncIterator[None]:
        """Hold one compute slot for the body; refuse with Overloaded when full (bounded callers)."""
        await self._acquire(bounded)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, bounded: bool) -> None:
        if self.inflight < self.max_inflight and self.waiting_all == 0:
            self.inflight += 1
            return
        if bounded and self.waiting >= self.max_waiting:
            self.rejected["queue_full"] += 1
            raise Overloaded(429, f"over capacity: {self.inflight} tickets computing and {self.waiting} waiting "
                                  f"(limits {self.max_inflight}/{self.max_waiting}); retry later",
                             self.retry_after())
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (fut, bounded)
        self._queue.append(entry)
        try:
            if bounded:
                await asyncio.wait_for(asyncio.shield(fut), self.max_wait_s)
            else:
                await fut
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed over just as we gave up: pass it on
            else:
                fut.cancel()
            self._remove(entry)
            if isinstance(exc, asyncio.TimeoutError):
                self.rejected["wait_timeout"] += 1
                raise Overloaded(503, f"no compute slot within {self.max_wait_s:.0f}s; retry later",
                                 self.retry_after()) from None
            raise
        # The releasing ticket handed its slot to us: `inflight` already counts it.

    def _remove(self, entry) -> None:
        try:
            self._queue.remove(entry)
        except ValueError:
            pass

    def _release(self) -> None:
        self._done.append(self.clock())
        while self._queue:
            fut, _ = self._queue.popleft()
            if not fut.done():
                fut.set_result(True)  # hand the slot over; inflight stays the same
                return
        self.inflight -= 1
