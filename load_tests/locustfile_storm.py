"""Alert storm: a few incidents replayed as many near-duplicate synchronous tickets.

    locust -f load_tests/locustfile_storm.py --headless -u 12 -r 5 -t 180s --host http://127.0.0.1:8000 --csv runs/storm
(or `make load-storm`, which also applies load_tests/slo/storm.yaml). Env: FLOWROUTER_LOAD_CANDIDATES (N, default 1),
FLOWROUTER_STORM_INCIDENTS (default 3), FLOWROUTER_LOAD_NONCE (a word added to every incident; random per run so
each run starts with a cold cache), FLOWROUTER_TICKETS_CSV.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

from load_tests.data import load_rows, near_duplicate, run_nonce, storm_incidents, to_ticket
from load_tests.locust_common import CANDIDATES, ConsoleUser, account, use_key  # noqa: F401  (ConsoleUser runs too)

NONCE = os.environ.get("FLOWROUTER_LOAD_NONCE") or run_nonce()
INCIDENTS = [f"{text} ref {NONCE}" for text in
             storm_incidents(load_rows(), k=int(os.environ.get("FLOWROUTER_STORM_INCIDENTS", "3")))]
NAME = "POST /v1/tickets (storm)"


class StormUser(HttpUser):
    weight = 10
    wait_time = between(0.5, 1.5)

    def on_start(self):
        self.rng = random.Random()
        use_key(self)

    @task
    def alert(self):
        body = to_ticket(near_duplicate(self.rng.choice(INCIDENTS), self.rng))
        with self.client.post("/v1/tickets", params={"candidates": CANDIDATES}, json=body, name=NAME,
                              catch_response=True, timeout=600) as resp:
            if account(resp, NAME) and resp.status_code == 200 and "workflow" not in resp.json():
                resp.failure("200 without a workflow")
