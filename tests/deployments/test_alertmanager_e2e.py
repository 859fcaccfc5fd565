"""End to end with a real Alertmanager: alerts posted to its API reach the real service through its webhook.

Alertmanager (the `prometheus-alertmanager` binary, on loopback, clustering off) groups by alertname and
notifies FlowRouter's receiver with the `ticket` API key as a bearer token. Three alerts of one name (one
incident) and one of another become four tickets computed twice; resolving them marks the tickets.
"""

import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.alertmanager import ticket_id
from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
RUNBOOKS = "https://git.example.com/ops/runbooks/blob/main"
LEDGER = [{"alertname": "LedgerWriterStalled", "severity": "critical", "instance": f"ledger-{i}", "team": "payments"}
          for i in (1, 2, 3)]
GATEWAY = {"alertname": "GatewayCertificateExpiring", "severity": "warning", "instance": "gw-1", "team": "edge"}
NOTES = {
    "LedgerWriterStalled": {"summary": "The ledger writer has not committed payments for 10 minutes.",
                            "runbook_url": f"{RUNBOOKS}/payments-platform/LedgerWriterStalled.md"},
    "GatewayCertificateExpiring": {"summary": "The edge gateway's TLS certificate expires in 5 days.",
                                   "runbook_url": f"{RUNBOOKS}/edge-gateway-operator/GatewayCertificateExpiring.md"},
}


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _until(what, check, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def alertmanager(service, tmp_path_factory):
    """A real Alertmanager whose only receiver is the service's webhook; yields its URL."""
    if not ALERTMANAGER.exists():
        pytest.skip(f"{ALERTMANAGER} is absent (apt-get install prometheus-alertmanager)")
    work = tmp_path_factory.mktemp("alertmanager")
    config = {
        "route": {"receiver": "flowrouter", "group_by": ["alertname"], "group_wait": "1s", "group_interval": "1s",
                  "repeat_interval": "1h"},
        "receivers": [{"name": "flowrouter", "webhook_configs": [{
            "url": f"{service.url}/v1/alerts/alertmanager?candidates=1", "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials": service.keys["ticket"]}}}]}],
    }
    (work / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "alertmanager.log").open("wb")
    proc = subprocess.Popen([str(ALERTMANAGER), f"--config.file={work / 'alertmanager.yml'}",
                             f"--storage.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited: {(work / 'alertmanager.log').read_text()[-2000:]}")
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _until("alertmanager to be ready", ready, 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def _post_alerts(am: str, alerts: list[dict], starts: datetime, ends: datetime | None = None) -> None:
    body = [{"labels": labels, "annotations": NOTES[labels["alertname"]], "startsAt": _rfc3339(starts),
             "generatorURL": "http://prometheus.example:9090/graph", **({"endsAt": _rfc3339(ends)} if ends else {})}
            for labels in alerts]
    r = httpx.post(f"{am}/api/v2/alerts", json=body, timeout=10)
    assert r.status_code == 200, r.text


def test_alert_group_becomes_coalesced_tickets_that_resolve(service, alertmanager):
    starts = (datetime.now(timezone.utc) - timedelta(minutes=2)).replace(microsecond=0)
    _post_alerts(alertmanager, [*LEDGER, GATEWAY], starts)

    # The ticket ids follow from what Alertmanager knows: each alert's fingerprint and startsAt.
    def fingerprints():
        alerts = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=10).json()
        return {a["labels"]["instance"]: a["fingerprint"] for a in alerts} if len(alerts) == 4 else None

    ids = {inst: ticket_id(fp, starts) for inst, fp in _until("alertmanager's alerts", fingerprints, 30).items()}

    def tickets(pred):
        rows = {}
        for inst, tid in ids.items():
            r = service.get(f"/v1/tickets/{tid}")
            if r.status_code != 200 or not pred(r.json()):
                return None
            rows[inst] = r.json()
        return rows

    rows = _until("the alerts' tickets to be computed", lambda: tickets(lambda t: t["status"] in ("done", "failed")),
                  900)
    assert all(t["status"] == "done" for t in rows.values()), {k: t["error"] for k, t in rows.items()}
    for labels in [*LEDGER, GATEWAY]:
        alert = rows[labels["instance"]]["alert"]
        assert alert["labels"] == labels and alert["annotations"] == NOTES[labels["alertname"]]
        assert alert["resolved"] is False

    # The three LedgerWriterStalled alerts are one incident: computed once, the result shared by all three.
    ledger = [rows[f"ledger-{i}"] for i in (1, 2, 3)]
    assert len({t["alert"]["incident"] for t in ledger}) == 1
    assert rows["gw-1"]["alert"]["incident"] != ledger[0]["alert"]["incident"]
    computed = [t for t in ledger if t["result"]["shared"] is None]
    assert len(computed) == 1, [t["result"]["shared"] for t in ledger]
    leader = computed[0]["ticket_id"]
    for t in ledger:
        assert t["result"]["ticket_id"] == t["ticket_id"]
        assert t["result"]["shared"] in (None, "coalesced", "cache")
        assert t["result"]["shared_from"] in (None, leader)
        assert t["result"]["workflow"] == computed[0]["result"]["workflow"]
    assert rows["gw-1"]["result"]["shared"] is None
    assert all(t["result"]["n_requested"] == 1 for t in rows.values())  # ?candidates=1 from the webhook URL

    # alertname and the runbook_url's file name are retrieval keys: each alert's own runbook comes first.
    for inst, name in (("ledger-1", "LedgerWriterStalled"), ("gw-1", "GatewayCertificateExpiring")):
        knowledge = rows[inst]["result"]["knowledge"]
        assert knowledge["status"] == "matched", knowledge
        assert knowledge["items"][0]["title"] == name, knowledge["items"]

    # Resolving the alerts (endsAt in the past) marks every ticket resolved; the results stay.
    _post_alerts(alertmanager, [*LEDGER, GATEWAY], starts, ends=datetime.now(timezone.utc) - timedelta(seconds=1))
    resolved = _until("the tickets to be marked resolved", lambda: tickets(lambda t: t["alert"]["resolved"]), 120)
    for t in resolved.values():
        assert t["status"] == "done" and t["result"] is not None
        at = datetime.fromisoformat(t["alert"]["resolved_at"])
        assert starts < at <= datetime.now(timezone.utc)
