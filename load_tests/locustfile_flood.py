"""Diverse flood: distinct real tickets submitted asynchronously faster than the models can serve them.

Each user submits `POST /v1/tickets?mode=async` (202 + status URL, or a clean 429 with Retry-After) at
an open-loop pace and polls its outstanding tickets; a finished ticket is reported as the custom
request `TICKET async completion` whose response time is submit-to-done. Submissions stop after
FLOWROUTER_FLOOD_MAX_TICKETS (default 24) so a run leaves a bounded backlog behind.

    locust -f load_tests/locustfile_flood.py --headless -u 4 -r 4 -t 240s --host http://127.0.0.1:8000 --csv runs/flood
(or `make load-flood`, which also applies load_tests/slo/flood.yaml).
"""

from __future__ import annotations

import itertools
import os
import threading
import time

from locust import HttpUser, between, events, task

from load_tests.data import diverse, load_rows, run_nonce, to_ticket
from load_tests.locust_common import CANDIDATES, ConsoleUser, account, use_key  # noqa: F401  (ConsoleUser runs too)

NONCE = os.environ.get("FLOWROUTER_LOAD_NONCE") or run_nonce()
MAX_TICKETS = int(os.environ.get("FLOWROUTER_FLOOD_MAX_TICKETS", "24"))
TICKETS = [f"{t} ref {NONCE}" for t in diverse(load_rows(), k=max(MAX_TICKETS, 1), seed=int(time.time()))]
_next = itertools.count()
_lock = threading.Lock()
SUBMIT, POLL = "POST /v1/tickets?mode=async (flood)", "GET /v1/tickets/{id}"


def _take() -> str | None:
    with _lock:
        i = next(_next)
    return TICKETS[i] if i < MAX_TICKETS else None


class FloodUser(HttpUser):
    weight = 4
    wait_time = between(2, 4)

    def on_start(self):
        self.outstanding: dict[str, float] = {}  # ticket id -> submit time
        use_key(self)

    @task(1)
    def submit(self):
        text = _take()
        if text is None:
            return self.poll()
        t0 = time.time()
        with self.client.post("/v1/tickets", params={"mode": "async", "candidates": CANDIDATES},
                              json=to_ticket(text), name=SUBMIT, catch_response=True, timeout=60) as resp:
            if account(resp, SUBMIT):
                if resp.status_code != 202 or "status_url" not in resp.json():
                    resp.failure(f"expected 202 with status_url, got {resp.status_code}")
                else:
                    self.outstanding[resp.json()["ticket_id"]] = t0

    @task(2)
    def poll(self):
        if not self.outstanding:
            return
        tid, t0 = min(self.outstanding.items(), key=lambda kv: kv[1])
        with self.client.get(f"/v1/tickets/{tid}", name=POLL, catch_response=True, timeout=60) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            resp.success()
            status = resp.json()["status"]
        if status in ("done", "failed"):
            del self.outstanding[tid]
            events.request.fire(request_type="TICKET", name="async completion", response_time=(time.time() - t0) * 1000,
                                response_length=0, context={},
                                exception=None if status == "done" else RuntimeError(resp.json().get("error")))
