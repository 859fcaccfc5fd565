"""Mixed severity: a flood of low-severity tickets with a small share of critical ones, all synchronous.

Two phases in one run, so both figures come from the same service in the same state:
  1. idle: FLOWROUTER_MIXED_IDLE_TICKETS (default 3) distinct low-severity tickets sent one at a time before
     any user starts, reported as `idle single ticket`: the latency of one ticket on an idle service;
  2. flood: the users send distinct P4/warning tickets as fast as they are answered or refused, and every
     k-th submission (FLOWROUTER_MIXED_CRITICAL_SHARE, default 0.07) is a P1/critical ticket instead,
     reported as `POST /v1/tickets (mixed critical)`. The flood lasts FLOWROUTER_MIXED_FLOOD_S (default 180)
     and then the run stops itself; Locust's -t is only a safety cap.
Sync tickets are the ones admission orders: a critical ticket waits ahead of the others and takes the place of
the newest low-severity waiter when the queue is full, so the SLO (load_tests/slo/mixed.yaml) judges critical
tickets on their own: latency against the idle figure, and none refused.

    locust -f load_tests/locustfile_mixed.py --headless -u 30 -r 10 -t 900s --host http://127.0.0.1:8000 --csv runs/mixed
(or `make load-mixed`, which also applies the SLO). Tickets still in flight when the flood ends are not counted.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import gevent
from gevent.event import Event
from locust import HttpUser, between, events, task
from locust.clients import HttpSession

from load_tests.data import diverse, load_rows, run_nonce, to_ticket
from load_tests.locust_common import API_KEY, CANDIDATES, ConsoleUser, account, use_key  # noqa: F401  (ConsoleUser runs too)

NONCE = os.environ.get("FLOWROUTER_LOAD_NONCE") or run_nonce()
IDLE_TICKETS = int(os.environ.get("FLOWROUTER_MIXED_IDLE_TICKETS", "3"))
FLOOD_S = float(os.environ.get("FLOWROUTER_MIXED_FLOOD_S", "180"))
CRITICAL_SHARE = float(os.environ.get("FLOWROUTER_MIXED_CRITICAL_SHARE", "0.07"))
LOW = {"severity": "low", "labels": ["priority=P4", "severity=warning"]}
CRITICAL = {"severity": "critical", "labels": ["priority=P1", "severity=critical"]}
IDLE, NAME_LOW, NAME_CRITICAL = "idle single ticket", "POST /v1/tickets (mixed low)", "POST /v1/tickets (mixed critical)"

_texts = [f"{t} ref {NONCE}" for t in diverse(load_rows(), k=600, seed=int(time.time()))]
_next = itertools.count()
_lock = threading.Lock()
FLOOD_OPEN = Event()


def critical_every(share: float) -> int:
    """Every k-th submission is critical: k = round(1 / share), at least 1 (0 turns critical tickets off)."""
    return max(1, round(1 / share)) if share > 0 else 0


def _take() -> tuple[int, str]:
    with _lock:
        i = next(_next)
    return i, _texts[i % len(_texts)]


def is_critical_turn(i: int, every: int) -> bool:
    """Submission i (counted from 0 over the idle phase too) is critical. The first flood ticket is low."""
    return every > 0 and i % every == every - 1


def _measure_idle(environment) -> None:
    session = HttpSession(base_url=environment.host, request_event=environment.events.request, user=None)
    if API_KEY:
        session.headers["Authorization"] = f"Bearer {API_KEY}"
    for _ in range(IDLE_TICKETS):
        _, text = _take()
        with session.post("/v1/tickets", params={"candidates": CANDIDATES}, json=to_ticket(text) | LOW, name=IDLE,
                          catch_response=True, timeout=600) as resp:
            account(resp, IDLE)


def _phases(environment) -> None:
    try:
        _measure_idle(environment)
    finally:
        FLOOD_OPEN.set()
    gevent.sleep(FLOOD_S)
    environment.runner.quit()


@events.test_start.add_listener
def _start_phases(environment, **kwargs):
    gevent.spawn(_phases, environment)


class MixedUser(HttpUser):
    weight = 30
    wait_time = between(1, 3)
    every = critical_every(CRITICAL_SHARE)

    def on_start(self):
        use_key(self)
        FLOOD_OPEN.wait()

    @task
    def ticket(self):
        i, text = _take()
        critical = is_critical_turn(i, self.every)
        name = NAME_CRITICAL if critical else NAME_LOW
        body = to_ticket(text) | (CRITICAL if critical else LOW)
        with self.client.post("/v1/tickets", params={"candidates": CANDIDATES}, json=body, name=name,
                              catch_response=True, timeout=600) as resp:
            if account(resp, name) and resp.status_code == 200 and "workflow" not in resp.json():
                resp.failure("200 without a workflow")
