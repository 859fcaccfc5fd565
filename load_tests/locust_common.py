"""Shared pieces of the Locust files: loopback guard, clean-rejection accounting, the console user."""

from __future__ import annotations

import os

from locust import HttpUser, between, events, task

from load_tests.data import require_loopback

CANDIDATES = int(os.environ.get("FLOWROUTER_LOAD_CANDIDATES", "1"))
REJECTED = " [rejected]"
API_KEY = os.environ.get("FLOWROUTER_API_KEY")  # for a service in `auth.mode: keys` (a `ticket` key is enough)


def use_key(user: HttpUser) -> None:
    if API_KEY:
        user.client.headers["Authorization"] = f"Bearer {API_KEY}"


@events.test_start.add_listener
def _loopback_only(environment, **kwargs):
    require_loopback(environment.host or "")


def account(resp, name: str) -> bool:
    """Classify a response inside `with client.post(..., catch_response=True)`.

    A 429/503 carrying Retry-After is a clean refusal: it is counted under `name [rejected]` as a
    success, so the endpoint's latency percentiles and error rate cover accepted requests only and
    the SLO bounds the rejected share separately. A refusal without Retry-After, any other 5xx, or a
    timeout is an error. Returns True when the request was accepted (2xx).
    """
    if resp.status_code in (429, 503):
        resp.request_meta["name"] = name + REJECTED
        if resp.headers.get("Retry-After"):
            resp.success()
        else:
            resp.failure(f"{resp.status_code} without Retry-After")
        return False
    if 200 <= resp.status_code < 300:
        resp.success()
        return True
    resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
    return False


class ConsoleUser(HttpUser):
    """The operations console polling GET /v1/stats while the load runs."""

    weight = 1
    fixed_count = 1
    wait_time = between(4, 6)

    def on_start(self):
        use_key(self)

    @task
    def stats(self):
        with self.client.get("/v1/stats", name="GET /v1/stats", catch_response=True, timeout=30) as resp:
            if resp.status_code == 200 and "tickets_per_s" in resp.json():
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}")
