"""Coalescing, the result cache, its keys following the live map, the bypass flag and async mode,
on the session `service` (default config). Two rounds of real computation; the rest is shared."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.workflow import parse_mermaid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

STORM = [f"RE: Disk {90 + i}% full on db-{i:02d} at 10:{i:02d}:07" for i in range(6)]
DESC = "postgres on the storage array cannot write WAL segments; writes fail with ENOSPC"


def _post(service, title, **params):
    return service.post("/v1/tickets", params={"candidates": 1, **params}, json={"title": title, "description": DESC})


def test_storm_coalesces_caches_and_follows_the_map(service):
    with ThreadPoolExecutor(len(STORM)) as pool:
        responses = list(pool.map(lambda t: _post(service, t), STORM))
    assert all(r.status_code == 200 for r in responses), [r.text[:300] for r in responses]
    results = [r.json() for r in responses]
    computed = [r for r in results if r["shared"] is None]
    assert len(computed) == 1, [r["shared"] for r in results]
    assert sorted(r["shared"] for r in results if r["shared"]) == ["coalesced"] * 5
    leader = computed[0]
    assert all(r["shared_from"] == leader["ticket_id"] for r in results if r["shared"])
    assert len({r["ticket_id"] for r in results}) == 6  # each ticket keeps its own id and record
    parse_mermaid(results[-1]["workflow"]["mermaid"])
    assert {r["workflow"]["mermaid"] for r in results} == {leader["workflow"]["mermaid"]}

    cached = _post(service, "disk 99% FULL on db-42 at 11:00:00").json()
    assert cached["shared"] == "cache" and cached["map_version"] == leader["map_version"]
    stored = service.get(f"/v1/tickets/{cached['ticket_id']}").json()
    assert stored["status"] == "done" and stored["result"]["shared"] == "cache"

    # A new map version changes the key: the same storm is computed again (and so is a bypass request).
    before = service.get("/v1/map").json()["current"]
    new_map = {"version": "e2e-sharing-2", "fallback": before["fallback"], "routes": before["routes"]}
    assert service.post("/v1/map", json=new_map, timeout=30).status_code == 200
    time.sleep(1.5)  # ingress replicas re-read the map version at most once a second
    try:
        with ThreadPoolExecutor(2) as pool:
            fresh, bypass = pool.map(lambda kw: _post(service, STORM[0], **kw), [{}, {"cache": "false"}])
        assert fresh.status_code == 200 and bypass.status_code == 200, (fresh.text[:300], bypass.text[:300])
        fresh, bypass = fresh.json(), bypass.json()
        assert fresh["shared"] is None and fresh["map_version"] == "e2e-sharing-2"
        assert bypass["shared"] is None, "cache=false neither reads the cache nor joins a flight"
    finally:
        assert service.post("/v1/map/rollback", timeout=30).status_code == 200
    time.sleep(1.5)
    back = _post(service, STORM[3]).json()
    assert back["shared"] == "cache" and back["map_version"] == before["version"]

    stats = service.get("/v1/stats").json()
    assert stats["totals"]["coalesced"] >= 5 and stats["totals"]["cache"] >= 2
    assert stats["cache"]["entries"] >= 2


def test_async_mode(service):
    """202 at once with a status URL; the worker completes it (here from the cache: no extra compute)."""
    r = service.post("/v1/tickets", params={"mode": "async", "candidates": 1},
                     json={"title": "Disk 91% full on db-77 at 09:09:09", "description": DESC, "id": "e2e-async-1"},
                     timeout=30)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["ticket_id"] == "e2e-async-1" and body["status_url"] == "/v1/tickets/e2e-async-1"
    assert r.headers["Location"] == body["status_url"]
    deadline = time.time() + 600
    while time.time() < deadline:
        row = service.get(body["status_url"]).json()
        if row["status"] in ("done", "failed"):
            break
        assert row["status"] in ("queued", "running")
        time.sleep(1)
    assert row["status"] == "done", row
    assert row["result"]["ticket_id"] == "e2e-async-1" and row["result"]["workflow"]["mermaid"]
    again = service.post("/v1/tickets", params={"mode": "async"}, json={"title": "x", "id": "e2e-async-1"}, timeout=30)
    assert again.status_code == 409
    bad = service.post("/v1/tickets", params={"mode": "later"}, json={"title": "x"}, timeout=30)
    assert bad.status_code == 422
