"""`flowrouter ticket` shows what a workflow was grounded in (runbook nodes, chunks, past cases and the
reference it followed), against a stand-in of the ticket API (a real HTTP server on loopback)."""

import pytest

from cluster.cli import main
from cluster.commands.service import provenance_lines
from core.workflow import parse_lines, to_mermaid

WORKFLOW = parse_lines("1. Check the arm status on the library console\n"
                       "2. Is a cartridge stuck in the gripper? yes 3, no 4\n"
                       "3. [change] Eject the cartridge with the release lever\n"
                       "4. [end] Resolved: the archive job runs again",
                       sources={1: "case:vault-7", 2: "case:vault-7", 3: "n-robot-arm"})
STEPS = [s.model_dump(mode="json") for s in WORKFLOW.steps]
RESULT = {
    "ticket_id": "t-42", "task": "backup", "confidence": 0.81, "decision_path": "llm+retrieval",
    "expert": "smollm2-generalist", "map_version": "starter-1", "best_index": 0,
    "workflow": {"mermaid": to_mermaid(WORKFLOW), "steps": STEPS, "edges": [e.model_dump() for e in WORKFLOW.edges()]},
    "candidates": [{"index": 0, "scores": {"relevance": 4, "coverage": 4, "accuracy": 4, "coherence": 4,
                                           "conciseness": 4, "overall": 4.0}}],
    "knowledge": {"status": "matched", "scope": "unscoped", "version": "kb-3", "cases_version": "12",
                  "reference": "case:vault-7",
                  "items": [{"id": "n-robot-arm", "kind": "node", "title": "Robot arm fault", "source": "backup.md",
                             "score": 0.62},
                            {"id": "backup.md#2", "kind": "chunk", "title": "backup.md / Gripper", "source": "backup.md",
                             "score": 0.41},
                            {"id": "case:vault-7", "kind": "case", "title": "Vault B robot arm jammed", "source": None,
                             "score": 0.93}]},
    "similar_cases": [{"ticket_id": "vault-7", "similarity": 0.93, "verdict": "edit", "title": "Vault B robot arm jammed",
                       "reference": True},
                      {"ticket_id": "vault-2\x1b[31m", "similarity": 0.44, "verdict": "accept", "title": "Arm slow",
                       "shown": True}],
    "context_ids": ["n-robot-arm", "backup.md#2", "case:vault-7"], "timings_ms": {"total": 1500.0, "cases": 3.0},
}


@pytest.fixture
def svc(stand_in):
    return stand_in(lambda method, path, headers, body: (200, RESULT))


def test_ticket_prints_the_grounding_similar_cases_and_step_sources(svc, capsys):
    assert main(["ticket", "vault B arm stuck\nthe archive stalls", "--url", svc, "--ascii", "--no-mermaid"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("knowledge "))
    assert lines[at + 1] == "reference case Vault B robot arm jammed (case:vault-7)"
    assert lines[at + 2].split() == ["node", "0.62", "Robot", "arm", "fault", "(n-robot-arm)", "[backup.md]"]
    assert "chunk 0.41  backup.md / Gripper (backup.md#2) [backup.md]" in out
    assert "case  0.93  Vault B robot arm jammed (case:vault-7)  <- reference" in out
    assert "knowledge base kb-3, case memory revision 12" in out
    assert "similar cases" in lines
    assert "0.93  edited   reference vault-7  Vault B robot arm jammed" in out
    assert "0.44  accepted shown     vault-2 [31m  Arm slow" in out
    assert "\x1b" not in out, "ticket and model text reach the terminal without control characters"
    assert "steps from 1-2 case:vault-7; 3 n-robot-arm" in out
    assert out.index("steps from") < out.index("Check the arm status"), "provenance comes before the boxes"


def test_no_knowledge_means_no_provenance_block():
    bare = {k: v for k, v in RESULT.items() if k not in ("knowledge", "similar_cases")}
    bare["workflow"] = dict(RESULT["workflow"], steps=[dict(s, source=None) for s in STEPS])
    assert provenance_lines(bare) == []
    # A workflow the expert wrote with no reference (none matched) lists what was considered, nothing more.
    none = dict(bare, knowledge={"status": "none matched", "items": [], "reference": None})
    assert provenance_lines(none) == []
