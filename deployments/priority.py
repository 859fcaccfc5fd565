"""Critical tickets first inside a model replica, not only at admission.

A replica runs one model call at a time (the engine holds a lock around generate), and Serve's batch queues
are first in, first out. Without an order between calls, a critical ticket admitted ahead of every waiter
still reaches its Planner behind each batch of low-severity work queued there before it, and shares a batch
with them. So each model deployment has a second batched method for critical requests (its own queue, so
its batches hold critical requests only), and both methods enter the model through one `PriorityGate`: when
the model frees, a waiting critical batch goes next. A call already running is not interrupted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PriorityGate:
    """One holder at a time; critical waiters go before the others (among equals, whoever the OS wakes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._critical_waiting = 0

    @contextmanager
    def hold(self, critical: bool = False) -> Iterator[None]:
        with self._cond:
            if critical:
                self._critical_waiting += 1
            try:
                while self._busy or (not critical and self._critical_waiting):
                    self._cond.wait()
            finally:
                if critical:
                    self._critical_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    @property
    def critical_waiting(self) -> int:
        with self._cond:
            return self._critical_waiting
