"""A shortened chaos run on the session service: async tickets while Planner and Scorer replicas are SIGKILLed
every 12 s and a map is published mid-run; nothing accepted is lost.

It runs on the shared session service (Serve restarts the killed replicas); the run waits until every killed
deployment has its replicas back and rolls the published map back, so later tests find the service as before.
"""

import pytest

from load_tests import chaos, data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]  # a cold session service start + run + drain + recover


def test_chaos_under_load_loses_nothing(service, monkeypatch):
    try:
        rows = data.load_rows()
    except data.DataUnavailable as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("FLOWROUTER_API_KEY", service.keys["ticket"])
    monkeypatch.setenv("FLOWROUTER_ADMIN_KEY", service.keys["admin"])
    before = service.get("/v1/map").json()["current"]["version"]
    run = chaos.Chaos(service.url, service.state_dir, duration_s=45, kill_interval_s=12, submit_every_s=8,
                      max_tickets=4, candidates=1, seed=0)
    texts = [f"{t} ref {run.nonce}" for t in data.diverse(rows, k=4, seed=11)]
    summary = run.run(texts, drain_timeout_s=480, recover_timeout_s=240)
    print(summary)
    assert chaos.report(summary) == 0, summary
    assert summary["accepted"] >= 3 and summary["lost"] == 0 and summary["done"] == summary["accepted"]
    assert summary["kill_rounds"] == 3 and summary["kills"] == {"planner-": 3, "scorer": 3}
    assert summary["published"] and summary["recovered"]
    after = run.replicas()
    killed = {k["pid"] for k in summary["kill_log"] if "error" not in k}
    assert not killed & {p.pid for procs in after.values() for p in procs}, "killed replicas were replaced"
    assert service.get("/v1/map").json()["current"]["version"] == before, "the published map was rolled back"
