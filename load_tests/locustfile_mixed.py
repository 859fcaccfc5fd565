"""Mixed severity: a flood of low-severity tickets with a small share of critical ones, all synchronous.

Two phases in one run, so both figures come from the same service in the same state:
  1. idle: FLOWROUTER_MIXED_IDLE_TICKETS (default 3) distinct low-severity tickets sent one at a time before
     any user starts, reported as `idle single ticket`: the latency of one ticket on an idle service;
  2. flood: the users send distinct P4/warning tickets as fast as they are answered or refused (a flood ignores
     Retry-After), while a pager sends a P1/critical ticket every FLOWROUTER_MIXED_CRITICAL_EVERY_S (default 30)
     seconds, each on its own whether or not the previous one was answered, reported as
     `POST /v1/tickets (mixed critical)`. The flood lasts FLOWROUTER_MIXED_FLOOD_S (default 180); then the
     critical tickets still in flight are waited for (they are what is judged), and the run stops itself;
     Locust's -t is only a safety cap.
Critical tickets come at a rate of their own, not as a share of submissions: refused low tickets come back
within seconds, so a share of submissions would grow with the refusals, and critical tickets alone would
outrun what 2 cores compute (the first measured run: 16 critical tickets in 180 s against 11 answers in all).
Sync tickets are the ones admission orders: a critical ticket takes a reserved slot or waits ahead of the
others, and its model calls go first in the replicas, so the SLO (load_tests/slo/mixed.yaml) judges critical
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
CRITICAL_EVERY_S = float(os.environ.get("FLOWROUTER_MIXED_CRITICAL_EVERY_S", "30"))
CRITICAL_DRAIN_S = 600  # longest wait for the critical tickets in flight when the flood ends
LOW = {"severity": "low", "labels": ["priority=P4", "severity=warning"]}
CRITICAL = {"severity": "critical", "labels": ["priority=P1", "severity=critical"]}
IDLE, NAME_LOW, NAME_CRITICAL = "idle single ticket", "POST /v1/tickets (mixed low)", "POST /v1/tickets (mixed critical)"

_texts = [f"{t} ref {NONCE}" for t in diverse(load_rows(), k=600, seed=int(time.time()))]
_next = itertools.count()
_lock = threading.Lock()
FLOOD_OPEN = Event()


def _take() -> str:
    with _lock:
        i = next(_next)
    return _texts[i % len(_texts)]


def critical_times(flood_s: float, every_s: float) -> list[float]:
    """When the pager sends, in seconds from the flood's start: half a period in, then every period."""
    if every_s <= 0:
        return []
    out, t = [], every_s / 2
    while t < flood_s:
        out.append(round(t, 3))
        t += every_s
    return out


def _session(environment) -> HttpSession:
    session = HttpSession(base_url=environment.host, request_event=environment.events.request, user=None)
    if API_KEY:
        session.headers["Authorization"] = f"Bearer {API_KEY}"
    return session


def _send(session: HttpSession, severity: dict, name: str) -> None:
    with session.post("/v1/tickets", params={"candidates": CANDIDATES}, json=to_ticket(_take()) | severity,
                      name=name, catch_response=True, timeout=600) as resp:
        if account(resp, name) and resp.status_code == 200 and "workflow" not in resp.json():
            resp.failure("200 without a workflow")


def _pager(environment) -> list:
    """Critical tickets at their own times during the flood, each in its own greenlet."""
    start, sent = time.monotonic(), []
    for at in critical_times(FLOOD_S, CRITICAL_EVERY_S):
        gevent.sleep(max(0.0, start + at - time.monotonic()))
        sent.append(gevent.spawn(_send, _session(environment), CRITICAL, NAME_CRITICAL))
    return sent


def _phases(environment) -> None:
    try:
        session = _session(environment)
        for _ in range(IDLE_TICKETS):
            _send(session, LOW, IDLE)
    finally:
        FLOOD_OPEN.set()
    pager = gevent.spawn(_pager, environment)
    gevent.sleep(FLOOD_S)
    gevent.joinall(pager.get() or [], timeout=CRITICAL_DRAIN_S)  # every critical ticket sent is judged
    environment.runner.quit()


@events.test_start.add_listener
def _start_phases(environment, **kwargs):
    gevent.spawn(_phases, environment)


class MixedUser(HttpUser):
    weight = 30
    wait_time = between(1, 3)

    def on_start(self):
        use_key(self)
        FLOOD_OPEN.wait()

    @task
    def ticket(self):
        _send(self.client, LOW, NAME_LOW)
