"""The Alertmanager receiver without Ray or models: real v4 payloads, a real SQLite TicketStore and FloodGate
with a scripted compute, and a small knowledge base built with a hashing embedder for the retrieval keys."""

import asyncio
import copy
import json
import sqlite3

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from core.config import load_config
from core.schemas import KnowledgeUse, PlanRequest, Scores, Ticket, TicketResult, WorkflowOut
from core.task_map import TaskMap
from deployments.alertmanager import (
    AlertmanagerPayload,
    AlertReceiver,
    build_ticket,
    incident_id,
    retrieval_keys,
    runbook_names,
    ticket_fields,
    ticket_id,
)
from deployments.auth.policy import required_role
from deployments.flood import FloodGate
from deployments.ticket_store import TicketStore
from tests.router.test_fusion import HashEmbedder as FusionHashEmbedder

MAP = TaskMap(version="m1", routes={}, fallback="smollm2-generalist")

# A notification exactly as Alertmanager 0.25 posted it (captured from the Debian package's binary).
REAL_V4 = json.loads(r"""{"receiver": "flowrouter", "status": "firing", "alerts": [{"status": "firing",
"labels": {"alertname": "KubePodCrashLooping", "instance": "10.0.0.1:8080", "namespace": "shop", "pod": "cart-1",
"severity": "warning"}, "annotations": {"description": "Pod shop/cart-1 (cart) is in waiting state (reason: CrashLoopBackOff).",
"runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping",
"summary": "Pod shop/cart-1 is crash looping."}, "startsAt": "2026-12-02T17:41:40.840484979Z",
"endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
"fingerprint": "d42478c5bef69509"}, {"status": "firing", "labels": {"alertname": "KubePodCrashLooping",
"instance": "10.0.0.2:8080", "namespace": "shop", "pod": "cart-2", "severity": "warning"},
"annotations": {"summary": "Pod shop/cart-2 is crash looping."}, "startsAt": "2026-12-02T17:41:40.840484979Z",
"endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "cd57dbbc35584243"}],
"groupLabels": {"alertname": "KubePodCrashLooping"}, "commonLabels": {"alertname": "KubePodCrashLooping",
"namespace": "shop", "severity": "warning"}, "commonAnnotations": {}, "externalURL": "http://vm:18093",
"version": "4", "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}", "truncatedAlerts": 0}""")

# Its resolution, as Alertmanager sent it for another alert of the same capture.
REAL_V4_RESOLVED = json.loads(r"""{"receiver": "flowrouter", "status": "resolved", "alerts": [{"status": "resolved",
"labels": {"alertname": "KubePodCrashLooping", "pod": "cart-1", "severity": "critical"},
"annotations": {"summary": "Pod cart-1 is crash looping."}, "startsAt": "2026-12-02T17:40:03Z",
"endsAt": "2026-12-02T17:41:58Z", "generatorURL": "", "fingerprint": "44498b64741527fe"}],
"groupLabels": {"alertname": "KubePodCrashLooping"}, "commonLabels": {"alertname": "KubePodCrashLooping",
"pod": "cart-1", "severity": "critical"}, "commonAnnotations": {"summary": "Pod cart-1 is crash looping."},
"externalURL": "http://vm:18093", "version": "4", "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}",
"truncatedAlerts": 0}""")


def _alert(name, instance, fp, status="firing", severity="warning", starts="2026-12-02T17:00:00Z",
           ends="0001-01-01T00:00:00Z", **notes):
    return {"status": status, "labels": {"alertname": name, "instance": instance, "severity": severity},
            "annotations": {"summary": f"{name} on {instance}", **notes}, "startsAt": starts, "endsAt": ends,
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": fp}


def _payload(alerts, group_key='{}:{alertname="LedgerWriterStalled"}', status="firing"):
    return AlertmanagerPayload.model_validate({
        "version": "4", "receiver": "flowrouter", "status": status, "alerts": alerts, "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093", "groupKey": group_key,
        "truncatedAlerts": 0})


def _result(ticket: Ticket, task_map: TaskMap, n: int) -> TicketResult:
    wf = WorkflowOut(mermaid="flowchart TD\n  S1[Check]", steps=[{"id": "S1", "kind": "process", "text": "Check"}],
                     edges=[])
    return TicketResult(ticket_id=ticket.id, task="storage", confidence=0.9, decision_path="retrieval",
                        expert="smollm2-generalist", map_version=task_map.version, workflow=wf, best_index=0,
                        candidates=[{"index": 0, "workflow": wf, "scores": Scores(overall=4.0)}],
                        retrieved_examples=[], context_ids=[], knowledge=KnowledgeUse(status="none matched"),
                        timings_ms={"total": 1.0})


class Models:
    def __init__(self, delay=0.05):
        self.calls: list[Ticket] = []
        self.delay = delay

    async def compute(self, ticket, n, expert, task_map):
        self.calls.append(ticket)
        await asyncio.sleep(self.delay)
        return _result(ticket, task_map, n)

    async def current_map(self):
        return MAP


def _receiver(tmp_path, models=None, **flood):
    cfg = load_config()
    cfg.flood = cfg.flood.model_copy(update=dict(
        dict(poll_interval_s=0.05, heartbeat_s=0.1, stale_after_s=0.3), **flood))
    store = TicketStore(tmp_path / "tickets.sqlite")
    models = models or Models()
    gate = FloodGate(cfg, store, models.compute, models.current_map)
    return AlertReceiver(gate, store, cfg.serve.max_ticket_chars), gate, store


def _body(response):
    return json.loads(response.body)


async def _until(pred, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# ---- parsing ------------------------------------------------------------------------------------------
def test_a_real_v4_notification_parses():
    p = AlertmanagerPayload.model_validate(REAL_V4)
    assert p.version == "4" and p.receiver == "flowrouter" and p.status == "firing" and p.truncated_alerts == 0
    assert p.group_key == '{}:{alertname="KubePodCrashLooping"}' and p.external_url == "http://vm:18093"
    a, b = p.alerts
    assert a.name == "KubePodCrashLooping" and a.fingerprint == "d42478c5bef69509"
    assert a.starts_at.year == 2026 and a.ends_at.year == 1  # Go's zero time while firing
    assert a.notes["runbook_url"].endswith("/kubepodcrashlooping") and b.generator_url == ""
    r = AlertmanagerPayload.model_validate(REAL_V4_RESOLVED)
    assert r.status == "resolved" and r.alerts[0].ends_at.isoformat() == "2026-12-02T17:41:58+00:00"


def test_null_maps_and_unknown_fields_are_accepted():
    raw = copy.deepcopy(REAL_V4)
    raw["commonAnnotations"] = None  # Go marshals an empty map as null
    raw["alerts"][1]["annotations"] = None
    raw["futureField"] = {"x": 1}
    p = AlertmanagerPayload.model_validate(raw)
    assert p.alerts[1].notes == {}


@pytest.mark.parametrize("change, where", [
    (lambda r: r.update(version="3"), "version"),
    (lambda r: r.pop("groupKey"), "groupKey"),
    (lambda r: r["alerts"][0].update(status="pending"), "status"),
    (lambda r: r["alerts"][0].update(fingerprint="../../etc"), "fingerprint"),
    (lambda r: r["alerts"][0].pop("fingerprint"), "fingerprint"),
    (lambda r: r["alerts"][0].update(startsAt="2026-12-02"), "startsAt"),
    (lambda r: r["alerts"][0].update(startsAt=1700000000), "startsAt"),
    (lambda r: r["alerts"][0].update(labels={"alertname": 3}), "labels"),
])
def test_bad_payloads_are_refused_with_the_field(change, where):
    raw = copy.deepcopy(REAL_V4)
    change(raw)
    with pytest.raises(ValidationError) as exc:
        AlertmanagerPayload.model_validate(raw)
    assert any(where in [str(x) for x in e["loc"]] for e in exc.value.errors()), exc.value.errors()


def test_over_http_bad_payloads_get_422_and_good_ones_200(tmp_path):
    receiver, gate, store = _receiver(tmp_path)
    app = FastAPI()

    @app.post("/v1/alerts/alertmanager")
    def post(payload: AlertmanagerPayload):  # the ingress route's shape, without Serve
        return receiver.receive(payload)

    with TestClient(app) as client:
        bad = client.post("/v1/alerts/alertmanager", json={**REAL_V4, "version": "3"})
        assert bad.status_code == 422 and "version" in bad.text
        ok = client.post("/v1/alerts/alertmanager", json=REAL_V4)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["counts"] == {"queued": 2} and len(body["incidents"]) == 1
    assert store.counts() in ({"queued": 2}, {"queued": 1, "running": 1}, {"running": 2}, {"done": 2},
                              {"done": 1, "running": 1}, {"done": 1, "queued": 1})


def test_the_route_is_a_ticket_route():
    assert required_role("POST", "/v1/alerts/alertmanager") == "ticket"


# ---- tickets ------------------------------------------------------------------------------------------
def test_ticket_from_a_firing_alert():
    p = AlertmanagerPayload.model_validate(REAL_V4)
    t = build_ticket(p, p.alerts[0], 8000)
    assert t.title == "KubePodCrashLooping: Pod shop/cart-1 is crash looping."
    assert "CrashLoopBackOff" in t.description and "namespace=shop" in t.description
    assert "Runbook: https://runbooks.prometheus-operator.dev/" in t.description
    assert t.source == "alertmanager"
    assert t.labels[:2] == ["alertname=KubePodCrashLooping", "severity=warning"]
    assert "pod=cart-1" in t.labels and "instance=10.0.0.1:8080" in t.labels
    assert t.id == ticket_id("d42478c5bef69509", p.alerts[0].starts_at) == "am-d42478c5bef69509-1796233300"
    assert t.alert.labels == p.alerts[0].labels and t.alert.annotations["summary"].startswith("Pod shop/cart-1")
    assert t.alert.incident == incident_id(p.group_key, "KubePodCrashLooping")
    assert t.alert.keys == ["KubePodCrashLooping", "kubepodcrashlooping"]
    # the ticket survives the store's JSON round trip (the async path re-reads it)
    again = Ticket.model_validate(json.loads(json.dumps(t.model_dump())))
    assert again == t


def test_ticket_without_summary_and_with_oversized_labels():
    long = "x" * 5000
    p = _payload([{"status": "firing", "labels": {"alertname": "Boom", "pod": "api-7", "big": long, "y" * 300: "v"},
                   "annotations": None, "startsAt": "2026-12-02T17:00:00Z", "fingerprint": "ab12"}])
    t = build_ticket(p, p.alerts[0], 200)
    assert t.title == "Boom firing on api-7"
    assert len(t.text()) <= 200
    assert "big" in t.alert.labels and len(t.alert.labels["big"]) == 4000 and "y" * 300 not in t.alert.labels
    assert all(len(x) <= 64 for x in t.labels) and "pod=api-7" in t.labels


def test_runbook_names_and_retrieval_keys():
    assert runbook_names("https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping/") == [
        "kubepodcrashlooping"]
    assert runbook_names("https://git.example.com/ops/runbooks/blob/main/payments/LedgerWriterStalled.md") == [
        "LedgerWriterStalled"]
    assert runbook_names("https://wiki/runbooks.md#Node%20Down") == ["runbooks", "Node Down"]
    p = _payload([_alert("DiskFull", "db-1", "aa01", runbook_url="https://x/runbooks/storage/disk-full.md")])
    assert retrieval_keys(p.alerts[0]) == ["DiskFull", "disk-full"]


def test_ids_are_the_same_for_every_resend_of_one_firing():
    webhook = AlertmanagerPayload.model_validate(REAL_V4).alerts[0].starts_at  # nanoseconds
    api = _payload([_alert("X", "i", "d42478c5bef69509", starts="2026-12-02T17:41:40.840Z")]).alerts[0].starts_at
    assert ticket_id("d42478c5bef69509", webhook) == ticket_id("d42478c5bef69509", api)
    later = _payload([_alert("X", "i", "d42478c5bef69509", starts="2026-12-02T18:00:00Z")]).alerts[0].starts_at
    assert ticket_id("d42478c5bef69509", later) != ticket_id("d42478c5bef69509", webhook)
    assert incident_id("g1", "A") != incident_id("g1", "B") != incident_id("g2", "A")


def test_resends_do_not_duplicate_tickets(tmp_path):
    receiver, gate, store = _receiver(tmp_path)
    p = AlertmanagerPayload.model_validate(REAL_V4)
    first = _body(receiver.receive(p))  # no event loop: the worker does not start, tickets stay queued
    assert [a["outcome"] for a in first["alerts"]] == ["queued", "queued"]
    again = _body(receiver.receive(p))
    assert [a["outcome"] for a in again["alerts"]] == ["duplicate", "duplicate"]
    assert [a["ticket_id"] for a in again["alerts"]] == [a["ticket_id"] for a in first["alerts"]]
    assert store.counts() == {"queued": 2}


# ---- grouping -----------------------------------------------------------------------------------------
def test_alerts_of_one_group_and_name_share_one_computation(tmp_path):
    models = Models(delay=0.3)

    async def main():
        receiver, gate, store = _receiver(tmp_path, models, async_workers=4)
        group = [_alert("LedgerWriterStalled", f"ledger-{i}", f"f{i}") for i in range(3)]
        other = _alert("GatewayCertificateExpiring", "gw-1", "e1")
        body = _body(receiver.receive(_payload([*group, other], group_key="{}:{}")))
        assert body["counts"] == {"queued": 4}
        incidents = body["incidents"]
        assert len(incidents) == 2
        ledger = incidents[incident_id("{}:{}", "LedgerWriterStalled")]
        assert len(ledger) == 3 and all(a["incident"] for a in body["alerts"])
        await _until(lambda: store.counts().get("done") == 4)
        assert len(models.calls) == 2  # one per incident
        results = [store.get(t)["result"] for t in ledger]
        leader = [r for r in results if r["shared"] is None]
        assert len(leader) == 1
        assert all(r["shared"] in ("coalesced", "cache") and r["shared_from"] == leader[0]["ticket_id"]
                   for r in results if r["shared"])
        assert [r["ticket_id"] for r in results] == ledger  # each ticket keeps its own id
        view = ticket_fields(store.get(ledger[0]))["alert"]
        assert view["incident"] == incident_id("{}:{}", "LedgerWriterStalled") and view["resolved"] is False
        assert view["labels"]["alertname"] == "LedgerWriterStalled"
        await gate.worker.stop()

    asyncio.run(main())


# ---- resolved alerts ----------------------------------------------------------------------------------
def test_resolved_alerts_mark_finished_tickets_and_cancel_queued_ones(tmp_path):
    models = Models()
    receiver, gate, store = _receiver(tmp_path, models)
    done_alert = _alert("A", "i1", "a1")
    queued_alert = _alert("A", "i2", "a2")
    receiver.receive(_payload([done_alert, queued_alert]))
    done_id = ticket_id("a1", _payload([done_alert]).alerts[0].starts_at)
    store.complete(done_id, {"ticket_id": done_id})  # as if the worker had run it
    resolved = [dict(a, status="resolved", endsAt="2026-12-02T17:05:00Z") for a in (done_alert, queued_alert)]
    never = _alert("A", "i3", "a3", status="resolved", ends="2026-12-02T17:05:00Z")
    body = _body(receiver.receive(_payload([*resolved, never], status="resolved")))
    assert [a["outcome"] for a in body["alerts"]] == ["resolved", "cancelled", "unknown"]
    assert [a["ticket_status"] for a in body["alerts"]] == ["done", "cancelled", None]
    done = store.get(done_id)
    assert done["status"] == "done" and done["result"] == {"ticket_id": done_id}
    view = ticket_fields(done)["alert"]
    assert view["resolved"] is True and view["resolved_at"] == "2026-12-02T17:05:00+00:00"
    cancelled = store.get(body["alerts"][1]["ticket_id"])
    assert cancelled["status"] == "cancelled" and "resolved" in cancelled["error"]
    assert store.claim(10, 30.0) == []  # nothing left to compute
    # Alertmanager repeats the resolution: the first report stands
    again = _body(receiver.receive(_payload([dict(resolved[0], endsAt="2026-12-02T18:00:00Z")], status="resolved")))
    assert again["alerts"][0]["outcome"] == "resolved"
    assert ticket_fields(store.get(done_id))["alert"]["resolved_at"] == "2026-12-02T17:05:00+00:00"


def test_on_resolved_annotate_and_result_webhooks_keep_the_ticket_queued(tmp_path):
    receiver, gate, store = _receiver(tmp_path)
    a, b = _alert("A", "i1", "b1"), _alert("A", "i2", "b2")
    receiver.receive(_payload([a]))
    receiver.receive(_payload([b]), webhook={"url": "http://hook.example/x", "format": "json", "source": "config"})
    res = [dict(x, status="resolved", endsAt="2026-12-02T17:05:00Z") for x in (a, b)]
    annotated = _body(receiver.receive(_payload(res[:1], status="resolved"), on_resolved="annotate"))
    waited_for = _body(receiver.receive(_payload(res[1:], status="resolved")))
    for body in (annotated, waited_for):
        assert body["alerts"][0]["outcome"] == "resolved" and body["alerts"][0]["ticket_status"] == "queued"
    assert len(store.claim(10, 30.0)) == 2  # both still get computed


def test_a_store_without_the_annotations_column_opens_and_reads(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as c:  # the ticket table as stores were written before annotations
        c.execute("CREATE TABLE tickets (id TEXT PRIMARY KEY, received REAL NOT NULL, updated REAL NOT NULL, "
                  "status TEXT NOT NULL, mode TEXT NOT NULL, request TEXT NOT NULL, params TEXT NOT NULL, "
                  "result TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0)")
        c.execute("INSERT INTO tickets VALUES ('old', 1, 1, 'done', 'sync', '{\"title\": \"t\"}', '{}', "
                  "'{\"x\": 1}', NULL, 1)")
    store = TicketStore(path)
    row = store.get("old")
    assert row["status"] == "done" and row["result"] == {"x": 1} and row.get("annotations") is None
    assert ticket_fields(row) == {}
    assert store.resolve("old", 5.0)["annotations"]["resolved"]["at"] == 5.0
    assert store.resolve("missing", 5.0) is None


# ---- severity -----------------------------------------------------------------------------------------
def test_critical_alerts_are_not_shed_for_the_backlog(tmp_path):
    receiver, gate, store = _receiver(tmp_path, max_async_backlog=1)
    first = _body(receiver.receive(_payload([_alert("A", "i1", "c1")])))
    assert first["counts"] == {"queued": 1}
    storm = [_alert("A", "i2", "c2"), _alert("A", "i3", "c3", severity="critical"), _alert("A", "i4", "c4")]
    response = receiver.receive(_payload(storm))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1  # Alertmanager retries 5xx
    body = _body(response)
    assert [a["outcome"] for a in body["alerts"]] == ["refused", "queued", "refused"]
    assert "refused" in body["detail"] and store.counts() == {"queued": 2}
    # the retry finds the accepted one and is refused again only for what is still refused
    retry = _body(receiver.receive(_payload(storm)))
    assert [a["outcome"] for a in retry["alerts"]] == ["refused", "duplicate", "refused"]


def test_flood_gate_lets_critical_tickets_past_the_backlog_bound(tmp_path):
    from deployments.admission import Overloaded

    _, gate, store = _receiver(tmp_path, max_async_backlog=1)
    gate.submit_async(Ticket(title="one", id="t1"), 1, None)
    with pytest.raises(Overloaded):
        gate.submit_async(Ticket(title="two", id="t2"), 1, None)
    assert gate.submit_async(Ticket(title="three", id="t3", severity="critical"), 1, None)["status"] == "queued"
    assert store.get("t2") is None and store.get("t3")["status"] == "queued"


# ---- retrieval keys -----------------------------------------------------------------------------------
class HashEmbedder(FusionHashEmbedder):
    dim = 64


RUNBOOKS = {
    "payments/LedgerWriterStalled.md": "# LedgerWriterStalled\n\n## Meaning\nThe ledger writer has not committed "
    "payments for 10 minutes.\n\n## Diagnosis\n- Check the ledger-writer logs for lock waits.\n\n## Mitigation\n"
    "- Restart the ledger writer.\n",
    "kubernetes/kubepodcrashlooping.md": "# Pod keeps restarting\n\n## Meaning\nA container exits and the "
    "kubelet restarts it with back-off.\n\n## Diagnosis\n- Read the logs of the previous container.\n\n"
    "## Mitigation\n- Roll back the release.\n",
    "storage/disk-full.md": "# Disk full\n\n## Meaning\nA filesystem is full; writes fail with no space left on "
    "device.\n\n## Diagnosis\n- Check df -h and find the largest directories.\n\n## Mitigation\n"
    "- Delete old logs or grow the volume. Restart the writer when space is back.\n",
}


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from experts.knowledge.build import build_knowledge_base
    from experts.knowledge.retrieve import KnowledgeBase

    root = tmp_path_factory.mktemp("runbooks")
    for rel, text in RUNBOOKS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    out = tmp_path_factory.mktemp("kb") / "kb"
    emb = HashEmbedder()
    build_knowledge_base([root], out, embedder=emb, progress=False)
    return KnowledgeBase.open(out, embedder=emb)


def test_an_exact_alert_name_or_runbook_file_name_ranks_that_runbook_first(kb):
    query = "disk full: no space left on device, restart the writer"
    assert kb.retrieve(query, k_nodes=3).nodes[0].incident == "Disk full"
    by_name = kb.retrieve(query, k_nodes=3, keys=("LedgerWriterStalled",)).nodes
    assert by_name[0].incident == "LedgerWriterStalled"
    assert by_name[0].score > by_name[1].score
    by_file = kb.retrieve(query, k_nodes=3, keys=("kubepodcrashlooping",)).nodes  # title differs, file name matches
    assert by_file[0].incident == "Pod keeps restarting"
    # exact only: a prefix is no key, and unknown keys change nothing
    assert kb.retrieve(query, k_nodes=3, keys=("Ledger", "NoSuchAlert")).nodes[0].incident == "Disk full"
    # a scope without the keyed runbook gives way to the whole base
    scoped = kb.retrieve(query, scope=["storage"], k_nodes=2, keys=("LedgerWriterStalled",))
    assert scoped.nodes[0].incident == "LedgerWriterStalled" and scoped.scope == "whole base"


def test_the_planner_passes_keys_to_retrieval_only_when_given(fake_engine_cls):
    from core.config import PlannerConfig
    from experts.planner import Planner

    class Recorder:
        def __init__(self):
            self.calls = []

        def retrieve(self, query, scope=None, k_chunks=3, k_nodes=2, min_relevance=0.0, exclude_sources=(),
                     **hints):
            self.calls.append(hints)
            return None

    cfg = load_config()
    rec = Recorder()
    planner = Planner(cfg.experts[0], fake_engine_cls(), PlannerConfig(), rec)
    planner.context_for("ticket")
    planner.context_for("ticket", keys=("KubePodCrashLooping",))
    assert rec.calls == [{}, {"keys": ("KubePodCrashLooping",)}]
    assert PlanRequest(ticket="t", n=1, keys=["A"]).keys == ["A"]
