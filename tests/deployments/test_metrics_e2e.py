"""GET /metrics against the real service: a solved ticket shows up in the service-wide Prometheus
exposition (read from Ray's metrics agents, which export a replica's values every
metrics_report_interval_ms, 10 s by default), and access follows auth.metrics_access (the session
`service` runs `auth.mode: keys` on 127.0.0.1 with the default, loopback)."""

import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

EXPORT_WAIT_S = 60  # Ray's report interval plus slack on 2 busy cores


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _total(fams: dict, family: str, sample: str, **labels) -> float:
    fam = fams.get(family)
    if fam is None:
        return 0.0
    return sum(s.value for s in fam.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_ticket_is_counted_in_metrics(service):
    tag = uuid.uuid4().hex[:8]
    r = service.post("/v1/tickets?candidates=1&cache=false",
                     json={"title": f"db-{tag} disk 97% full", "description": "postgres cannot write WAL since 10:00"})
    assert r.status_code == 200, r.text
    result = r.json()
    deadline, fams, text = time.time() + EXPORT_WAIT_S, {}, ""
    while True:
        m = service.get("/metrics", timeout=30)
        assert m.status_code == 200, m.text
        assert m.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = m.text
        fams = _families(text)
        counted = _total(fams, "flowrouter_tickets", "flowrouter_tickets_total", outcome="done",
                         expert=result["expert"], task=result["task"])
        planned = _total(fams, "flowrouter_stage_latency_ms", "flowrouter_stage_latency_ms_count", stage="plan")
        if counted >= 1 and planned >= 1:
            break
        assert time.time() < deadline, f"the ticket is not in /metrics after {EXPORT_WAIT_S}s:\n{text[-3000:]}"
        time.sleep(2)
    assert "ray_" not in text, "Ray's prefix is stripped and Ray's own series are left out"
    assert fams["flowrouter_tickets"].type == "counter"
    stage = fams["flowrouter_stage_latency_ms"]
    assert stage.type == "histogram"
    assert _total(fams, "flowrouter_stage_latency_ms", "flowrouter_stage_latency_ms_bucket", stage="plan",
                  le="+Inf") == planned
    # Each ingress replica's series is its own (Serve's tags); Ray's per-process labels are gone.
    for s in fams["flowrouter_tickets"].samples:
        assert s.labels.get("replica") and "ingress" in s.labels.get("deployment", "").lower(), s.labels
        assert not s.labels.keys() & {"WorkerId", "SessionName", "Component"}, s.labels
    assert _total(fams, "flowrouter_store_tickets", "flowrouter_store_tickets", status="done") >= 1
    assert _total(fams, "flowrouter_scrape_nodes", "flowrouter_scrape_nodes", state="ok") >= 1
    assert _total(fams, "flowrouter_scrape_nodes", "flowrouter_scrape_nodes", state="failed") == 0
    assert "/metrics" not in service.get("/openapi.json").json()["paths"]


def test_metrics_access_follows_the_config(service):
    assert service.cfg.auth.mode == "keys" and service.cfg.auth.metrics_access == "loopback"
    url = f"{service.url}/metrics"
    assert httpx.get(url, timeout=30).status_code == 200, "loopback client, loopback Host: no key needed"
    remote = {"Host": "flowrouter.example:8000"}  # anyone else (or a page that rebinds DNS) needs an admin key
    assert httpx.get(url, headers=remote, timeout=30).status_code == 401
    ticket = httpx.get(url, headers={**remote, "Authorization": f"Bearer {service.keys['ticket']}"}, timeout=30)
    assert ticket.status_code == 403, ticket.text
    admin = httpx.get(url, headers={**remote, "Authorization": f"Bearer {service.keys['admin']}"}, timeout=30)
    assert admin.status_code == 200 and "flowrouter_scrape_nodes" in admin.text
