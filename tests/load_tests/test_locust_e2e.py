"""A short real Locust storm against the session service, judged by the shipped storm SLO file.

The storm's one incident is computed once before Locust starts (a cold storm's first computation takes
as long as one ticket; `make load-storm` runs the cold case), so the 60 s run measures what a storm
mostly is: near-duplicates answered from the shared result.
"""

import random
from pathlib import Path

import pytest

from load_tests import data, verdict
from load_tests.run import run_locust

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SLO = Path(__file__).resolve().parents[2] / "load_tests" / "slo" / "storm.yaml"


def test_locust_storm_meets_its_slo(service, tmp_path):
    try:
        rows = data.load_rows()
    except data.DataUnavailable as exc:
        pytest.skip(str(exc))
    nonce = data.run_nonce()
    incident = data.storm_incidents(rows, k=1)[0] + f" ref {nonce}"
    warm = service.post("/v1/tickets", params={"candidates": 1},
                        json=data.to_ticket(data.near_duplicate(incident, random.Random(0))))
    assert warm.status_code == 200, warm.text
    env = {"FLOWROUTER_LOAD_NONCE": nonce, "FLOWROUTER_STORM_INCIDENTS": "1", "FLOWROUTER_LOAD_CANDIDATES": "1"}
    keys = getattr(service, "keys", None) or {}  # the session service runs with API keys when auth is on
    if keys.get("ticket"):
        env["FLOWROUTER_API_KEY"] = keys["ticket"]
    prefix = tmp_path / "storm"
    run_locust("storm", service.url, users=12, spawn_rate=6, duration="60s", prefix=prefix, env=env)
    stats = verdict.read_stats(f"{prefix}_stats.csv")
    assert int(stats["POST /v1/tickets (storm)"]["Request Count"]) >= 100
    assert verdict.main([f"{prefix}_stats.csv", str(SLO)]) == 0
