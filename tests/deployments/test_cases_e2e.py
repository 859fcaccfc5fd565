"""Case memory end to end: a ticket, its correction, and a paraphrase of it that gets the corrected workflow
and cites the case (the session service); consolidation approved over the admin API, and a case and its
consolidated node that survive a restart of the whole service (the slim service, the cheaper one to restart).
Ticket texts are far from every other e2e test's (no disk, DNS, ledger or certificate words), so the cases
they leave in the sessions' memory are never retrieved by those tests."""

import httpx
import pytest

from core.stepscore import step_score
from deployments.ticket_store import TicketStore
from experts.knowledge.consolidate import new_node_id
from experts.knowledge.store import KnowledgeStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TICKET = {"id": "e2e-case-tape-1", "title": "Tape library robot arm jammed in backup vault B",
          "description": "The nightly archive to LTO-8 tapes stalls at 3%; the library console shows a gripper "
                         "fault on the robot arm."}
PARAPHRASE = {"title": "Backup vault B: robotic arm of the tape library stuck, gripper fault",
              "description": "Archive copy to the LTO-8 cartridges frozen at 3 percent since last night."}
CORRECTION = ["Check the robot arm status on the tape library console",
              "Is a cartridge stuck in the gripper? yes 3, no 4",
              "[change] Eject the stuck cartridge with the manual release lever",
              "Restart the archive job from its last checkpoint",
              "[end] Resolved: the archive job writes to tape again"]


def test_a_correction_becomes_a_case_that_a_paraphrase_follows_and_cites(service):
    ticket_key = {"Authorization": f"Bearer {service.keys['ticket']}"}
    r = service.post("/v1/tickets", params={"candidates": 1}, json=TICKET)
    assert r.status_code == 200, r.text
    tid = TICKET["id"]
    fb_url = f"{service.url}/v1/tickets/{tid}/feedback"

    # Bad feedback: a clear 4xx with the reason, and nothing stored.
    store = TicketStore(f"{service.cfg.serve.state_dir}/tickets.sqlite")
    bad = [("/v1/tickets/no-such-ticket/feedback", {"verdict": "edit", "steps": ["Check it"]}, 404, "no ticket"),
           (f"/v1/tickets/{tid}/feedback", {"verdict": "edit"}, 422, "needs the corrected workflow"),
           (f"/v1/tickets/{tid}/feedback", {"verdict": "edit", "mermaid": "flowchart TD\n A[oops --> "}, 422,
            "malformed Mermaid"),
           (f"/v1/tickets/{tid}/feedback", {"verdict": "edit", "mermaid": "flowchart TD\n A[a] --> B[b]\n B --> A"},
            422, "no terminal")]
    for path, body, status, reason in bad:
        resp = httpx.post(service.url + path, json=body, headers=ticket_key, timeout=30)
        assert resp.status_code == status and reason in resp.text, (body, resp.text)
    assert store.feedback(ticket_id=tid) == []

    fb = httpx.post(fb_url, headers=ticket_key, timeout=30, json={
        "verdict": "edit", "steps": CORRECTION, "comment": "the arm jams, the tape is fine",
        "outcome": {"status": "resolved", "step": 3}})
    assert fb.status_code == 201, fb.text
    assert fb.json()["case"] == f"case:{tid}" and fb.json()["outcome"] == {"status": "resolved", "step": "S3"}
    [row] = store.feedback(ticket_id=tid)
    assert row["verdict"] == "edit" and row["principal"] == "e2e-ticket"
    assert [s["text"] for s in row["workflow"]["steps"]][0] == CORRECTION[0]

    # The paraphrase (no shared title, other words) is answered from the case, and says so.
    r = service.post("/v1/tickets", params={"candidates": 1}, json=PARAPHRASE)
    assert r.status_code == 200, r.text
    result = r.json()
    cited = {c["ticket_id"]: c for c in result["similar_cases"]}
    assert tid in cited and cited[tid]["verdict"] == "edit" and cited[tid]["reference"], result["similar_cases"]
    assert result["knowledge"]["reference"] == f"case:{tid}" and f"case:{tid}" in result["context_ids"]
    assert "cases" in result["timings_ms"]
    steps = [s["text"] for s in result["workflow"]["steps"] if s["kind"] != "terminal"]
    reference = [s["text"] for s in row["workflow"]["steps"] if s["kind"] != "terminal"]
    assert step_score(steps, reference).f1 >= 80, result["workflow"]["mermaid"]


def test_consolidate_over_the_admin_api_serves_a_new_version_and_rolls_back(service):
    """The corrected case (above) proposed as a new incident node, approved by an admin, served by the running
    Planners without a restart, then rolled back (later tests see the base the session started with)."""
    ticket_key = {"Authorization": f"Bearer {service.keys['ticket']}"}
    tid = TICKET["id"]
    if not TicketStore(f"{service.cfg.serve.state_dir}/tickets.sqlite").feedback(ticket_id=tid):
        r = service.post("/v1/tickets", params={"candidates": 1}, json=TICKET)
        assert r.status_code == 200, r.text
        fb = service.post(f"/v1/tickets/{tid}/feedback", json={"verdict": "edit", "steps": CORRECTION})
        assert fb.status_code == 201, fb.text
    assert service.post("/v1/admin/kb/consolidate", headers=ticket_key).status_code == 403
    before = service.get("/v1/admin/kb").json()
    r = service.post("/v1/admin/kb/consolidate")
    assert r.status_code == 200, r.text
    p = r.json()
    mine = [c for c in p["changes"] if tid in c["cases"]]
    assert p["status"] == "pending" and mine and mine[0]["kind"] == "add", p["diff"]
    assert service.get("/v1/admin/kb").json()["current"] == before["current"]  # nothing without approval
    done = service.post(f"/v1/admin/kb/proposals/{p['id']}/approve").json()
    assert done["status"] == "approved" and done["decided_by"] == "e2e-admin"
    try:
        assert service.get("/v1/admin/kb").json()["current"] == done["version"] != before["current"]
        r = service.post("/v1/tickets", params={"candidates": 1},
                         json={**PARAPHRASE, "description": PARAPHRASE["description"] + " Vault B again."})
        assert r.status_code == 200, r.text
        assert r.json()["knowledge_version"] == done["version"]  # picked up by the running Planner
    finally:
        back = service.post("/v1/admin/kb/rollback")
        assert back.status_code == 200 and back.json()["current"] == before["current"], back.text


BADGE = {"id": "e2e-case-badge-1", "title": "Badge readers at loading dock door 4 reject every employee badge",
         "description": "Since the door controller firmware push this morning the dock 4 readers blink red for all "
                        "badges; the other doors open fine."}
BADGE_PARAPHRASE = {"title": "Dock door 4 card readers refuse all staff cards, red light",
                    "description": "Every access card fails at the loading dock 4 entrance after today's controller "
                                   "update; other entrances work."}
BADGE_CORRECTION = ["Check the dock 4 door controller's firmware version in the access console",
                    "Was the firmware updated today? yes 3, no 4",
                    "[change] Roll the dock 4 controller back to the previous firmware",
                    "Resync the badge list from the access server to the controller",
                    "[end] Resolved: dock 4 readers accept badges again"]


def test_a_case_and_its_approved_node_survive_a_full_restart(slim_service):
    """ticket -> edit -> consolidate -> approve -> `flowrouter shutdown` + `flowrouter serve` -> the paraphrase is
    still answered from the case, on the approved version, which holds the consolidated node."""
    svc = slim_service
    r = svc.post("/v1/tickets", params={"candidates": 1}, json=BADGE)
    assert r.status_code == 200, r.text
    tid = BADGE["id"]
    fb = svc.post(f"/v1/tickets/{tid}/feedback", json={"verdict": "edit", "steps": BADGE_CORRECTION})
    assert fb.status_code == 201, fb.text
    corrected = [s["text"] for s in fb.json()["workflow"]["steps"] if s["kind"] != "terminal"]
    before = svc.get("/v1/admin/kb").json()
    p = svc.post("/v1/admin/kb/consolidate").json()
    assert any(tid in c["cases"] and c["kind"] == "add" for c in p["changes"]), p["diff"]
    done = svc.post(f"/v1/admin/kb/proposals/{p['id']}/approve").json()
    assert done["status"] == "approved", done
    try:
        svc.restart()
        assert svc.get("/v1/admin/kb").json()["current"] == done["version"]  # the restart did not rebuild it away
        r = svc.post("/v1/tickets", params={"candidates": 1, "cache": "false"}, json=BADGE_PARAPHRASE)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["knowledge_version"] == done["version"]
        cited = {c["ticket_id"]: c for c in result["similar_cases"]}
        assert tid in cited and cited[tid]["verdict"] == "edit", result["similar_cases"]
        assert result["knowledge"]["reference"] == f"case:{tid}", result["knowledge"]
        # A corrected case is shown alone (it replaces what it corrected), so the node is checked in the base.
        served = KnowledgeStore(svc.cfg.knowledge.directory).read(done["version"])
        assert new_node_id(tid) in {n.id for n in served.nodes}
        steps = [s["text"] for s in result["workflow"]["steps"] if s["kind"] != "terminal"]
        assert step_score(steps, corrected).f1 >= 80, result["workflow"]["mermaid"]
    finally:
        back = svc.post("/v1/admin/kb/rollback")
        assert back.status_code == 200 and back.json()["current"] == before["current"], back.text


FREEZER = {"id": "e2e-case-freezer-1", "title": "Lab cold-storage freezer 7 warms to +4 C, compressor short-cycling",
           "description": "The sample freezer in room 7 alarms every hour; its compressor starts and stops within a "
                          "minute."}
FREEZER_CORRECTION = ["Read freezer 7's temperature log on the building controller",
                      "Is the condenser coil iced over? yes 3, no 4",
                      "[change] Run a manual defrost cycle on freezer 7",
                      "Move the samples to the spare freezer and call the refrigeration vendor",
                      "[end] Resolved: freezer 7 holds -80 C again"]


def test_a_rejected_then_corrected_ticket_is_in_the_training_data(service, tmp_path, capsys):
    """ticket -> reject -> edit over HTTP; `flowrouter train --dry-run` on the service's config then trains the
    expert that answered it on the correction over the rejected candidate (SFT target, DPO pair, RL query)."""
    import json

    import yaml

    from cluster.cli import main
    from tests.training.conftest import tiny_training

    r = service.post("/v1/tickets", params={"candidates": 1}, json=FREEZER)
    assert r.status_code == 200, r.text
    served = r.json()
    tid = FREEZER["id"]
    assert service.post(f"/v1/tickets/{tid}/feedback", json={"verdict": "reject"}).status_code == 201
    fb = service.post(f"/v1/tickets/{tid}/feedback", json={"verdict": "edit", "steps": FREEZER_CORRECTION})
    assert fb.status_code == 201, fb.text

    training = tmp_path / "training.yaml"
    training.write_text(yaml.safe_dump(tiny_training()))
    argv = ["train", "--expert", served["expert"], "--config", str(service.config_path), "--training", str(training),
            "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "operator feedback from" in out.err
    [plan] = json.loads(out.out)
    mine = [c for c in plan["corrections"] if c["ticket_id"] == tid]
    assert len(mine) == 1 and mine[0]["kind"] == "edit" and mine[0]["rl_query"], plan["corrections"]
    assert "manual defrost cycle" in mine[0]["chosen"]
    rejected_steps = [s["text"] for s in served["workflow"]["steps"] if s["kind"] != "terminal"]
    assert rejected_steps and all(t in mine[0]["rejected"] for t in rejected_steps), (mine[0], rejected_steps)
    assert plan["feedback_verdicts"].get("edit", 0) >= 1
